"""District indicators declared in config.yml, computed from live sensors and served like everything else.

An indicator takes the Datastreams whose ObservedProperty has a name, finds each one's area by a
spatial join of its Thing's Location with a polygon collection (districts), and aggregates their
Observations in a time window (mean, sum, count, min, max, latest) per area and for the whole city.
Every value is written as an Observation of a SensorThings Datastream per (indicator, area) — so
clients chart the history with the SensorThings API — and each indicator is an OGC API Features
collection with one feature per area and its current value.

The engine runs in the `udp serve` process: it recomputes when sensor Observations arrived (checked
every `interval` seconds) and writes a value when it changed or a minute has passed.

What the public sees aggregates only what the public may see: sensors of internal Things (`access:
internal`, `properties.udpAccess`) are left out, and an area with fewer than `min_sensors` reporting sensors
has no public value (null), so one sensor's reading is not published as its area's. The full version, with
every sensor and no minimum, is for the read role: when an indicator has internal sensors or a minimum, it
also gets "full" Datastreams (`properties.scope: full`) on a Thing of its own marked internal, which only the
read role sees in the SensorThings API, and its OGC API collection answers the read role with their values.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd
import shapely
from sqlalchemy import and_, func, select

from apicommon.declaration import declared
from features.metadata import DATASET_KEYS, DatasetMetadata, MetadataError, parse_dataset_metadata
from features.spec import CollectionSpec
from provider_plugins.areas import load_areas
from sensorthings.access import INTERNAL, internal_things
from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from sensorthings.store.schema import TABLES
from sensorthings.times import stored_utc
from udp.errors import ConfigError, whole_number

if TYPE_CHECKING:
    from provider_plugins.feedback import FeedbackSpec

log = logging.getLogger("udp.indicators")
AGGREGATES = ("mean", "sum", "count", "min", "max", "latest")
KEYS = {"title", "description", "areas", "area_name", "observedProperty", "aggregate", "window", "unit",
        "min_sensors", *DATASET_KEYS}
CITY = "city"
PUBLIC, FULL = "public", "full"  # what the public may see; every sensor, for the read role
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"


@dataclass(frozen=True)
class IndicatorSpec:
    """One `indicators:` entry."""

    id: str
    title: str
    observed_property: str
    aggregate: str
    window: timedelta
    window_text: str
    areas: CollectionSpec | None = None  # the polygons; None: the whole city only
    area_name: str | None = None  # the areas' column that names them
    description: str = ""
    unit: dict[str, str] | None = field(default=None, hash=False, compare=False)
    min_sensors: int = 1  # fewer reporting public sensors in an area: no public value there
    metadata: DatasetMetadata = field(default=DatasetMetadata(), hash=False, compare=False)  # for the catalogue
    feedback: str | None = None  # computed from citizen feedback instead of sensors: one of FEEDBACK_MEASURES


def parse_indicators(doc: Any, collections: dict[str, CollectionSpec]) -> dict[str, IndicatorSpec]:
    """The `indicators:` mapping as specs; ConfigError names the key path."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("indicators: must be a mapping of indicator id to its declaration")
    out = {}
    for iid, body in doc.items():
        where = f"indicators.{iid}"
        declared(body, where, KEYS, ConfigError, required=("observedProperty", "aggregate", "window"))
        if body["aggregate"] not in AGGREGATES:
            raise ConfigError(f"{where}.aggregate: must be one of {', '.join(AGGREGATES)}, got {body['aggregate']!r}")
        try:
            window = pd.Timedelta(str(body["window"])).to_pytimedelta()
        except ValueError:
            raise ConfigError(f"{where}.window: not an ISO 8601 duration such as PT1H: {body['window']!r}") from None
        if window <= timedelta(0):
            raise ConfigError(f"{where}.window: must be longer than nothing")
        areas = None
        if body.get("areas") is not None:
            if body["areas"] not in collections:
                raise ConfigError(f"{where}.areas: no collection {body['areas']!r} (collections: "
                                f"{', '.join(sorted(collections)) or 'none'})")
            areas = collections[body["areas"]]
        unit = body.get("unit")
        if unit is not None and (not isinstance(unit, dict) or not {"name", "symbol"} <= set(unit)):
            raise ConfigError(f"{where}.unit: needs name and symbol")
        least = whole_number(body.get("min_sensors", 1), f"{where}.min_sensors", 1, 10_000)
        try:
            metadata = parse_dataset_metadata(body, where)
        except MetadataError as exc:
            raise ConfigError(str(exc)) from None
        out[str(iid)] = IndicatorSpec(
            str(iid), str(body.get("title", iid)), str(body["observedProperty"]), body["aggregate"], window,
            str(body["window"]), areas, None if body.get("area_name") is None else str(body["area_name"]),
            str(body.get("description", "")), None if unit is None else {k: str(v) for k, v in unit.items()},
            least, metadata)
    return out


# -- citizen feedback's accountability ----------------------------------------------------------------
FEEDBACK_WINDOW = "P30D"
FEEDBACK_MEASURES = {  # measure → (title, the ObservedProperty's name, aggregate, unit)
    "received": ("Feedback received", "feedback items received", "count", {"name": "count", "symbol": "{item}"}),
    "answered": ("Feedback answered", "feedback items answered", "count", {"name": "count", "symbol": "{item}"}),
    "time-to-answer": ("Median time to answer feedback", "time to answer feedback", "median",
                       {"name": "hour", "symbol": "h"}),
}


def feedback_indicators(spec: FeedbackSpec) -> dict[str, IndicatorSpec]:
    """The indicators citizen feedback brings (per area and for the city, over the last 30 days): items
    received, items answered, and the median time from an item to its answer."""
    window = pd.Timedelta(FEEDBACK_WINDOW).to_pytimedelta()
    return {f"feedback-{measure}": IndicatorSpec(
        f"feedback-{measure}", f"{title} (last 30 days)", prop, aggregate, window, FEEDBACK_WINDOW, spec.areas,
        spec.area_name, f"{title} per area and for the city, over the last 30 days: how the city answers",
        unit, 1, DatasetMetadata(), measure) for measure, (title, prop, aggregate, unit) in FEEDBACK_MEASURES.items()}


# -- the engine ------------------------------------------------------------------------------------
@dataclass
class Stream:
    """The Datastream an indicator writes an area's values to."""

    id: int
    foi: int
    last: float | None = None
    written: float = 0.0


class IndicatorEngine:
    """Keeps every indicator's Datastreams current from the sensors' Observations."""

    def __init__(self, store: Store, specs: dict[str, IndicatorSpec], interval: float = 2.0,
                 heartbeat: float = 60.0) -> None:
        self.store = store
        self.specs = specs
        self.interval = interval
        self.heartbeat = heartbeat
        self.service = Service(store)
        self.areas = {iid: load_areas(spec) for iid, spec in specs.items()}
        self.streams: dict[tuple[str, str, str], Stream] = {}  # (indicator, area, PUBLIC or FULL)
        self.things: dict[str, int] = {}  # PUBLIC or FULL → the Thing their Datastreams belong to
        self.sensor: int | None = None
        self.seen: Any = None  # the last watermark computed from
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.computed = 0
        self._feedback_t: Any = None

    # -- entities ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """The indicators' Things, ObservedProperties, FeaturesOfInterest and public Datastreams, made once
        (the full Datastreams are made when first needed: `_full_streams`)."""
        things = self.service.call("GET", "Things", **{"$filter": "properties/kind eq 'indicators'", "$top": "10"})
        self.things = {_scope(t["properties"]): t["@iot.id"] for t in things["value"]}
        made = self.service.call("GET", "Datastreams", **{"$filter": "properties/indicator ne null", "$top": "10000"})
        existing = {(ds["properties"]["indicator"], ds["properties"]["area"], _scope(ds["properties"])): ds
                    for ds in made["value"]}
        for key, ds in existing.items():
            if key[0] in self.specs:
                self.streams[key] = Stream(ds["@iot.id"], int(ds["properties"]["foi"]))
        for iid in self.specs:
            areas = self.areas[iid]
            shapes = [] if areas is None else list(zip(areas.names, areas.geoms, strict=True))
            city = shapely.unary_union([g for _, g in shapes]).convex_hull if shapes else None
            for area, geom in [*shapes, (CITY, city)]:
                if (iid, area, PUBLIC) in self.streams:
                    continue
                foi = self.service.call("POST", "FeaturesOfInterest", {
                    "name": f"{area}" if area != CITY else "the city", "description": f"indicator area {area}",
                    "encodingType": "application/geo+json",
                    "feature": shapely.geometry.mapping(geom) if geom is not None else {"type": "Point",
                                                                                       "coordinates": [0, 0]},
                    "properties": {"indicator": iid, "area": area}})["@iot.id"]
                self.streams[(iid, area, PUBLIC)] = self._datastream(iid, area, foi, PUBLIC)

    def _full_streams(self, iid: str) -> None:
        """The indicator's full Datastreams (every sensor, for the read role), on the internal Thing."""
        for (stream_iid, area, scope), stream in list(self.streams.items()):
            if stream_iid == iid and scope == PUBLIC and (iid, area, FULL) not in self.streams:
                self.streams[(iid, area, FULL)] = self._datastream(iid, area, stream.foi, FULL)

    def _datastream(self, iid: str, area: str, foi: int, scope: str) -> Stream:
        spec = self.specs[iid]
        unit = spec.unit or self._unit_of(spec)
        made = self.service.call("POST", "Datastreams", {
            "name": f"{spec.title}{' (all sensors)' if scope == FULL else ''} — {area}",
            "description": spec.description or spec.title,
            "observationType": OM, "unitOfMeasurement": {"definition": "", **unit},
            "properties": {"indicator": iid, "area": area, "scope": scope, "aggregate": spec.aggregate,
                           "observedProperty": spec.observed_property, "window": spec.window_text, "foi": foi,
                           "min_sensors": spec.min_sensors if scope == PUBLIC else 1},
            "Thing": {"@iot.id": self._thing(scope)}, "Sensor": {"@iot.id": self._sensor()},
            "ObservedProperty": {"name": f"{spec.aggregate} {spec.observed_property} over {spec.window_text}",
                                 "definition": f"urn:udp:indicator:{iid}", "description": spec.title}})
        return Stream(made["@iot.id"], foi)

    def _thing(self, scope: str) -> int:
        if scope not in self.things:
            full = scope == FULL
            self.things[scope] = self.service.call("POST", "Things", {
                "name": "District indicators" + (" (all sensors)" if full else ""),
                "description": "Indicators computed by the platform from live sensors"
                               + (", internal ones included" if full else ""),
                "properties": {"kind": "indicators", **({"scope": FULL, "udpAccess": INTERNAL} if full else {})}
            })["@iot.id"]
        return self.things[scope]

    def _sensor(self) -> int:
        if self.sensor is not None:
            return self.sensor
        found = self.service.call("GET", "Sensors", **{"$filter": "name eq 'udp indicator engine'", "$top": "1"})
        if found["value"]:
            self.sensor = found["value"][0]["@iot.id"]
        else:
            self.sensor = self.service.call("POST", "Sensors", {
                "name": "udp indicator engine", "description": "aggregates of live sensor Observations per area",
                "encodingType": "text/plain", "metadata": "udp/indicators.py"})["@iot.id"]
        return self.sensor

    def _unit_of(self, spec: IndicatorSpec) -> dict[str, str]:
        if spec.aggregate == "count":
            return {"name": "count", "symbol": "{count}"}
        found = self.service.call("GET", "Datastreams", **{
            "$filter": f"ObservedProperty/name eq '{spec.observed_property.replace(chr(39), chr(39) * 2)}'",
            "$select": "unitOfMeasurement", "$top": "1"})["value"]
        unit = found[0]["unitOfMeasurement"] if found else {}
        return {"name": str(unit.get("name") or ""), "symbol": str(unit.get("symbol") or "")}

    # -- computing ---------------------------------------------------------------------------------
    def _sensors(self, conn: Any, spec: IndicatorSpec) -> dict[int, tuple[str | None, bool]]:
        """The indicator's sensor Datastreams: the area each lies in, and whether it is internal."""
        ds, op, tl, loc = (TABLES[n] for n in ("datastreams", "observed_properties", "thing_locations", "locations"))
        internal = ds.c.thing_id.in_(internal_things(self.store.dialect))
        rows = conn.execute(
            select(ds.c.id, loc.c.location, internal).select_from(ds)
            .join(op, op.c.id == ds.c.observed_property_id)
            .outerjoin(tl, tl.c.thing_id == ds.c.thing_id).outerjoin(loc, loc.c.id == tl.c.location_id)
            .where(op.c.name == spec.observed_property)).all()
        areas = self.areas[spec.id]
        out: dict[int, tuple[str | None, bool]] = {}
        for ds_id, location, hidden in rows:
            geom = _point(location)
            out[ds_id] = (None if areas is None or geom is None else areas.of(geom), bool(hidden))
        return out

    def compute(self, spec: IndicatorSpec, now: datetime | None = None) -> dict[str, dict[str, tuple[float | None,
                                                                                                     int]]]:
        """(value, sensors with Observations in the window) per area and for the city: PUBLIC of the
        public sensors (null below `min_sensors`), FULL of every sensor."""
        now = now or datetime.now(UTC)
        if spec.feedback is not None:
            return self._feedback(spec, now)
        obs = TABLES["observations"]
        with self.store.read() as conn:
            sensors = self._sensors(conn, spec)
            if not sensors:
                return {}
            since = now - spec.window
            ids = list(sensors)
            num = obs.c.result_number
            cond = and_(obs.c.datastream_id.in_(ids), obs.c.phenomenon_time_start >= since,
                        obs.c.phenomenon_time_start <= now, num.is_not(None))
            rows = conn.execute(select(obs.c.datastream_id, func.count(num), func.sum(num), func.min(num),
                                       func.max(num), func.max(obs.c.phenomenon_time_start))
                                .where(cond).group_by(obs.c.datastream_id)).all()
            latest: dict[int, float] = {}
            if spec.aggregate == "latest" and rows:
                newest = {r[0]: r[5] for r in rows}
                for ds_id, at in newest.items():
                    value = conn.execute(select(num).where(obs.c.datastream_id == ds_id,
                                                           obs.c.phenomenon_time_start == at, num.is_not(None))
                                         .order_by(obs.c.id.desc()).limit(1)).scalar()
                    if value is not None:
                        latest[ds_id] = float(value)
        groups: dict[str, dict[str, list[tuple]]] = {PUBLIC: {}, FULL: {}}
        for row in rows:
            area, internal = sensors[row[0]]
            for scope in (FULL,) if internal else (PUBLIC, FULL):
                groups[scope].setdefault(CITY, []).append(row)
                if area is not None:
                    groups[scope].setdefault(area, []).append(row)
        out = {scope: {area: (_aggregate(spec.aggregate, members, latest), len(members))
                       for area, members in found.items()} for scope, found in groups.items()}
        for area, (_, count) in out[PUBLIC].items():
            if count < spec.min_sensors:
                out[PUBLIC][area] = (None, count)  # too few sensors: the value would tell what one of them read
        return out

    def _feedback(self, spec: IndicatorSpec, now: datetime) -> dict[str, dict[str, tuple[float | None, int]]]:
        """A feedback indicator per area and for the city: every area has a count (0 without items); the
        median time only where an item was answered. The same for everyone (no item is internal)."""
        t = self._feedback_table()
        since = now - spec.window
        with self.store.read() as conn:
            if spec.feedback == "received":
                rows = conn.execute(select(t.c.area, t.c.created, t.c.answered).where(t.c.created >= since)).all()
            else:
                rows = conn.execute(select(t.c.area, t.c.created, t.c.answered)
                                    .where(t.c.status == "answered", t.c.answered >= since)).all()
        groups: dict[str, list[tuple]] = {CITY: list(rows)}
        for row in rows:
            if row[0] is not None:
                groups.setdefault(row[0], []).append(row)
        areas = self.areas[spec.id]
        out: dict[str, tuple[float | None, int]] = {}
        for area in [*(areas.names if areas else []), CITY]:
            members = groups.get(area, [])
            if spec.feedback == "time-to-answer":
                hours = [(stored_utc(r[2]) - stored_utc(r[1])).total_seconds() / 3600 for r in members]
                out[area] = (float(pd.Series(hours).median()) if hours else None, len(members))
            else:
                out[area] = (float(len(members)), len(members))
        return {PUBLIC: out, FULL: out}

    def _feedback_table(self) -> Any:
        from provider_plugins.feedback import create_table

        if self._feedback_t is None:
            self._feedback_t = create_table(self.store)
        return self._feedback_t

    def run_once(self, now: datetime | None = None) -> int:
        """Recompute every indicator and write the values that changed (or are due); Observations written.
        An indicator gets its full Datastreams the first time its full values differ from the public ones."""
        now = now or datetime.now(UTC)
        rows: list[ObservationRow] = []
        wall = time.monotonic()
        for iid, spec in self.specs.items():
            computed = self.compute(spec, now)
            if computed and computed[FULL] != computed[PUBLIC]:
                self._full_streams(iid)
            areas = self.areas[iid]
            for scope, area in itertools.product((PUBLIC, FULL), [*(areas.names if areas else []), CITY]):
                stream = self.streams.get((iid, area, scope))
                if stream is None:
                    continue
                value, count = computed.get(scope, {}).get(area, (None, 0))
                if value is None and stream.last is None:
                    continue
                if value == stream.last and wall - stream.written < self.heartbeat:
                    continue
                rows.append(_row(stream, now, value, count))
                stream.last, stream.written = value, wall
        if rows:
            with self.store.write() as (conn, changes):
                self.store.write_observations(conn, rows, changes)
        self.computed += 1
        return len(rows)

    def _sensor_watermark(self) -> tuple[int, Any]:
        """What changes when there is something new to compute from: sensor Observations, feedback."""
        obs = TABLES["observations"]
        mine = [s.id for s in self.streams.values()]
        with self.store.read() as conn:
            sensed = int(conn.execute(select(func.max(obs.c.id)).where(obs.c.datastream_id.not_in(mine))).scalar()
                         or 0)
            heard = None
            if any(spec.feedback for spec in self.specs.values()):
                t = self._feedback_table()
                heard = tuple(conn.execute(select(func.count(), func.max(t.c.id), func.max(t.c.answered))).one())
        return sensed, heard

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                mark = self._sensor_watermark()
                due = any(time.monotonic() - s.written >= self.heartbeat for s in self.streams.values())
                if mark != self.seen or due:
                    self.run_once()
                    self.seen = mark
            except Exception:  # a failed round must not end the indicators; the next one tries again
                log.exception("computing the indicators failed")
            self.stop_event.wait(self.interval)

    def start(self) -> IndicatorEngine:
        """Make the entities and keep them current from a thread of their own."""
        self.setup()
        self.thread = threading.Thread(target=self._loop, name="udp-indicators", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop recomputing."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(10)


def _scope(properties: dict[str, Any] | None) -> str:
    """PUBLIC or FULL: which version of the indicators a Thing or Datastream holds (PUBLIC before scopes)."""
    return FULL if (properties or {}).get("scope") == FULL else PUBLIC


def _point(location: Any) -> shapely.Geometry | None:
    if isinstance(location, str):
        location = orjson.loads(location)
    if not isinstance(location, dict):
        return None
    if location.get("type") == "Feature":
        location = location.get("geometry")
    try:
        geom = shapely.geometry.shape(location)
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException):
        return None
    return geom if geom.geom_type == "Point" else geom.representative_point()


def _aggregate(kind: str, rows: list[tuple], latest: dict[int, float]) -> float | None:
    count = sum(int(r[1]) for r in rows)
    if kind == "count":
        return float(count)
    if not count:
        return None
    if kind == "mean":
        return float(sum(float(r[2]) for r in rows) / count)
    if kind == "sum":
        return float(sum(float(r[2]) for r in rows))
    if kind == "min":
        return float(min(float(r[3]) for r in rows))
    if kind == "max":
        return float(max(float(r[4]) for r in rows))
    newest = max(rows, key=lambda r: r[5])
    return latest.get(newest[0])



def _row(stream: Stream, now: datetime, value: float | None, count: int) -> ObservationRow:
    return ObservationRow.of(value, phenomenon_time_start=now, result_time=now, parameters={"sensors": count},
                             datastream_id=stream.id, feature_of_interest_id=stream.foi)
