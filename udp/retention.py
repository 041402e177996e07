"""Retention: raw Observations deleted once older than a period, their aggregates kept as Datastreams of their own.

    retention:
      - observedProperty: PM10         # every Datastream whose ObservedProperty has this name
        keep: P2Y                      # raw Observations whose phenomenonTime began longer ago are deleted
        aggregates: [PT1H, P1D]        # the default; kept past `keep`, forever ([] for none)
      - datastream: pedestrians 4 total    # one Datastream by name: its rule wins over its ObservedProperty's
        keep: P90D

Each aggregate is a Datastream on the raw Datastream's Thing, with its Sensor, ObservedProperty and unit
(`properties.aggregateOf`: the raw one's id, `properties.aggregate`: the period), holding one Observation per
interval: phenomenonTime the interval, result the mean of the numeric results, parameters `min`, `max` and
`count`, FeatureOfInterest that of the last reading aggregated in the same pass. Intervals are aligned to
1970-01-01T00:00Z (hours and days in UTC) and aggregated once they ended `SETTLE` ago; an Observation arriving
later for an interval already aggregated makes it aggregated again. Raw Observations are deleted only once every
aggregate has passed them, so nothing is lost unaggregated; a Datastream's deletion waits until its cutoff has
moved `DELETE_EVERY`.

The engine runs on one node of several (the `retention` lease of sensorthings/store/leadership.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import isodate
from sqlalchemy import Connection, and_, case, delete, func, select, update

from apicommon.declaration import declared
from sensorthings.results import FLOAT, INT
from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from sensorthings.store.schema import TABLES
from sensorthings.times import stored_utc
from udp.errors import ConfigError

log = logging.getLogger("udp.retention")

KEYS = {"observedProperty", "datastream", "keep", "aggregates"}
DEFAULT_AGGREGATES = ("PT1H", "P1D")
SETTLE = timedelta(minutes=5)  # an interval is aggregated this long after it ended: readings arrive late
EVERY = 60.0  # seconds between rounds
DELETE_BATCH = 10_000  # raw rows deleted per transaction: no long lock on a busy table
DELETE_EVERY = timedelta(hours=1)  # a Datastream's rows past its rule are deleted when its cutoff moved this far
CHUNK = 1_000  # intervals aggregated per transaction when catching up
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
# observation types whose results may be numbers; the others are only deleted, never aggregated
NUMERIC_TYPES = ("OM_Measurement", "OM_CountObservation", "OM_Observation")
NAMES = {3600: "hourly", 86400: "daily"}


@dataclass(frozen=True)
class Rule:
    """One `retention:` entry: which Datastreams, how long their raw Observations stay, what is kept past it."""

    keep: timedelta | isodate.Duration
    aggregates: tuple[int, ...]  # interval lengths in seconds
    observed_property: str | None = None
    datastream: str | None = None


def parse_retention(doc: Any) -> list[Rule]:
    """The `retention:` list; ConfigError names the entry and key at fault."""
    if not isinstance(doc, list):
        raise ConfigError("retention: must be a list of rules (observedProperty or datastream, keep, aggregates)")
    rules: list[Rule] = []
    for i, body in enumerate(doc):
        where = f"retention[{i}]"
        declared(body, where, KEYS, ConfigError, required=("keep",))
        if ("observedProperty" in body) == ("datastream" in body):
            raise ConfigError(f"{where}: name either an observedProperty or a datastream")
        keep = _duration(body["keep"], f"{where}.keep")
        aggregates = []
        for j, text in enumerate(body.get("aggregates", DEFAULT_AGGREGATES) or ()):
            period = _duration(text, f"{where}.aggregates[{j}]")
            if isinstance(period, isodate.Duration):
                raise ConfigError(f"{where}.aggregates[{j}]: years and months vary in length; use PT1H, P1D, …")
            seconds = int(period.total_seconds())
            if seconds != period.total_seconds() or not (86400 % seconds == 0 or seconds % 86400 == 0):
                raise ConfigError(f"{where}.aggregates[{j}]: an interval must divide a day or be whole days, "
                                  f"got {text!r}")
            aggregates.append(seconds)
        key = "observedProperty" if "observedProperty" in body else "datastream"
        rules.append(Rule(keep, tuple(sorted(set(aggregates))),
                          **{("observed_property" if key == "observedProperty" else "datastream"): str(body[key])}))
    return rules


def _duration(text: Any, where: str) -> timedelta | isodate.Duration:
    try:
        value = isodate.parse_duration(str(text))
    except (isodate.ISO8601Error, ValueError):
        raise ConfigError(f"{where}: not an ISO 8601 duration such as P2Y, P90D or PT1H: {text!r}") from None
    if (value.total_seconds() if isinstance(value, timedelta) else value.years * 12 + value.months) <= 0:
        raise ConfigError(f"{where}: must be longer than nothing")
    return value


def period_text(seconds: int) -> str:
    """An interval length as ISO 8601 (PT1H, P1D)."""
    return isodate.duration_isoformat(timedelta(seconds=seconds))


@dataclass
class Target:
    """A raw Datastream under a rule, and its aggregates' Datastreams by interval length."""

    id: int
    rule: Rule
    numeric: bool
    aggregates: dict[int, int] = field(default_factory=dict)  # seconds → Datastream id
    done: dict[int, datetime] = field(default_factory=dict)  # seconds → aggregated up to (exclusive)
    deleted_before: datetime | None = None  # the cutoff of its last deletion


@dataclass
class Round:
    """What one round did."""

    aggregated: int = 0  # aggregate Observations written (again, for late ones)
    deleted: int = 0  # raw Observations deleted
    read: int = 0  # raw Observations aggregated
    aggregating_s: float = 0.0
    deleting_s: float = 0.0


class RetentionEngine:
    """Aggregates and deletes, round after round, from a thread of its own."""

    def __init__(self, store: Store, rules: list[Rule], every: float = EVERY, settle: timedelta = SETTLE) -> None:
        self.store = store
        self.rules = rules
        self.every = every
        self.settle = settle
        self.service = Service(store)
        self.targets: dict[int, Target] = {}
        self.seen_id: int | None = None  # the newest Observation id when the last round looked for late ones
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    # -- which Datastreams, and their aggregates' Datastreams ---------------------------------------------
    def plan(self) -> None:
        """Find the Datastreams the rules name, and make their aggregates' Datastreams where missing."""
        ds, op = TABLES["datastreams"], TABLES["observed_properties"]
        with self.store.read() as conn:
            rows = conn.execute(select(ds.c.id, ds.c.name, ds.c.observation_type, ds.c.properties, op.c.name)
                                .join(op, op.c.id == ds.c.observed_property_id)).all()
        made: dict[tuple[int, int], int] = {}
        for id_, _name, _type, props, _op in rows:
            props = props or {}
            if isinstance(props, dict) and "aggregateOf" in props:
                made[(int(props["aggregateOf"]), int(props.get("aggregateSeconds", 0)))] = id_
        by_name = {r.datastream: r for r in self.rules if r.datastream is not None}
        by_property = {r.observed_property: r for r in self.rules if r.observed_property is not None}
        for id_, name, kind, props, prop_name in rows:
            if isinstance(props, dict) and "aggregateOf" in props:
                continue
            rule = by_name.get(name) or by_property.get(prop_name)
            if rule is None:
                self.targets.pop(id_, None)
                continue
            target = self.targets.get(id_)
            if target is None or target.rule != rule:
                target = self.targets[id_] = Target(id_, rule, str(kind).rsplit("/", 1)[-1] in NUMERIC_TYPES)
            if not target.numeric:
                continue
            for seconds in rule.aggregates:
                if seconds not in target.aggregates:
                    target.aggregates[seconds] = made.get((id_, seconds)) or self._make(id_, seconds)

    def _make(self, raw: int, seconds: int) -> int:
        source = self.service.call("GET", f"Datastreams({raw})", **{"$expand": "Thing($select=id),Sensor($select=id),"
                                                                               "ObservedProperty($select=id)"})
        label = NAMES.get(seconds, f"per {period_text(seconds)}")
        return self.service.call("POST", "Datastreams", {
            "name": f"{source['name']} ({label})",
            "description": f"{label} mean, min, max and count of {source['name']}, kept past its raw Observations",
            "observationType": OM, "unitOfMeasurement": source["unitOfMeasurement"],
            "properties": {"aggregateOf": raw, "aggregate": period_text(seconds), "aggregateSeconds": seconds,
                           "statistic": "mean", "parameters": ["min", "max", "count"]},
            "Thing": {"@iot.id": source["Thing"]["@iot.id"]}, "Sensor": {"@iot.id": source["Sensor"]["@iot.id"]},
            "ObservedProperty": {"@iot.id": source["ObservedProperty"]["@iot.id"]}})["@iot.id"]

    # -- a round ---------------------------------------------------------------------------------------
    def run_once(self, now: datetime | None = None) -> Round:
        """Aggregate what has settled, aggregate again what arrived late, delete what is past its rule."""
        now = now or datetime.now(UTC)
        self.plan()
        done = Round()
        done.aggregated += self._late()
        for target in list(self.targets.values()):
            t0 = time.perf_counter()
            for seconds, aggregate in target.aggregates.items():
                written, read = self._catch_up(target, seconds, aggregate, now)
                done.aggregated += written
                done.read += read
            t1 = time.perf_counter()
            done.deleted += self._delete(target, now)
            done.aggregating_s += t1 - t0
            done.deleting_s += time.perf_counter() - t1
        return done

    def _catch_up(self, target: Target, seconds: int, aggregate: int, now: datetime) -> tuple[int, int]:
        """Aggregate the intervals of one raw Datastream that ended `settle` ago and are not yet aggregated;
        (aggregate Observations written, raw ones read)."""
        obs, ds = TABLES["observations"], TABLES["datastreams"]
        step = timedelta(seconds=seconds)
        until = _floor(now - self.settle, seconds)
        start = target.done.get(seconds)
        if start is None:
            with self.store.read() as conn:
                end = conn.execute(select(ds.c.phenomenon_time_end).where(ds.c.id == aggregate)).scalar()
                first = None if end is not None else conn.execute(
                    select(func.min(obs.c.phenomenon_time_start)).where(obs.c.datastream_id == target.id)).scalar()
            if end is None and first is None:
                return 0, 0
            start = stored_utc(end) if end is not None else _floor(stored_utc(first), seconds)
        written = read = 0
        while start < until:
            stop = min(until, start + step * CHUNK)
            with self.store.write() as (conn, changes):
                rows = self._aggregate(conn, target.id, aggregate, seconds, start, stop)
                if rows:
                    self.store.write_observations(conn, rows, changes)
            written += len(rows)
            read += sum(row.parameters["count"] for row in rows)
            start = stop
        target.done[seconds] = max(start, target.done.get(seconds, start))
        return written, read

    def _aggregate(self, conn: Connection, raw: int, aggregate: int, seconds: int, start: datetime,
                   stop: datetime) -> list[ObservationRow]:
        """The aggregate Observations of the intervals in [start, stop) of a raw Datastream."""
        obs = TABLES["observations"]
        bucket = self.store.dialect.time_bucket(obs.c.phenomenon_time_start, seconds).label("bucket")
        span = and_(obs.c.datastream_id == raw, obs.c.phenomenon_time_start >= start,
                    obs.c.phenomenon_time_start < stop, obs.c.result_type.in_((INT, FLOAT)))
        # only columns of the series index (schema.py): on PostgreSQL an index-only scan, no table page per row
        found = conn.execute(
            select(bucket, func.avg(obs.c.result_number), func.min(obs.c.result_number),
                   func.max(obs.c.result_number), func.count())
            .where(span).group_by(bucket).order_by(bucket)).all()
        if not found:
            return []
        # the FeatureOfInterest of the span's last reading for all its intervals (one row read; a sensor that
        # moves within a span gives its aggregates where it ended up)
        foi = conn.execute(select(obs.c.feature_of_interest_id).where(span)
                           .order_by(obs.c.phenomenon_time_start.desc()).limit(1)).scalar()
        step = timedelta(seconds=seconds)
        rows = []
        for b, mean, low, high, count in found:
            begin = datetime.fromtimestamp(int(b) * seconds, UTC)
            rows.append(ObservationRow.of(float(mean), phenomenon_time_start=begin, phenomenon_time_end=begin + step,
                                          result_time=begin + step, datastream_id=aggregate,
                                          feature_of_interest_id=foi,
                                          parameters={"min": float(low), "max": float(high), "count": int(count)}))
        return rows

    def _late(self) -> int:
        """Aggregate again the intervals that Observations stored since the last round reached after they were
        aggregated."""
        obs = TABLES["observations"]
        ends = [end for target in self.targets.values() for end in target.done.values()]
        with self.store.read() as conn:
            newest = conn.execute(select(func.max(obs.c.id))).scalar() or 0
            if self.seen_id is None or newest <= self.seen_id or not ends:
                self.seen_id = newest
                return 0
            arrived = conn.execute(
                select(obs.c.datastream_id, obs.c.phenomenon_time_start)
                .where(and_(obs.c.id > self.seen_id, obs.c.id <= newest, obs.c.phenomenon_time_start < max(ends),
                            obs.c.datastream_id.in_(list(self.targets)), obs.c.result_type.in_((INT, FLOAT))))).all()
        self.seen_id = newest
        redo: set[tuple[int, int, datetime]] = set()  # (raw, seconds, the interval's start)
        for raw, when in arrived:
            for seconds, end in self.targets[raw].done.items():
                if stored_utc(when) < end:
                    redo.add((raw, seconds, _floor(stored_utc(when), seconds)))
        written = 0
        for raw, seconds, start in sorted(redo):
            aggregate = self.targets[raw].aggregates[seconds]
            with self.store.write() as (conn, changes):
                conn.execute(delete(obs).where(and_(obs.c.datastream_id == aggregate,
                                                    obs.c.phenomenon_time_start == start)))
                rows = self._aggregate(conn, raw, aggregate, seconds, start, start + timedelta(seconds=seconds))
                self.store.write_observations(conn, rows, changes)
            written += len(rows)
        return written

    def _delete(self, target: Target, now: datetime) -> int:
        """Delete the raw Observations past the rule that every aggregate has passed; narrow the Datastream's
        phenomenonTime to what is left."""
        obs, ds = TABLES["observations"], TABLES["datastreams"]
        cutoff = now - target.rule.keep
        for seconds in target.aggregates:
            cutoff = min(cutoff, target.done.get(seconds, cutoff))
        if target.deleted_before is not None and cutoff < target.deleted_before + DELETE_EVERY:
            return 0  # a query per Datastream every round is work for nothing: the rows past it come by the hour
        target.deleted_before = cutoff
        gone = 0
        while True:
            doomed = select(obs.c.id).where(and_(obs.c.datastream_id == target.id,
                                                 obs.c.phenomenon_time_start < cutoff)).limit(DELETE_BATCH)
            with self.store.write() as (conn, _changes):
                n = conn.execute(delete(obs).where(obs.c.id.in_(doomed.scalar_subquery()))).rowcount
                if n:
                    first = select(obs.c.phenomenon_time_start).where(obs.c.datastream_id == target.id) \
                        .order_by(obs.c.phenomenon_time_start).limit(1).scalar_subquery()
                    # resultTime is left as it was: its earliest would take reading every row left
                    conn.execute(update(ds).where(ds.c.id == target.id).values(
                        phenomenon_time_start=first,
                        phenomenon_time_end=case((first.is_(None), None), else_=ds.c.phenomenon_time_end)))
            gone += n
            if n < DELETE_BATCH:
                return gone

    # -- the thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                done = self.run_once()
                if done.aggregated or done.deleted:
                    log.info("retention: %d aggregate Observations written, %d raw Observations deleted",
                             done.aggregated, done.deleted)
            except Exception:  # a failed round must not end retention; the next one tries again
                log.exception("a retention round failed")
            self.stop_event.wait(self.every)

    def start(self) -> RetentionEngine:
        """Run rounds from a thread of its own."""
        self.thread = threading.Thread(target=self._loop, name="udp-retention", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current round."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(60)


def _floor(when: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(when.timestamp()) // seconds * seconds, UTC)
