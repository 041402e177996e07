"""An indicator as a feature collection: one feature per area with its current value, read from the
indicator's SensorThings Datastreams on every request (the engine in `udp serve` writes them): the public
values for everyone, the full ones (every sensor, internal ones too) where there are any for the read role."""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from features.request import ItemsQuery
from features.source import Page
from provider_plugins.areas import AreaDeclaration, load_areas
from provider_plugins.sensorthings import PUBLIC_BASE
from provider_plugins.table import Table, TableSource, assemble
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store


class Indicator(AreaDeclaration, Protocol):
    """What the source shows of an indicator's declaration (the shell's `indicators:` entry has these)."""

    @property
    def id(self) -> str:
        """The collection id; the indicator's Datastreams carry it as `properties/indicator`."""

    @property
    def title(self) -> str:
        """The collection title."""

    @property
    def description(self) -> str:
        """The collection description ("" for one made of the rest)."""

    @property
    def observed_property(self) -> str:
        """The name of the ObservedProperty aggregated."""

    @property
    def aggregate(self) -> str:
        """mean, sum, count, min, max or latest."""

    @property
    def window_text(self) -> str:
        """The time window as declared (an ISO 8601 duration)."""


class IndicatorSource(TableSource):
    """The areas of an indicator and their values; filters, sorting and CRSs as for any table."""

    cache_control = "no-cache"  # values change as Observations arrive; revalidate with the ETag
    placeholder = PUBLIC_BASE.encode()  # the Datastream links are written under the request's base URL

    def __init__(self, spec: Indicator, store: Store) -> None:
        assert spec.areas is not None
        self.indicator = spec
        self.spec = spec.areas
        self.id = spec.id
        self.title = spec.title
        self.description = spec.description or f"{spec.aggregate} of {spec.observed_property} over " \
                                               f"{spec.window_text}, per area"
        self.keywords = ("indicator", spec.observed_property)
        self.service = Service(store)
        self.areas = load_areas(spec)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tables: dict[bool, tuple[str, Table]] = {}  # sees internal → (version, table)

    def _values(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """Per area: the public value, or with `full` the value of every sensor where the indicator has one."""
        quoted = self.indicator.id.replace("'", "''")
        res = self.service.handle(ApiRequest("GET", "Datastreams", {
            "$filter": f"properties/indicator eq '{quoted}'", "$top": "10000",
            "$expand": "Observations($orderby=phenomenonTime desc;$top=1)"}, None, "http://udp.local/v1.1",
            sees_internal=full))
        out: dict[str, dict[str, Any]] = {}
        streams = (res.body or {}).get("value", [])
        # the public Datastreams first: a full one for the same area replaces its value
        for ds in sorted(streams, key=lambda d: (d.get("properties") or {}).get("scope") == "full"):
            area = ds["properties"]["area"]
            latest = (ds.get("Observations") or [None])[0]
            out[area] = {"datastream": ds["@iot.selfLink"].replace("http://udp.local", PUBLIC_BASE), "unit":
                         (ds.get("unitOfMeasurement") or {}).get("symbol"),
                         "value": latest.get("result") if latest else None,
                         "sensors": ((latest or {}).get("parameters") or {}).get("sensors", 0),
                         "updated": latest.get("phenomenonTime") if latest else None}
        return out

    @property
    def table(self) -> Table:  # type: ignore[override]
        """The areas with their current values: the request's own snapshot while one is answered."""
        pinned = getattr(self._local, "table", None)
        return pinned if pinned is not None else self._current(False)

    def search(self, q: ItemsQuery) -> Page:
        """Filter, sort and page one snapshot of the values (the full ones for the read role)."""
        self._local.table = self._current(q.sees_internal)
        try:
            return super().search(q)
        finally:
            self._local.table = None

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One area by id, from one snapshot (the full values for the read role)."""
        self._local.table = self._current(q.sees_internal)
        try:
            return super().feature(fid, q)
        finally:
            self._local.table = None

    def _current(self, full: bool) -> Table:
        values = self._values(full)
        version = hashlib.sha1(orjson.dumps(values, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        with self._lock:
            known = self._tables.get(full)
            if known is None or known[0] != version:
                known = self._tables[full] = (version, self._build(values, version))
            return known[1]

    def _build(self, values: dict[str, dict[str, Any]], version: str) -> Table:
        spec, areas = self.indicator, self.areas
        assert areas is not None
        rows = []
        for name in areas.names:
            v = values.get(name, {})
            rows.append({"area": name, "value": v.get("value"), "unit": v.get("unit"), "sensors": v.get("sensors", 0),
                         "aggregate": spec.aggregate, "observedProperty": spec.observed_property,
                         "window": spec.window_text, "updated": v.get("updated"),
                         "datastream": v.get("datastream")})
        frame = pd.DataFrame(rows).convert_dtypes(convert_boolean=False)
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
        return assemble(self.spec, frame, np.arange(1, len(rows) + 1), areas.geoms, None, None, version)

    @property
    def storage_crs(self) -> int | None:
        """Areas are held in CRS84."""
        return None

    def etag(self) -> str:
        """Known only once the values are read: from the body."""
        return ""
