"""The platform's catalogue records, computed from its sources: one per collection (departmental data, indicators,
the SensorThings collections), per `sensors:` table, per ObservedProperty, and per service (OGC API, SensorThings
API, MQTT broker). Extents come from the data: a collection's geometries and time column, the Datastreams'
phenomenonTime and their Things' Locations. What a requester without the read role sees leaves out internal data."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import orjson
import pandas as pd
import shapely
from pygeofilter import ast
from sqlalchemy import func, select

from features.metadata import CatalogueMetadata, DatasetMetadata, parse_frequency
from features.record import DATASET, SERVICE, Access, Catalogue, Record
from features.request import ItemsQuery, Sort
from features.source import FeatureSource
from features.spec import CollectionSpec
from provider_plugins.indicators import Indicator
from sensorthings.access import internal_things
from sensorthings.store.base import Store
from sensorthings.store.schema import TABLES

log = logging.getLogger("udp.catalogue")
GEOJSON, JSON, HTML = "application/geo+json", "application/json", "text/html"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
TILESETS = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"
OGCAPI, STA, MQTT = "service-ogcapi", "service-sensorthings", "service-mqtt"
WMS, WFS = "service-wms", "service-wfs"
XML = "text/xml"
CATALOGUE_ID = "catalogue"  # the records collection's id, taken for declared collections
EXTENT_REFRESH_S = 60.0  # a live table's time extent is asked again after this
MAX_TOPICS = 100  # MQTT topic links per record: the Datastreams beyond are reached through the SensorThings links


class SensorTable(Protocol):
    """What the catalogue reads of a `sensors:` entry (the shell's SensorsEntry has these)."""

    @property
    def index(self) -> int:
        """The entry's position: its Things carry `properties.udpKey` "<index>:<row key>"."""

    @property
    def table(self) -> CollectionSpec:
        """The table the Things are made from."""

    @property
    def title(self) -> str:
        """The record title ("" when not declared)."""

    @property
    def keywords(self) -> tuple[str, ...]:
        """Keywords."""

    @property
    def access(self) -> str:
        """public or internal."""

    @property
    def metadata(self) -> DatasetMetadata:
        """Themes, licence, update frequency."""


class IndicatorDeclaration(Indicator, Protocol):
    """What the catalogue reads of an indicator (the shell's IndicatorSpec has these)."""

    @property
    def metadata(self) -> DatasetMetadata:
        """Themes, licence, update frequency."""


@dataclass
class _Stream:
    """A Datastream as the catalogue needs it."""

    id: int
    name: str
    start: datetime | None
    end: datetime | None
    point: Any  # its Thing's Location (shapely), or None
    property_id: int
    property_name: str
    property_description: str
    entry: int | None  # the `sensors:` entry its Thing was made by
    indicator: str | None


@dataclass
class PlatformCatalogue(Catalogue):
    """The records of one platform."""

    store: Store | None
    sources: Mapping[str, FeatureSource]
    specs: Mapping[str, CollectionSpec]
    sensors: Sequence[SensorTable] = ()
    indicators: Mapping[str, IndicatorDeclaration] = field(default_factory=dict)
    metadata: CatalogueMetadata = CatalogueMetadata()
    platform_title: str = "Urban Data Platform"
    mqtt_endpoints: Sequence[str] = ()
    maps: bool = False  # WMS and WFS answer (MapServer is installed)
    id: str = CATALOGUE_ID

    def __post_init__(self) -> None:
        self.title = self.metadata.title or f"{self.platform_title}: catalogue"
        self.description = self.metadata.description or (
            f"The datasets and services of {self.platform_title}: every collection, the sensor data and the indicators")
        self._extents: dict[str, tuple[float, str, tuple[datetime | None, datetime | None]]] = {}
        self._extents_lock = threading.Lock()

    def _time_extent(self, src: FeatureSource) -> tuple[datetime | None, datetime | None]:
        """A collection's time extent, asked again when its data changed (its ETag) or, for a source that cannot
        tell (a live PostGIS table), after EXTENT_REFRESH_S: two ordered queries on a large table are not free."""
        version = src.etag()
        with self._extents_lock:
            known = self._extents.get(src.id)
        if known is not None and (version and known[1] == version or
                                  not version and time.monotonic() - known[0] < EXTENT_REFRESH_S):
            return known[2]
        extent = _time_extent(src)
        with self._extents_lock:
            self._extents[src.id] = (time.monotonic(), version, extent)
        return extent

    # -- the records -------------------------------------------------------------------------------
    def records(self, sees_internal: bool) -> tuple[str, list[Record]]:
        """Every record a requester sees, with a version."""
        streams = self._streams(sees_internal)
        out = [r for cid, src in self.sources.items() if (r := self._collection(cid, src, streams)) is not None
               and (sees_internal or r.access == "public")]
        out += [r for e in self.sensors if (sees_internal or e.access == "public")
                and (r := self._sensors(e, streams)) is not None]
        out += self._observed_properties(streams)
        out += self._services(out)
        version = hashlib.sha1(orjson.dumps([_key(r) for r in out], default=str)).hexdigest()[:16]
        return version, out

    def _meta(self, declared: DatasetMetadata) -> dict[str, Any]:
        cat = self.metadata
        return {"themes": declared.themes or cat.themes, "license": declared.license or cat.license,
                "publisher": cat.publisher, "contacts": (cat.contact,) if cat.contact else (),
                "updated": declared.updated, "geocoding": declared.political_geocoding or cat.political_geocoding}

    def _collection(self, cid: str, src: FeatureSource, streams: list[_Stream]) -> Record | None:
        if src.item_type != "feature":
            return None
        spec = self.specs.get(cid)
        indicator = self.indicators.get(cid)
        declared = spec.metadata if spec is not None else (indicator.metadata if indicator else DatasetMetadata())
        kind = "indicator" if indicator is not None else ("collection" if spec is not None else "sensorthings")
        start, end = self._time_extent(src) if indicator is None and kind != "sensorthings" else (None, None)
        bbox = src.bbox if indicator is None else None
        links = [Access(f"/ogcapi/collections/{cid}/items?f=json", "items", GEOJSON, f"{src.title} as GeoJSON",
                        "GEOJSON", OGCAPI),
                 Access(f"/ogcapi/collections/{cid}", "collection", JSON, "the collection", None, OGCAPI),
                 Access(f"/ogcapi/collections/{cid}/items?f=html", "alternate", HTML, f"{src.title} as HTML",
                        "HTML", OGCAPI),
                 Access(f"/ogcapi/collections/{cid}/tiles", TILESETS, JSON,
                        f"{src.title} as vector tiles (MVT, OGC API Tiles)", "JSON", OGCAPI)]
        if self.maps:
            links += [Access("/wms?SERVICE=WMS&REQUEST=GetCapabilities", "related", XML,
                             f"{src.title} as the WMS layer {cid}", "WMS_SRVC", WMS),
                      Access("/wfs?SERVICE=WFS&REQUEST=GetCapabilities", "related", XML,
                             f"{src.title} as the WFS feature type udp:{cid}", "WFS_SRVC", WFS)]
        if indicator is not None:
            # the areas' extent (the indicator source's own would compute every area's value first)
            areas = self.sources.get(indicator.areas.id) if indicator.areas is not None else None
            bbox = areas.bbox if areas is not None else None
            mine = [s for s in streams if s.indicator == cid]
            start, end = _span(mine)
            quoted = quote(f"properties/indicator eq '{cid}'", safe="")
            links.append(Access(f"/v1.1/Datastreams?$filter={quoted}", "related", JSON,
                                "the indicator's Datastreams (history per area)", "JSON", STA))
            links += _topics(mine, self.mqtt_endpoints)
        elif kind == "sensorthings":
            bbox = _bbox([s.point for s in streams])
            start, end = (_span(streams) if src.time_column else (None, None))
        return Record(cid, DATASET, kind, src.title, src.description or src.title,
                      tuple(dict.fromkeys((*src.keywords, *(("indicator",) if indicator else ())))),
                      bbox=bbox, start=start, end=end, access=src.access, links=tuple(links),
                      **self._meta(declared))

    def _sensors(self, entry: SensorTable, streams: list[_Stream]) -> Record | None:
        mine = [s for s in streams if s.entry == entry.index]
        props = sorted({s.property_name for s in mine})
        name = entry.table.source.rsplit("/", 1)[-1]
        title = entry.title or f"Sensors from {name}"
        things = quote(f"startswith(properties/udpKey, '{entry.index}:')", safe="")
        links = [Access(f"/v1.1/Things?$filter={things}&$expand=Locations,Datastreams", "items", JSON,
                        "the Things with their Locations and Datastreams", "JSON", STA),
                 *_topics(mine, self.mqtt_endpoints)]
        start, end = _span(mine)
        return Record(f"sensors-{entry.index}", DATASET, "sensors", title,
                      f"Sensors made from {name}: {len({s.point for s in mine if s.point is not None})} places, "
                      f"{len(mine)} Datastreams ({', '.join(props) or 'none yet'}), live over MQTT.",
                      tuple(dict.fromkeys((*entry.keywords, "sensors", *props))),
                      bbox=_bbox([s.point for s in mine]), start=start, end=end, access=entry.access,
                      links=tuple(links), **self._meta(_continuous(entry.metadata)))

    def _observed_properties(self, streams: list[_Stream]) -> list[Record]:
        by_property: dict[int, list[_Stream]] = {}
        for s in streams:
            if s.indicator is None:
                by_property.setdefault(s.property_id, []).append(s)
        entries = {e.index: e for e in self.sensors}
        out = []
        for pid, mine in sorted(by_property.items()):
            first = mine[0]
            # what the tables its Datastreams come from declare
            declared = [entries[s.entry].metadata for s in mine if s.entry in entries]
            themes = tuple(dict.fromkeys(t for d in declared for t in d.themes))
            licence = next((d.license for d in declared if d.license), None)
            meta = DatasetMetadata(themes, licence, next((d.updated for d in declared if d.updated), None))
            quoted = quote(f"latest_values/items?observedProperty={first.property_name}", safe="/?=")
            links = [Access(f"/v1.1/ObservedProperties({pid})/Datastreams", "items", JSON,
                            "the Datastreams (each with its Observations)", "JSON", STA),
                     Access(f"/ogcapi/collections/{quoted}&f=json", "related", GEOJSON,
                            "the latest value of each Datastream, as GeoJSON", "GEOJSON", OGCAPI),
                     *_topics(mine, self.mqtt_endpoints)]
            start, end = _span(mine)
            out.append(Record(f"observed-property-{pid}", DATASET, "observed-property", first.property_name,
                              first.property_description or f"Observations of {first.property_name}",
                              ("sensors", "observations", first.property_name),
                              bbox=_bbox([s.point for s in mine]), start=start, end=end, links=tuple(links),
                              **self._meta(_continuous(meta))))
        return out

    def _services(self, datasets: list[Record]) -> list[Record]:
        title = self.platform_title
        by_service = {sid: tuple(r.id for r in datasets if any(a.service == sid for a in r.links))
                      for sid in (OGCAPI, STA, MQTT, WMS, WFS)}
        ogc = Record(OGCAPI, SERVICE, "service", f"{title}: OGC API",
                     "OGC API Features, Records and the city's collections as GeoJSON", ("OGC API", "features"),
                     endpoint="/ogcapi", conforms_to=("http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",),
                     serves=by_service[OGCAPI], links=(
                         Access("/ogcapi/openapi?f=json", "service-desc", OPENAPI, "the OpenAPI document"),
                         Access("/ogcapi", "service", JSON, "landing page")), **self._meta(DatasetMetadata()))
        sta = Record(STA, SERVICE, "service", f"{title}: OGC SensorThings API",
                     "OGC SensorThings API v1.1: Things, Datastreams and Observations, live",
                     ("SensorThings", "sensors", "IoT"), endpoint="/v1.1", serves=by_service[STA],
                     conforms_to=("http://www.opengis.net/spec/iot_sensing/1.1/req/core",),
                     links=(Access("/v1.1/openapi.json", "service-desc", OPENAPI, "the OpenAPI document"),
                            Access("/v1.1", "service", JSON, "service root")), **self._meta(DatasetMetadata()))
        out = [ogc, sta]
        if self.maps:
            for sid, name, what, conforms in (
                    (WMS, "WMS 1.3.0", "maps of every collection (PNG, JPEG), feature info and legends",
                     "http://www.opengis.net/def/serviceType/ogc/wms"),
                    (WFS, "WFS 2.0", "every collection's features (GML 3.2, GeoJSON) with FES 2.0 filters",
                     "http://www.opengis.net/def/serviceType/ogc/wfs")):
                path = "/" + name[:3].lower()
                out.append(Record(sid, SERVICE, "service", f"{title}: {name}", f"OGC {name}: {what}",
                                  (name.split()[0], "maps"), endpoint=path, serves=by_service[sid],
                                  conforms_to=(conforms,), links=(
                                      Access(f"{path}?SERVICE={name[:3]}&REQUEST=GetCapabilities", "service", XML,
                                             "the capabilities"),), **self._meta(DatasetMetadata())))
        if self.mqtt_endpoints:
            out.append(Record(MQTT, SERVICE, "service", f"{title}: MQTT broker",
                              "The SensorThings MQTT extension: every new Observation and update as it happens",
                              ("MQTT", "real-time"), endpoint=self.mqtt_endpoints[0], serves=by_service[MQTT],
                              conforms_to=("http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt",),
                              links=tuple(Access(e, "service", "application/json", "broker endpoint")
                                          for e in self.mqtt_endpoints), **self._meta(DatasetMetadata())))
        return out

    # -- the SensorThings data ---------------------------------------------------------------------
    def _streams(self, sees_internal: bool) -> list[_Stream]:
        """Every Datastream (without the read role: not those of internal Things) with its ObservedProperty, its
        Thing's key and first Location, in one query: the SensorThings reader's $expand costs a query per parent."""
        if self.store is None:
            return []
        ds, op, th, tl, loc = (TABLES[n] for n in ("datastreams", "observed_properties", "things", "thing_locations",
                                                   "locations"))
        first = select(func.min(tl.c.location_id)).where(tl.c.thing_id == th.c.id).correlate(th).scalar_subquery()
        query = (select(ds.c.id, ds.c.name, ds.c.phenomenon_time_start, ds.c.phenomenon_time_end, ds.c.properties,
                        op.c.id, op.c.name, op.c.description, th.c.properties, loc.c.location)
                 .join(op, ds.c.observed_property_id == op.c.id).join(th, ds.c.thing_id == th.c.id)
                 .outerjoin(loc, loc.c.id == first).order_by(ds.c.id))
        if not sees_internal:
            query = query.where(ds.c.thing_id.not_in(internal_things(self.store.dialect)))
        with self.store.read() as conn:
            return [_stream(*row) for row in conn.execute(query)]


def _stream(sid: int, name: str, start: datetime | None, end: datetime | None, props: Any, pid: int, pname: str,
            pdescription: str, thing_props: Any, location: Any) -> _Stream:
    geom = location.get("geometry") if isinstance(location, dict) and location.get("type") == "Feature" else location
    try:
        point = shapely.geometry.shape(geom) if isinstance(geom, dict) else None
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException):
        point = None
    key = str((thing_props or {}).get("udpKey", "")) if isinstance(thing_props, dict) else ""
    entry, _, _ = key.partition(":")
    indicator = props.get("indicator") if isinstance(props, dict) else None
    return _Stream(sid, name, _utc(start), _utc(end), point, pid, pname, pdescription,
                   int(entry) if ":" in key and entry.isdigit() else None, indicator)


def _utc(text: Any) -> datetime | None:
    if text is None or text == "":
        return None
    if isinstance(text, datetime):  # the store's: aware, or naive UTC
        return text.astimezone(UTC) if text.tzinfo else text.replace(tzinfo=UTC)
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    if pd.isna(ts):
        return None
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _span(streams: Iterable[_Stream]) -> tuple[datetime | None, datetime | None]:
    starts = [s.start for s in streams if s.start is not None]
    ends = [s.end for s in streams if s.end is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)


def _bbox(points: Iterable[Any]) -> tuple[float, float, float, float] | None:
    geoms = [p for p in points if p is not None and not shapely.is_empty(p)]
    if not geoms:
        return None
    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geoms))
    return (x0, y0, x1, y1)


def _topics(streams: list[_Stream], endpoints: Sequence[str]) -> list[Access]:
    """The MQTT topics of the Datastreams' new Observations, on the broker clients reach."""
    if not endpoints:
        return []
    broker = endpoints[0].rstrip("/")
    return [Access(f"{broker}/v1.1/Datastreams({s.id})/Observations", "related", "application/json",
                   f"MQTT topic v1.1/Datastreams({s.id})/Observations: {s.name}", None, MQTT)
            for s in streams[:MAX_TOPICS]]


def _continuous(declared: DatasetMetadata) -> DatasetMetadata:
    """Sensor data changes all the time unless declared otherwise."""
    if declared.updated is not None:
        return declared
    return DatasetMetadata(declared.themes, declared.license, parse_frequency("continuous", "updated"),
                           declared.political_geocoding)


def _time_extent(src: FeatureSource) -> tuple[datetime | None, datetime | None]:
    """The first and last value of the source's time column, asked of the source itself (its own index)."""
    column = src.time_column
    if column is None:
        return None, None
    present = ast.Not(ast.IsNull(ast.Attribute(column), False))
    ends: list[datetime | None] = []
    for descending in (False, True):
        try:
            page = src.search(ItemsQuery(limit=1, sortby=(Sort(column, descending),), filter=present,
                                         properties=(column,), skip_geometry=True))
        except Exception as exc:  # a source that cannot answer leaves the extent open, never the catalogue broken
            log.warning("catalogue: no time extent for %s: %s", src.id, exc)
            return None, None
        ends.append(_utc(orjson.loads(page.features[0])["properties"].get(column)) if page.features else None)
    return ends[0], ends[1]


def _key(record: Record) -> tuple[Any, ...]:
    return (record.id, record.title, record.bbox, record.start, record.end, record.access, len(record.links))

