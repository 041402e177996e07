"""SensorThings entities as feature collections, read straight from the store on every request:
Things at their Location, Locations, FeaturesOfInterest, and the latest value of every Datastream.

Queries go through the SensorThings reader: CQL2 becomes a `$filter` tree (features.cql_sta), so
both stores and every spatial predicate behave exactly as on /v1.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from features import crs as crsmod
from features.cql import FilterError
from features.cql_sta import Converter, both, geometry_literal
from features.request import ItemsQuery, ParamError
from features.source import FeatureSource, Page, encode_feature
from sensorthings.model import BY_NAME, EntityType
from sensorthings.query.tree import (
    BinaryOp,
    Call,
    Expand,
    Expr,
    Literal,
    OrderBy,
    Path,
    QueryError,
    QueryOptions,
    UnaryOp,
)
from sensorthings.read import Estimate, Reader
from sensorthings.store.base import Store

PUBLIC_BASE = "http://udp-public-base.invalid"  # replaced by the request's base URL in every answer
_LATEST = QueryOptions(orderby=(OrderBy(Path(("phenomenonTime",)), True),), top=1)


@dataclass(frozen=True)
class View:
    """How one entity set is shown as features."""

    id: str
    title: str
    description: str
    entity: str
    geometry: tuple[str, ...]  # the path to the geometry
    fields: dict[str, tuple[tuple[str, ...], str]]  # property → (path, JSON Schema type)
    expand: tuple[Expand, ...]
    time: str | None = None


def _exp(name: str, options: QueryOptions | None = None) -> Expand:
    return Expand(name, options or QueryOptions())


VIEWS = (
    View("things", "Things", "SensorThings Things at their current Location", "Thing", ("Locations", "location"),
         {"name": (("name",), "string"), "description": (("description",), "string")},
         (_exp("Locations", QueryOptions(top=1)),)),
    View("locations", "Locations", "SensorThings Locations", "Location", ("location",),
         {"name": (("name",), "string"), "description": (("description",), "string")}, ()),
    View("features_of_interest", "Features of interest", "SensorThings FeaturesOfInterest", "FeatureOfInterest",
         ("feature",), {"name": (("name",), "string"), "description": (("description",), "string")}, ()),
    View("latest_values", "Latest value per Datastream",
         "Each Datastream at its Thing's Location with its latest Observation", "Datastream",
         ("Thing", "Locations", "location"),
         {"name": (("name",), "string"), "thing": (("Thing", "name"), "string"),
          "observedProperty": (("ObservedProperty", "name"), "string"),
          "unit": (("unitOfMeasurement", "symbol"), "string"),
          "phenomenonTime": (("phenomenonTime",), "string")},
         (_exp("Thing", QueryOptions(select=("name",), expand=(_exp("Locations", QueryOptions(top=1)),))),
          _exp("ObservedProperty", QueryOptions(select=("name",))), _exp("Observations", _LATEST)),
         time="phenomenonTime"),
)


def _geometry(doc: Any) -> dict[str, Any] | None:
    """The geometry of a SensorThings location/feature value (a geometry or a GeoJSON Feature)."""
    if isinstance(doc, dict):
        if doc.get("type") == "Feature":
            return doc.get("geometry")
        if "coordinates" in doc or doc.get("type") == "GeometryCollection":
            return doc
    return None


class SensorThingsSource(FeatureSource):
    """One SensorThings entity set as a collection."""

    cache_control = "no-cache"  # a new Observation shows at once; clients revalidate with the ETag
    placeholder = PUBLIC_BASE.encode()

    def __init__(self, view: View, store: Store, sta_base: str) -> None:
        self.view = view
        self.id = view.id
        self.title = view.title
        self.description = view.description
        self.keywords = ("sensorthings",)
        self.store = store
        self.entity: EntityType = BY_NAME[view.entity]
        self.inner = Reader(store, sta_base)
        self.outer = Reader(store, sta_base, hide_internal=True)

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """Queryable properties."""
        out = {name: {"type": kind} for name, (_, kind) in self.view.fields.items()}
        if self.view.time:
            out[self.view.time]["format"] = "date-time"
        return out

    @property
    def storage_crs(self) -> int | None:
        """SensorThings locations are GeoJSON: CRS84."""
        return None

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The extent is not known in advance: the whole world."""
        return None

    @property
    def time_column(self) -> str | None:
        """The property `datetime=` filters on."""
        return self.view.time

    def etag(self) -> str:
        """Unknown before the query: the route derives it from the body."""
        return ""

    def _filter(self, q: ItemsQuery) -> Expr | None:
        paths = {name: path for name, (path, _) in self.view.fields.items()}
        expr: Expr | None = None
        try:
            if q.filter is not None:
                expr = Converter(paths, self.view.geometry, q.filter_crs).convert(q.filter)
        except FilterError as exc:
            raise ParamError(f"filter: {exc}") from None
        if q.bbox is not None:
            box = geometry_literal(shapely.box(*q.bbox), None)
            expr = both(expr, Call("st_intersects", (Path(self.view.geometry), box)))
        if q.time is not None and self.view.time:
            lo, hi = q.time
            path = Path(paths[self.view.time])
            if lo is not None:  # "not before": an interval qualifies when it ends at or after lo
                expr = both(expr, UnaryOp("not", BinaryOp("lt", path, Literal(lo.to_pydatetime(), "datetime"))))
            if hi is not None:
                expr = both(expr, BinaryOp("le", path, Literal(hi.to_pydatetime(), "datetime")))
        for name, text in q.equals:
            value: Literal = Literal(text, "string")
            expr = both(expr, BinaryOp("eq", Path(paths[name]), value))
        return expr

    def _options(self, q: ItemsQuery, expr: Expr | None) -> QueryOptions:
        paths = {name: path for name, (path, _) in self.view.fields.items()}
        order = tuple(OrderBy(Path(paths[s.property]), s.descending) for s in q.sortby)
        return QueryOptions(filter=expr, orderby=(*order, OrderBy(Path(("id",)))), top=q.limit, skip=q.offset,
                            count=True, expand=self.view.expand)

    def search(self, q: ItemsQuery) -> Page:
        """Filter, sort and page the entity set."""
        options = self._options(q, self._filter(q))
        if q.hits:
            options = QueryOptions(filter=options.filter, top=0, count=True)
        try:
            with self.store.read() as conn:
                reader = self.inner if q.sees_internal else self.outer
                rows, _, count = reader.page(conn, self.entity, lambda t: None, options)
                docs = reader.serialize_rows(conn, self.entity, rows, options) if rows else []
        except QueryError as exc:
            raise ParamError(f"filter: {exc}") from None
        return Page(count or 0, self._encode(docs, q), exact=not isinstance(count, Estimate))

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One entity by id."""
        # ids are BIGINT: anything else, or a larger number, names nothing (and the driver would refuse it)
        if not (fid.isascii() and fid.isdigit()) or len(fid) > 19 or int(fid) >= 2**63:
            return None
        options = QueryOptions(expand=self.view.expand)
        with self.store.read() as conn:
            reader = self.inner if q.sees_internal else self.outer
            doc = reader.entity(conn, self.entity, lambda t: t.c.id == int(fid), options)
        return None if doc is None else self._encode([doc], q)[0]

    def _properties(self, doc: dict[str, Any]) -> dict[str, Any]:
        props = {k: v for k, v in doc.items() if not k.startswith("@iot.") and "@iot.navigationLink" not in k
                 and k not in ("location", "feature", "Locations", "Thing", "ObservedProperty", "Observations")}
        props["selfLink"] = doc.get("@iot.selfLink")
        if self.view.id == "latest_values":
            thing = doc.get("Thing") or {}
            props["thing"] = thing.get("name")
            props["observedProperty"] = (doc.get("ObservedProperty") or {}).get("name")
            props["unit"] = (doc.get("unitOfMeasurement") or {}).get("symbol")
            latest = (doc.get("Observations") or [None])[0]
            props["result"] = latest.get("result") if latest else None
            props["latestTime"] = latest.get("phenomenonTime") if latest else None
        return props

    def _geometry_of(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        if self.view.id == "things":
            locs = doc.get("Locations") or []
            return _geometry(locs[0].get("location")) if locs else None
        if self.view.id == "latest_values":
            locs = (doc.get("Thing") or {}).get("Locations") or []
            return _geometry(locs[0].get("location")) if locs else None
        return _geometry(doc.get(self.view.geometry[0]))

    def _encode(self, docs: list[dict[str, Any]], q: ItemsQuery) -> list[bytes]:
        geoms = [self._geometry_of(d) for d in docs]
        if q.crs is not None and not q.skip_geometry:
            shapes = np.array([shapely.geometry.shape(g) if g else None for g in geoms], dtype=object)
            moved = crsmod.transform(shapes, None, q.crs)
            geoms = [shapely.geometry.mapping(g) if g is not None else None for g in moved]
        out = []
        for doc, geom in zip(docs, geoms, strict=True):
            props = self._properties(doc)
            if q.properties is not None:
                props = {k: props.get(k) for k in q.properties}
            out.append(encode_feature(doc["@iot.id"], None if q.skip_geometry else geom, props))
        return out


def sensorthings_sources(store: Store) -> dict[str, FeatureSource]:
    """The SensorThings collections over a store."""
    return {v.id: SensorThingsSource(v, store, PUBLIC_BASE + "/v1.1") for v in VIEWS}
