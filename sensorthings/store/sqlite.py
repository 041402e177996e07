"""The embedded SQLite store: WKB geometries with shapely predicates registered as SQL functions."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import date, time
from functools import lru_cache
from operator import itemgetter
from time import monotonic, sleep
from typing import Any

import shapely
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Integer,
    and_,
    case,
    column,
    create_engine,
    event,
    func,
    literal,
    select,
    table,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import StaticPool

from sensorthings.geometry import to_wkb
from sensorthings.store import versions
from sensorthings.store.base import QueryTimeout
from sensorthings.store.driver import driver
from sensorthings.store.observations import BOUND_COLUMNS, DATASTREAM_AT, MULTI_AT, OBSERVATION_COLUMNS, Bind
from sensorthings.store.schema import TABLES
from sensorthings.store.sqlite_checkpoints import checkpoint_beside_writes
from sensorthings.store.sqlite_turns import take_turns

_PARTS = {"year": "%Y", "month": "%m", "day": "%d", "hour": "%H", "minute": "%M", "second": "%S"}


def _json_path(path: tuple[str | int, ...]) -> str:
    out = "$"
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else '."' + item.replace('"', '\\"') + '"'
    return out


class SqliteDialect:
    """SQLite spellings for the query translator."""

    name = "sqlite"

    def json_text(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        return func.json_extract(col, _json_path(path))

    def json_number(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        p = _json_path(path)
        return case((func.json_type(col, p).in_(("integer", "real")), func.json_extract(col, p)))

    def json_bool(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        p = _json_path(path)
        return case((func.json_type(col, p) == "true", literal(True)), (func.json_type(col, p) == "false",
                                                                          literal(False)))

    def json_value(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        return func.json_extract(col, _json_path(path))

    def date_part(self, part: str, expr: ColumnElement) -> ColumnElement:
        if part == "fractionalseconds":
            return func.cast(func.strftime("%f", expr), Float()) - func.cast(func.strftime("%S", expr), Float())
        return func.cast(func.strftime(_PARTS[part], expr), Integer())

    def time_bucket(self, expr: ColumnElement, seconds: int) -> ColumnElement:
        epoch = func.cast(func.strftime("%s", expr), Integer())
        # SQLite's integer division truncates towards zero: floor it for times before 1970
        return (epoch - ((epoch % seconds) + seconds) % seconds) / seconds

    def to_date(self, expr: ColumnElement) -> ColumnElement:
        return func.date(expr)

    def to_time(self, expr: ColumnElement) -> ColumnElement:
        return func.time(expr)

    def date_literal(self, value: date) -> ColumnElement:
        return literal(value.isoformat())

    def time_literal(self, value: time) -> ColumnElement:
        return literal(value.replace(microsecond=0).isoformat())

    def geom_literal(self, wkt: str) -> ColumnElement:
        return literal(to_wkb(shapely.from_wkt(wkt)))

    def spatial(self, name: str, *args: ColumnElement) -> ColumnElement:
        test = getattr(func, "udp_" + name)(*args)
        if name[3:] not in BBOX_PREDICATES or len(args) != 2:
            return test
        # a literal geometry against an indexed column: let the R-tree rule out most rows first
        for col, lit in (args, args[::-1]):
            wkb = getattr(lit, "value", None)
            if isinstance(wkb, bytes) and (box := _boxed(col, _geom(wkb).bounds)) is not None:
                return and_(box, test)
        return test

    def near(self, col: ColumnElement, wkt: str, distance: float | ColumnElement) -> ColumnElement:
        minx, miny, maxx, maxy = shapely.from_wkt(wkt).bounds
        box = _boxed(col, (minx - distance, miny - distance, maxx + distance, maxy + distance))
        return true() if box is None else box

    def mod(self, a: ColumnElement, b: ColumnElement) -> ColumnElement:
        return a % b

    def instr(self, haystack: ColumnElement, needle: ColumnElement) -> ColumnElement:
        return func.instr(haystack, needle)




@lru_cache(maxsize=4096)
def _geom(wkb: bytes) -> Any:
    return shapely.from_wkb(wkb)


def _predicate(name: str):  # noqa: ANN202
    fn = getattr(shapely, name)

    def run(a: bytes | None, b: bytes | None) -> int | None:
        if a is None or b is None:
            return None
        return int(bool(fn(_geom(a), _geom(b))))

    return run


def _distance(a: bytes | None, b: bytes | None) -> float | None:
    if a is None or b is None:
        return None
    return float(shapely.distance(_geom(a), _geom(b)))


def _length(a: bytes | None) -> float | None:
    return None if a is None else float(shapely.length(_geom(a)))


def _relate(a: bytes | None, b: bytes | None, pattern: str | None) -> int | None:
    if a is None or b is None or pattern is None:
        return None
    try:
        return int(bool(shapely.relate_pattern(_geom(a), _geom(b), pattern)))
    except Exception:  # a malformed DE-9IM pattern matches nothing
        return 0


SPATIAL_TABLES = ("locations", "features_of_interest", "datastreams", "multi_datastreams")
# predicates that can only hold where the two bounding boxes meet
BBOX_PREDICATES = ("equals", "touches", "within", "overlaps", "crosses", "intersects", "contains")


def _boxed(col: Any, bounds: tuple[Any, Any, Any, Any]) -> ColumnElement | None:
    """The rows of an indexed geometry column whose bounding boxes meet `bounds`, found in its R-tree (None: the
    column has none)."""
    rtree = _rtree_of(col)
    if rtree is None:
        return None
    minx, miny, maxx, maxy = bounds
    r = rtree_table(rtree)
    return col.table.c.id.in_(select(r.c.id).where(r.c.maxx >= minx, r.c.minx <= maxx, r.c.maxy >= miny,
                                                   r.c.miny <= maxy))


def rtree_table(name: str) -> Any:
    """An R-tree virtual table (id, minx, maxx, miny, maxy) for queries."""
    return table(name, column("id"), column("minx"), column("maxx"), column("miny"), column("maxy"))


def _rtree_of(col: Any) -> str | None:
    """The R-tree beside a `geom` column's table, if it has one."""
    if getattr(col, "name", None) != "geom" or getattr(col, "table", None) is None:
        return None
    base = getattr(col.table, "original", col.table)
    name = getattr(base, "name", None)
    return f"rtree_{name}" if name in SPATIAL_TABLES else None


def create_spatial_indexes(conn: Connection) -> None:
    """R-trees over the bounding boxes of every geometry column, kept current by triggers."""
    for name in SPATIAL_TABLES:
        rt = f"rtree_{name}"
        box = "udp_minx(new.geom), udp_maxx(new.geom), udp_miny(new.geom), udp_maxy(new.geom)"
        for ddl in (
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {rt} USING rtree(id, minx, maxx, miny, maxy)",
            f"CREATE TRIGGER IF NOT EXISTS {rt}_insert AFTER INSERT ON {name} WHEN new.geom IS NOT NULL "
            f"BEGIN INSERT INTO {rt} VALUES (new.id, {box}); END",
            f"CREATE TRIGGER IF NOT EXISTS {rt}_update AFTER UPDATE OF geom ON {name} "
            f"BEGIN DELETE FROM {rt} WHERE id = old.id; "
            f"INSERT INTO {rt} SELECT new.id, {box} WHERE new.geom IS NOT NULL; END",
            f"CREATE TRIGGER IF NOT EXISTS {rt}_delete AFTER DELETE ON {name} "
            f"BEGIN DELETE FROM {rt} WHERE id = old.id; END",
            # the rows the R-tree does not hold: the nearest first puts them first (SQLite sorts a NULL first)
            f"CREATE INDEX IF NOT EXISTS {name}_no_geom ON {name} (id) WHERE geom IS NULL",
        ):
            conn.exec_driver_sql(ddl)


def _bound(i: int) -> Any:
    def run(wkb: bytes | None) -> float | None:
        return None if wkb is None else float(_geom(wkb).bounds[i])

    return run


PREDICATES = ("equals", "disjoint", "touches", "within", "overlaps", "crosses", "intersects", "contains")


def register_functions(conn: sqlite3.Connection) -> None:
    """Spatial SQL functions backed by shapely, named `udp_st_*`."""
    for name in PREDICATES:
        conn.create_function(f"udp_st_{name}", 2, _predicate(name), deterministic=True)
    conn.create_function("udp_st_distance", 2, _distance, deterministic=True)
    conn.create_function("udp_st_length", 1, _length, deterministic=True)
    conn.create_function("udp_st_relate", 3, _relate, deterministic=True)
    for i, name in enumerate(("minx", "miny", "maxx", "maxy")):
        conn.create_function(f"udp_{name}", 1, _bound(i), deterministic=True)


MMAP_BYTES = 32 * 1024 * 1024
CHECKPOINT_PAGES = 10_000


BUSY_TIMEOUT_S = 30  # how long a connection waits for another's write lock (the driver's busy handler)


def _write_ahead(cur: sqlite3.Cursor) -> None:
    """Put the file in WAL mode, waiting while another process holds it. Turning a new file to WAL takes its
    exclusive lock, and SQLite answers "database is locked" at once, without the busy handler, where waiting could
    deadlock: two nodes starting on a new file (tests/test_nodes.py), one of them ended at start-up in CI."""
    deadline = monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or monotonic() > deadline:
                raise
            sleep(0.05)


def create_sqlite_engine(url: str, json_serializer: Any, json_deserializer: Any,
                         statement_timeout: float | None = None) -> Engine:
    """An engine with WAL, foreign keys (for the spec's cascades) and the spatial functions; statements
    running longer than `statement_timeout` seconds are interrupted (QueryTimeout)."""
    memory = url in ("sqlite://", "sqlite:///:memory:")
    kwargs: dict[str, Any] = {}
    if memory:
        kwargs["poolclass"] = StaticPool
    def decode_json(value: Any) -> Any:
        # a column declared JSON has NUMERIC affinity in SQLite: a bare number (metadata: 5) comes back a number
        return value if isinstance(value, int | float) else json_deserializer(value)

    engine = create_engine(
        url,
        json_serializer=json_serializer,
        json_deserializer=decode_json,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # let SQLAlchemy, not the driver, issue BEGIN so that transactions are explicit
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            _write_ahead(cur)
            # the hottest pages (indexes' upper levels, the R-tree) read in place from the operating system's page
            # cache, which every worker shares. Small, since every mapped page a worker touched counts in its
            # RSS: 256 MiB made a worker of 160 MB hold 416; imports keep their features apart from the columns
            # filters read, so a scan is cheap without it (a CQL2 count over 300,000 polygons 27 ms mapped, 31 not)
            cur.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        cur.execute("PRAGMA synchronous=NORMAL")
        if not memory:
            # checkpoints every 40 MB of WAL, not every 4 MB (SQLite's 1,000 pages): a commit that runs one copies
            # the WAL into the database and syncs it while it holds the write lock, and a bulk import's Observations
            # touch pages all over the time index, each copied again at every checkpoint. 1,000 rows per request
            # into 250,000: 21,000 -> 30,600 rows/s (none at all: 32,000 until the WAL slowed every read, 22,600)
            cur.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            cur.execute(f"PRAGMA journal_size_limit={2 * CHECKPOINT_PAGES * 4096}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA case_sensitive_like=ON")  # CQL2's LIKE is (ILIKE is lower() LIKE lower())
        cur.close()
        register_functions(dbapi_conn)

    if not memory:
        path = url[len("sqlite:///"):]
        take_turns(engine, path)
        checkpoint_beside_writes(engine, path)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # on the driver's connection: SQLAlchemy's execution took 4 times as long as SQLite's BEGIN
        statement = "BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN"
        with driver(conn, statement) as db:
            db.execute(statement)

    if statement_timeout:
        _limit_statements(engine, statement_timeout)
    return engine


# how many virtual machine steps between looks at the clock: about a tenth of a millisecond of work
_PROGRESS_STEPS = 10_000


def _limit_statements(engine: Engine, seconds: float) -> None:
    """SQLite has no statement timeout: a progress handler interrupts a statement once its time is up.

    Each statement sets its connection's deadline as it starts (its rows are fetched under it too);
    COMMIT and ROLLBACK clear it, so that finishing a transaction is never interrupted.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, record: Any) -> None:
        deadline = [math.inf]
        record.info["udp_deadline"] = deadline
        # a true return value makes SQLite abandon the statement with "interrupted"
        dbapi_conn.set_progress_handler(lambda: monotonic() > deadline[0], _PROGRESS_STEPS)

    def _deadline(conn: Any) -> list[float] | None:
        return conn.connection.info.get("udp_deadline")

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, _cursor: Any, _statement: Any, _parameters: Any, _context: Any, _many: bool) -> None:
        deadline = _deadline(conn)
        if deadline is not None:
            deadline[0] = monotonic() + seconds

    def _clear(conn: Any) -> None:
        deadline = _deadline(conn)
        if deadline is not None:
            deadline[0] = math.inf

    event.listen(engine, "commit", _clear)
    event.listen(engine, "rollback", _clear)

    @event.listens_for(engine, "handle_error")
    def _timed_out(ctx: Any) -> Exception | None:
        exc = ctx.original_exception
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return QueryTimeout(seconds)
        return None


def observation_binder(dialect: Dialect) -> Bind:
    """`observations.Bind` for an engine's dialect: the driver's values of a row's columns, as its own statements
    would bind them (times as fixed-width text, JSON as text)."""
    obs = TABLES["observations"]
    processors = [obs.c[name].type.bind_processor(dialect) for name in OBSERVATION_COLUMNS]
    converted = [(k, p) for k, p in enumerate(processors, 1) if p is not None]
    columns = itemgetter(*OBSERVATION_COLUMNS)

    def bind(values: dict[str, Any]) -> list[Any]:
        out = [None, *columns(values)]
        for k, process in converted:
            if (value := out[k]) is not None:
                out[k] = process(value)
        return out

    return bind


def insert_observations(conn: Connection, rows: list[list[Any]]) -> list[int]:
    """Bulk insert of bound rows with ids assigned after the highest one (the write lock is held), many rows to a
    statement (`insert_many`), the versions raised once for it all."""
    obs = TABLES["observations"]
    start = conn.execute(select(func.coalesce(func.max(obs.c.id), 0))).scalar_one() + 1
    ids = list(range(start, start + len(rows)))
    if not rows:
        return ids
    for id_, row in zip(ids, rows, strict=True):
        row[0] = id_
    streams = {("datastreams", r[DATASTREAM_AT]) if r[DATASTREAM_AT] is not None
               else ("multi_datastreams", r[MULTI_AT]) for r in rows}
    with versions.raising_once(conn, streams):
        insert_many(conn, "observations", list(BOUND_COLUMNS), rows)
    return ids


def insert_many(conn: Connection, table: str, columns: list[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows into a table, as many to a statement as SQLite binds values (at most 1,000), bound by the driver.

    Not the driver's executemany: it lets go of the interpreter lock for every row and takes it back after, and while
    another thread of the process runs Python (a request being parsed, the broker) each taking waits for that thread's
    switch interval: 1,000 Observations took 2.6 s instead of 10 ms beside a busy thread, an import 18,000 rows/s
    instead of 431,000."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    quoted = ", ".join(f'"{c}"' for c in columns)
    into = f'INSERT INTO "{table}" ({quoted}) VALUES '
    with driver(conn, into + one) as db:
        per = max(1, min(1000, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)))
        full = into + ", ".join([one] * per)
        values: list[Any] = []
        count = 0
        for row in rows:
            values.extend(row)
            count += 1
            if count == per:
                db.execute(full, values)
                values, count = [], 0
        if count:
            db.execute(into + ", ".join([one] * count), values)
