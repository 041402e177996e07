"""Writing Observations: the one way every Observation goes into the store, however it came in.

POST and MQTT creates (through `Store.insert`), CreateObservations, the MQTT bridge, the indicators,
`udp import-sta` and the demo build all hand typed rows to `write`, which applies the observationType
rule, gives each row its FeatureOfInterest when it has none, inserts the rows in bulk, widens the
(Multi)Datastreams' phenomenonTime and resultTime over them and records the changes that notifications
are made from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from psycopg.pq import TransactionStatus
from sqlalchemy import JSON, Connection, bindparam, case, func, insert, select, update
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as pysqlite_dialect

from sensorthings.results import decode_result, encode_result
from sensorthings.store.driver import driver, run
from sensorthings.store.schema import TABLES, UtcDateTime
from sensorthings.times import now


@dataclass(slots=True)
class ObservationRow:
    """One Observation to write, as the store's columns (`ObservationRow.of` encodes a result value).

    `feature_of_interest_id` None: the FeatureOfInterest generated from the Thing's Location;
    `phenomenon_time_start` None: now. Rows with the same `group` (a device message's readings) are
    written together or refused together.
    """

    result_type: int
    result_number: float | None = None
    result_string: str | None = None
    result_json: Any = None
    phenomenon_time_start: datetime | None = None
    phenomenon_time_end: datetime | None = None
    result_time: datetime | None = None
    result_quality: Any = None
    valid_time_start: datetime | None = None
    valid_time_end: datetime | None = None
    parameters: Any = None
    datastream_id: int | None = None
    multi_datastream_id: int | None = None
    feature_of_interest_id: int | None = None
    group: int | None = None

    @classmethod
    def of(cls, result: Any, **columns: Any) -> ObservationRow:
        """A row for a result value and the other columns by name."""
        kind, number, string, json = encode_result(result)
        return cls(kind, number, string, json, **columns)

    @property
    def result(self) -> Any:
        """The result value."""
        return decode_result(self.result_type, self.result_number, self.result_string, self.result_json)

    def columns(self) -> dict[str, Any]:
        """The row as the observations table's columns."""
        return {"phenomenon_time_start": self.phenomenon_time_start, "phenomenon_time_end": self.phenomenon_time_end,
                "result_time": self.result_time, "result_type": self.result_type,
                "result_number": self.result_number, "result_string": self.result_string,
                "result_json": self.result_json, "result_quality": self.result_quality,
                "valid_time_start": self.valid_time_start, "valid_time_end": self.valid_time_end,
                "parameters": self.parameters, "datastream_id": self.datastream_id,
                "multi_datastream_id": self.multi_datastream_id,
                "feature_of_interest_id": self.feature_of_interest_id}


# -- the observationType rule ------------------------------------------------------------------------
# OGC 18-088 (Datastream.observationType): the type of a Datastream's results follows its observationType.
# OM_Observation, and types the standard does not name, take any JSON value; a null result (nothing was
# measured) fits every type.
def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    # JSON does not tell 3 from 3.0
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


RESULT_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "OM_Measurement": ("numbers", _number),
    "OM_CountObservation": ("integers", _integer),
    "OM_CategoryObservation": ("strings (categories)", lambda v: isinstance(v, str)),
    "OM_TruthObservation": ("booleans", lambda v: isinstance(v, bool)),
}


def _what(value: Any) -> str:
    if isinstance(value, bool):
        kind = "boolean"
    elif _number(value):
        kind = "number"
    elif isinstance(value, str):
        kind = "string"
    else:
        kind = "array" if isinstance(value, list) else "object"
    text = repr(value)
    return f"the {kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _rule(observation_type: Any) -> tuple[str, str, Callable[[Any], bool]] | None:
    """(type name, what its results are, the test) for an observationType that limits its results."""
    if not isinstance(observation_type, str):
        return None
    name = observation_type.rsplit("/", 1)[-1]
    rule = RESULT_TYPES.get(name)
    return None if rule is None else (name, *rule)


def _misfit(rule: tuple[str, str, Callable[[Any], bool]] | None, result: Any, where: str) -> str | None:
    if rule is None or result is None or rule[2](result):
        return None
    return (f"wrong result type: {where} is {rule[0]}, whose results are {rule[1]} (OGC 18-088: results have the "
            f"type the observationType names); got {_what(result)}")


def result_misfit(observation_type: str | None, result: Any, where: str) -> str | None:
    """Why `result` does not fit `observation_type` (named in the reason as `where`); None when it fits."""
    return _misfit(_rule(observation_type), result, where)


def multi_result_misfit(types: list[Any] | None, result: Any, multi_id: int) -> str | None:
    """Why `result` does not fit a MultiDatastream's multiObservationDataTypes; None when it fits."""
    types = types or []
    if not isinstance(result, list) or len(result) != len(types):
        return (f"wrong result type: an Observation of MultiDatastream {multi_id} has an array of {len(types)} "
                f"values as its result, one per ObservedProperty; got {_what(result)}")
    for k, (kind, value) in enumerate(zip(types, result, strict=True)):
        reason = result_misfit(kind, value, f"MultiDatastream {multi_id}'s multiObservationDataTypes[{k}]")
        if reason is not None:
            return reason
    return None


# -- writing ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Stream:
    types: Any  # Datastream: its observationType; MultiDatastream: its multiObservationDataTypes
    location: int | None  # the newest Location of its Thing, which its generated FeatureOfInterest comes from
    feature: int | None  # that FeatureOfInterest, when it was made already
    rule: tuple[str, str, Callable[[Any], bool]] | None = None  # a Datastream's, looked up once


# the observations table's columns in the order a store's bulk insert takes them: a bound row is its id (None until
# the insert draws it) and the driver's values of these
OBSERVATION_COLUMNS = (
    "phenomenon_time_start", "phenomenon_time_end", "result_time", "result_type", "result_number", "result_string",
    "result_json", "result_quality", "valid_time_start", "valid_time_end", "parameters", "datastream_id",
    "multi_datastream_id", "feature_of_interest_id",
)
BOUND_COLUMNS = ("id", *OBSERVATION_COLUMNS)
FEATURE_AT, DATASTREAM_AT, MULTI_AT = (BOUND_COLUMNS.index(c) for c in (
    "feature_of_interest_id", "datastream_id", "multi_datastream_id"))
Bind = Callable[[dict[str, Any]], list[Any]]  # a row's columns → the driver's values, in BOUND_COLUMNS order
BulkInsert = Callable[[Connection, list[list[Any]]], list[int]]  # bound rows → their new ids (set in the rows too)


@dataclass(slots=True)
class Prepared:
    """Observation rows made ready for their insert before the write transaction begins: their columns (the
    default phenomenonTime filled in) and the driver's values of them. The Python work of a bulk write that needs
    nothing from the database, done without holding the write lock (on SQLite every process's writers wait on it)."""

    values: list[dict[str, Any]]
    bound: list[list[Any]]

    @classmethod
    def of(cls, rows: list[ObservationRow], bind: Bind) -> Prepared:
        """Prepare `rows` with a store's `bind`; a row without a phenomenonTime gets now."""
        stamp = now()
        values = [row.columns() for row in rows]
        for v in values:
            if v["phenomenon_time_start"] is None:
                v["phenomenon_time_start"] = stamp
        return cls(values, [bind(v) for v in values])


def write(conn: Connection, bulk_insert: BulkInsert, rows: list[ObservationRow],
          refused: Callable[[int, str], None], prepared: Prepared,
          commits: bool = False) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Insert Observation rows (see `Store.write_observations`), `prepared` from them: each one's new id in order
    (None where refused), and the rows written as columns with their ids. `commits`: the rows are all that `conn`'s
    transaction, not begun yet, writes (see `_at_once`)."""
    if not rows:
        return [], []
    with _at_once(conn, commits and len(rows) <= FEW) as at_once:
        return _write(conn, bulk_insert, rows, refused, prepared, at_once)


@contextmanager
def _at_once(conn: Connection, wanted: bool) -> Iterator[bool]:
    """PostgreSQL, `wanted` and no transaction begun on `conn` yet: True while the driver's connection is in
    autocommit, so that a few rows' write reads what it checks them against without a transaction (no BEGIN round
    trip: nothing it reads needs one, the references are checked again by the insert's triggers) and then begins,
    inserts and commits in one round trip (`_insert_widening`). A single POST took five round trips (BEGIN, the
    streams, the inserts, a pipeline's sync, COMMIT), each a wait for the CPU when it is busy. False elsewhere."""
    if not wanted or conn.dialect.name != "postgresql":
        yield False
        return
    db = conn.connection.driver_connection
    if db.autocommit or db.info.transaction_status != TransactionStatus.IDLE:
        yield False
        return
    db.autocommit = True
    try:
        yield True
    finally:
        status = db.info.transaction_status
        if status != TransactionStatus.UNKNOWN:  # UNKNOWN: the connection is gone, and the pool discards it
            if status != TransactionStatus.IDLE:  # failed before its COMMIT, or in it
                db.rollback()
            db.autocommit = False


def _write(conn: Connection, bulk_insert: BulkInsert, rows: list[ObservationRow], refused: Callable[[int, str], None],
           prepared: Prepared, at_once: bool) -> tuple[list[int | None], list[dict[str, Any]]]:
    streams = _streams(conn, _stream_ids(rows))
    given = {r.feature_of_interest_id for r in rows if r.feature_of_interest_id is not None}
    known = _existing_features(conn, given) if given else set()
    reasons = {i: reason for i, row in enumerate(rows) if (reason := _check(row, streams, known)) is not None}
    if reasons:
        reasons = _by_group(rows, reasons)
        for i in sorted(reasons):
            refused(i, reasons[i])
    # the FeatureOfInterest of rows without one: generated from their Thing's Location
    wanted = {streams[_key(row)].location for i, row in enumerate(rows)
              if row.feature_of_interest_id is None and i not in reasons}
    # found with the streams (one round trip fewer for a device's write), or made now
    features = {s.location: s.feature for s in streams.values() if s.feature is not None}
    wanted -= features.keys()
    if wanted:
        features.update(generated_features(conn, wanted))  # type: ignore[arg-type]
    good: list[dict[str, Any]] = []
    bound: list[list[Any]] = []
    for i, row in enumerate(rows):
        if i in reasons:
            continue
        values = prepared.values[i]
        if values["feature_of_interest_id"] is None:
            values["feature_of_interest_id"] = prepared.bound[i][FEATURE_AT] = \
                features[streams[_key(row)].location]  # type: ignore[index]
        good.append(values)
        bound.append(prepared.bound[i])
    if not good:
        return [None] * len(rows), []
    if len(good) <= FEW and conn.dialect.name == "postgresql":
        ids = _insert_widening(conn, good, at_once)
    else:
        # one statement where the bulk way takes two
        ids = [_insert_one(conn, bound[0])] if len(good) == 1 else bulk_insert(conn, bound)
        cover(conn, good)
    for id_, values in zip(ids, good, strict=True):
        values["id"] = id_
    if not reasons:
        return list(ids), good
    it = iter(ids)
    return [None if i in reasons else next(it) for i in range(len(rows))], good


# PostgreSQL: up to FEW rows (single POSTs sharing a commit, a bridge batch at a device's pace) are inserted by one
# statement each that also widens the row's stream's time span, the statements sent together: one round trip where
# drawing ids, COPY and the widening took five (a write under a full CPU waits ~1.5 ms for each round trip)
FEW = 32


def _insert_widening(conn: Connection, rows: list[dict[str, Any]], commits: bool) -> list[int]:
    """PostgreSQL: insert rows by `_INSERT_ONE_WIDENING`, sent in one pipeline; their ids in order. `commits`: the
    pipeline begins and commits the transaction too (`_at_once`)."""
    cursors = []
    with driver(conn, "INSERT INTO observations") as db, db.pipeline():
        if commits:
            db.execute("BEGIN")
        for row in rows:
            multi = row["datastream_id"] is None
            # one statement a row, not executemany: that waits for its results before anything else is sent
            params = {**{c: driver_value(c, v) for c, v in row.items()}, **spans_of([row])[multi][0]}
            cursors.append(db.execute(_widening_sql(multi, tuple(row)), params))
        if commits:
            db.execute("COMMIT")
    return [cursor.fetchone()[0] for cursor in cursors]


def _insert_one(conn: Connection, row: list[Any]) -> int:
    """SQLite: one bound row (`Prepared.bound`) inserted on the driver's connection (its triggers raise the versions);
    its id. Through SQLAlchemy's execution a single POST's statements took 12 times as long as in SQLite itself."""
    return run(conn, _INSERT_ONE, dict(zip(BOUND_COLUMNS, row, strict=True))).fetchone()[0]


@lru_cache(maxsize=8)
def _widening_sql(multi: bool, columns: tuple[str, ...]) -> str:
    return str(_INSERT_ONE_WIDENING[multi].compile(dialect=PG_DIALECT, column_keys=list(columns)))


def misfit(conn: Connection, row: ObservationRow) -> str | None:
    """Why one row breaks the rules `write` applies; None when it keeps them."""
    foi = row.feature_of_interest_id
    known = _existing_features(conn, {foi}) if foi is not None else set()
    return _check(row, _streams(conn, _stream_ids([row])), known)


def _key(row: ObservationRow) -> tuple[bool, int]:
    if row.datastream_id is not None:
        return False, row.datastream_id
    return True, row.multi_datastream_id  # type: ignore[return-value]


NO_FEATURE = ("no FeatureOfInterest: the Observation names none and its Thing has no Location to make one from")


def _check(row: ObservationRow, streams: dict[tuple[bool, int], _Stream], known: set[int]) -> str | None:
    if (row.datastream_id is None) == (row.multi_datastream_id is None):
        return "an Observation needs exactly one of Datastream or MultiDatastream"
    multi, id_ = _key(row)
    stream = streams.get((multi, id_))
    if stream is None:
        return f"{'MultiDatastream' if multi else 'Datastream'} {id_} does not exist"
    if row.feature_of_interest_id is None:
        if stream.location is None:
            return NO_FEATURE
    elif row.feature_of_interest_id not in known:
        return f"FeatureOfInterest {row.feature_of_interest_id} does not exist"
    if multi:
        return multi_result_misfit(stream.types, row.result, id_)
    value = row.result
    if stream.rule is None or value is None or stream.rule[2](value):  # the common case: no reason to write
        return None
    return _misfit(stream.rule, value, f"the observationType of Datastream {id_}")


def _by_group(rows: list[ObservationRow], reasons: dict[int, str]) -> dict[int, str]:
    """The refusals widened to every row of a refused row's group."""
    # from the last refusal to the first, so that a group is refused for its first reason
    groups = {rows[i].group: reason for i, reason in sorted(reasons.items(), reverse=True)
              if rows[i].group is not None}
    if not groups:
        return reasons
    out = dict(reasons)
    for i, row in enumerate(rows):
        if row.group in groups and i not in out:
            out[i] = groups[row.group]
    return out


def _stream_ids(rows: list[ObservationRow]) -> dict[bool, set[int]]:
    ids: dict[bool, set[int]] = {False: set(), True: set()}
    for row in rows:
        if row.datastream_id is not None:
            ids[False].add(row.datastream_id)
        elif row.multi_datastream_id is not None:
            ids[True].add(row.multi_datastream_id)
    return ids


def _streams(conn: Connection, ids: dict[bool, set[int]]) -> dict[tuple[bool, int], _Stream]:
    """The (Multi)Datastreams that exist: their types and their Thing's newest Location, one query a kind."""
    out: dict[tuple[bool, int], _Stream] = {}
    for multi, wanted in ids.items():
        if not wanted:
            continue
        for id_, kind, location, feature in run(conn, _STREAMS[multi], {"ids": list(wanted)}).fetchall():
            if multi and isinstance(kind, str):  # SQLite's driver gives JSON as its text
                kind = orjson.loads(kind)
            out[(multi, id_)] = _Stream(kind, location, feature, None if multi else _rule(kind))
    return out


def _existing_features(conn: Connection, ids: set[int]) -> set[int]:
    return set(conn.execute(_EXISTING_FEATURES, {"ids": list(ids)}).scalars())


def generated_features(conn: Connection, locations: set[int]) -> dict[int, int]:
    """The FeatureOfInterest generated from each Location, made once and reused."""
    found = dict(conn.execute(_GENERATED_FEATURES, {"locs": list(locations)}).all())
    missing = locations - found.keys()
    if missing:
        foi, loc = TABLES["features_of_interest"], TABLES["locations"]
        for row in conn.execute(select(loc).where(loc.c.id.in_(missing)).order_by(loc.c.id)).mappings():
            found[row["id"]] = conn.execute(
                insert(foi).values(name=row["name"], description=row["description"],
                                   encoding_type=row["encoding_type"], feature=row["location"], geom=row["geom"],
                                   properties=row["properties"], generated_from=row["id"]).returning(foi.c.id)
            ).scalar_one()
    return found


def feature_for(conn: Connection, datastream_id: int | None, multi_datastream_id: int | None) -> int | None:
    """The FeatureOfInterest generated from a (Multi)Datastream's Thing's Location; None when it has none."""
    multi = datastream_id is None
    id_ = multi_datastream_id if multi else datastream_id
    stream = _streams(conn, {multi: {id_}}).get((multi, id_))  # type: ignore[arg-type]
    if stream is None or stream.location is None:
        return None
    return generated_features(conn, {stream.location})[stream.location]


def cover(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Widen each (Multi)Datastream's phenomenonTime and resultTime over written Observation rows."""
    for multi, items in spans_of(rows).items():
        if items:
            _widen(conn, multi, items)


def spans_of(rows: list[dict[str, Any]]) -> dict[bool, list[dict[str, Any]]]:
    """The parameters of the widening statement (`_WIDEN`) for each stream the rows belong to, by whether it is a
    MultiDatastream."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["datastream_id"], row["multi_datastream_id"]), []).append(row)
    spans: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for (ds, md), group in groups.items():
        results = [r["result_time"] for r in group if r["result_time"] is not None]
        spans[ds is None].append({
            "b_id": md if ds is None else ds,
            "b_ps": min(r["phenomenon_time_start"] for r in group),
            "b_pe": max(r["phenomenon_time_end"] or r["phenomenon_time_start"] for r in group),
            "b_rs": min(results) if results else None, "b_re": max(results) if results else None,
        })
    return spans


def _widen(conn: Connection, multi: bool, spans: list[dict[str, Any]]) -> None:
    """One statement, executed for many (Multi)Datastreams at once (PostgreSQL: pipelined); SQLite: once for each on
    the driver's connection (no round trips to save, and the driver's own executemany lets go of the interpreter lock
    for every row: see sqlite.insert_many)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_WIDEN[multi], spans)
        return
    for span in spans:
        run(conn, _WIDEN[multi], {k: _TIME_TEXT(v) if k in _SPAN_TIMES else v for k, v in span.items()})


# -- the statements, built once: building one costs more than running it on a small write ------------
def _streams_statement(multi: bool) -> Any:
    table = TABLES["multi_datastreams" if multi else "datastreams"]
    tl = TABLES["thing_locations"]
    # correlated explicitly: inside the FeatureOfInterest's subquery too, not only where it stands first
    loc = (select(tl.c.location_id).where(tl.c.thing_id == table.c.thing_id).correlate(table)
           .order_by(tl.c.location_id.desc()).limit(1).scalar_subquery())
    foi = TABLES["features_of_interest"]
    feature = select(func.min(foi.c.id)).where(foi.c.generated_from == loc).scalar_subquery()
    types = table.c.multi_observation_data_types if multi else table.c.observation_type
    return select(table.c.id, types, loc, feature).where(table.c.id.in_(bindparam("ids", expanding=True)))


def _widen_statement(multi: bool) -> Any:
    table = TABLES["multi_datastreams" if multi else "datastreams"]
    c = table.c
    t = UtcDateTime()

    def widen(col: Any, name: str, earlier: bool) -> Any:
        v = bindparam(name, type_=t)
        beyond = col > v if earlier else col < v
        return case((v.is_(None), col), (col.is_(None), v), (beyond, v), else_=col)

    return update(table).where(c.id == bindparam("b_id")).values(
        phenomenon_time_start=widen(c.phenomenon_time_start, "b_ps", True),
        phenomenon_time_end=widen(c.phenomenon_time_end, "b_pe", False),
        result_time_start=widen(c.result_time_start, "b_rs", True),
        result_time_end=widen(c.result_time_end, "b_re", False),
    )


_FOI = TABLES["features_of_interest"]
_STREAMS = {multi: _streams_statement(multi) for multi in (False, True)}
_WIDEN = {multi: _widen_statement(multi) for multi in (False, True)}
_EXISTING_FEATURES = select(_FOI.c.id).where(_FOI.c.id.in_(bindparam("ids", expanding=True)))
_GENERATED_FEATURES = (select(_FOI.c.generated_from, func.min(_FOI.c.id))
                       .where(_FOI.c.generated_from.in_(bindparam("locs", expanding=True)))
                       .group_by(_FOI.c.generated_from))
_INSERT_ONE = insert(TABLES["observations"]).returning(TABLES["observations"].c.id)
_INSERT_ONE_WIDENING = {multi: _INSERT_ONE.add_cte(_WIDEN[multi].cte("widened")) for multi in (False, True)}
# what the statements and column types run on the driver's own connection are compiled with
PG_DIALECT = psycopg_dialect()
_TIME_TEXT = UtcDateTime().bind_processor(pysqlite_dialect())  # a time as SQLite's text of it
_SPAN_TIMES = frozenset({"b_ps", "b_pe", "b_rs", "b_re"})
# the columns the driver's own connection takes as JSON text (the pipelined small writes here)
JSON_COLUMNS = frozenset(c.name for c in TABLES["observations"].c if isinstance(c.type, JSON))


def driver_value(column: str, value: Any) -> Any:
    """An Observation column's value as PostgreSQL's driver takes it on its own connection: JSON columns as text."""
    return orjson.dumps(value).decode() if column in JSON_COLUMNS and value is not None else value
