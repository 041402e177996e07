"""The production store: PostgreSQL with PostGIS."""

from __future__ import annotations

import logging
from datetime import date, time
from operator import itemgetter
from typing import Any

import orjson
from psycopg.types.json import set_json_dumps
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Date,
    Engine,
    Float,
    Integer,
    Numeric,
    Time,
    case,
    cast,
    create_engine,
    event,
    func,
    literal,
)
from sqlalchemy.dialects.postgresql import JSONB, array
from sqlalchemy.exc import DBAPIError

from sensorthings.store.base import QueryTimeout
from sensorthings.store.driver import driver
from sensorthings.store.observations import BOUND_COLUMNS, OBSERVATION_COLUMNS, PG_DIALECT
from sensorthings.store.schema import TABLES, series_index_columns

_PARTS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute", "second": "second"}

log = logging.getLogger("sensorthings.store")


class PostgresDialect:
    """PostgreSQL + PostGIS spellings for the query translator."""

    name = "postgresql"

    def _path(self, path: tuple[str | int, ...]) -> Any:
        return array([str(p) for p in path])

    def json_text(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        return col.op("#>>")(self._path(path))

    def json_number(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        item = col.op("#>")(self._path(path))
        return case((func.jsonb_typeof(item) == "number", cast(col.op("#>>")(self._path(path)), Float)))

    def json_bool(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        item = col.op("#>")(self._path(path))
        return case((func.jsonb_typeof(item) == "boolean", cast(col.op("#>>")(self._path(path)), Boolean())))

    def json_value(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement:
        if not path:
            return col
        return col.op("#>", return_type=JSONB)(self._path(path))

    def date_part(self, part: str, expr: ColumnElement) -> ColumnElement:
        utc = func.timezone("UTC", expr)
        if part == "fractionalseconds":
            return func.extract("second", utc) - func.floor(func.extract("second", utc))
        return cast(func.floor(func.extract(_PARTS[part], utc)), Integer)

    def instant_text(self, expr: ColumnElement) -> ColumnElement:
        """A timestamp as times.format_instant writes it (UTC, `Z`, fractional seconds only as far as not zero),
        made in the database: a page of 1,440 rows spends milliseconds on it in Python."""
        full = func.to_char(func.timezone("UTC", expr), 'YYYY-MM-DD"T"HH24:MI:SS.US')
        return func.rtrim(func.rtrim(full, "0"), ".").concat("Z")

    def time_bucket(self, expr: ColumnElement, seconds: int) -> ColumnElement:
        return cast(func.floor(func.extract("epoch", expr) / seconds), BigInteger)

    def to_date(self, expr: ColumnElement) -> ColumnElement:
        return cast(func.timezone("UTC", expr), Date())

    def to_time(self, expr: ColumnElement) -> ColumnElement:
        return cast(func.date_trunc("second", func.timezone("UTC", expr)), Time())

    def date_literal(self, value: date) -> ColumnElement:
        return literal(value, Date())

    def time_literal(self, value: time) -> ColumnElement:
        return literal(value.replace(microsecond=0), Time())

    def geom_literal(self, wkt: str) -> ColumnElement:
        return func.ST_GeomFromText(wkt, 4326)

    def spatial(self, name: str, *args: ColumnElement) -> ColumnElement:
        return getattr(func, name)(*args)

    def near(self, col: ColumnElement, wkt: str, distance: float | ColumnElement) -> ColumnElement:
        return func.ST_DWithin(col, self.geom_literal(wkt), distance)

    def mod(self, a: ColumnElement, b: ColumnElement) -> ColumnElement:
        return func.mod(cast(a, Numeric), cast(b, Numeric))

    def instr(self, haystack: ColumnElement, needle: ColumnElement) -> ColumnElement:
        return func.strpos(haystack, needle)




def engine_url(url: str) -> str:
    """`postgresql://…` as SQLAlchemy's psycopg 3 URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {url}")


def libpq_url(url: str) -> str:
    """The store's URL as psycopg connects to it without SQLAlchemy (`postgresql://…`)."""
    return "postgresql://" + url.split("://", 1)[1]


def create_postgres_engine(url: str, json_serializer: Any, json_deserializer: Any, pool_size: int = 10,
                           statement_timeout: float | None = None) -> Engine:
    """An engine whose sessions run in UTC, with PostGIS made available; statements running longer than
    `statement_timeout` seconds are cancelled by the server (QueryTimeout)."""
    engine = create_engine(
        engine_url(url),
        json_serializer=json_serializer,
        json_deserializer=json_deserializer,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"options": "-c timezone=UTC"},
    )
    if statement_timeout:
        seconds = statement_timeout
        ms = max(1, round(statement_timeout * 1000))

        @event.listens_for(engine, "connect")
        def _limit(dbapi_conn: Any, _record: Any) -> None:
            # once per session as it connects (no round trip per request), and after SQLAlchemy's own
            # first-connect queries (type lookups), which are no client's request: under a tight limit they
            # failed the platform's start-up
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {ms}")
            dbapi_conn.commit()

        @event.listens_for(engine, "handle_error")
        def _timed_out(ctx: Any) -> Exception | None:
            # 57014 query_canceled: by statement_timeout here (nothing else in the platform cancels queries)
            if getattr(ctx.original_exception, "sqlstate", None) == "57014":
                return QueryTimeout(seconds)
            return None

    return engine


def create_spatial_indexes(conn: Connection) -> None:
    """GiST indexes over every geometry column (only those missing: even IF NOT EXISTS locks the table)."""
    have = {r[0] for r in conn.exec_driver_sql(
        "SELECT indexname FROM pg_indexes WHERE right(indexname, 10) = '_geom_gist'")}
    for name in ("locations", "features_of_interest", "datastreams", "multi_datastreams"):
        if f"{name}_geom_gist" not in have:
            conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name}_geom_gist ON {name} USING gist (geom)")


def warn_if_series_index_uncovered(conn: Connection) -> None:
    """Log how to rebuild the (Datastream, phenomenonTime) index of a database made before it held the results
    (schema.py): charts read a table page per row without it. Not rebuilt here: on a big table that takes minutes."""
    row = conn.exec_driver_sql(
        "SELECT i.indnatts - i.indnkeyatts FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'observations_datastream_time' AND c.relnamespace = current_schema()::regnamespace").first()
    if row is not None and row[0] == 0:
        keys, held = series_index_columns()
        log.warning(
            "observations_datastream_time holds no results: charts read a table page per Observation. Rebuild it "
            "once (no lock on writers): CREATE INDEX CONCURRENTLY observations_series ON observations "
            f"({', '.join(keys)}) INCLUDE ({', '.join(held)}); DROP INDEX CONCURRENTLY observations_datastream_time; "
            "ALTER INDEX observations_series RENAME TO observations_datastream_time;")


def require_phenomenon_time(conn: Connection) -> bool:
    """Make the Observations' phenomenonTime NOT NULL in a database made before the schema said so (a scan of the
    table, once); True when it is. Kept pages are extended by seeking on it (sensorthings.appended.seeks); a database
    holding an Observation without one (never written by this platform) keeps reading them whole, and says so."""
    nullable = conn.exec_driver_sql(
        "SELECT NOT a.attnotnull FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname = 'observations' AND c.relnamespace = current_schema()::regnamespace "
        "AND a.attname = 'phenomenon_time_start'").scalar()
    if not nullable:
        return True
    log.info("observations.phenomenon_time_start made NOT NULL (once: a scan of the table, writers wait for it)")
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("ALTER TABLE observations ALTER COLUMN phenomenon_time_start SET NOT NULL")
    except DBAPIError as exc:
        log.warning("observations.phenomenon_time_start stays nullable (%s): pages of Observations are read whole "
                    "after each write; give the Observations without a phenomenonTime one, then restart",
                    str(exc.orig).strip())
        return False
    return True


# COPY in PostgreSQL's binary format: the driver's own C code writes each value by its column's type, where the text
# format had it make and escape text (bench/pg_copy.py: a CreateObservations request of 1,000 rows 24.2 -> 20.9 ms,
# its CPU 15.2 -> 11.9 ms)
_COPY_OBSERVATIONS = "COPY observations (" + ", ".join(BOUND_COLUMNS) + ") FROM STDIN (FORMAT BINARY)"
_DRIVER_TYPES = {"BIGINT": "int8", "TIMESTAMP WITH TIME ZONE": "timestamptz", "SMALLINT": "int2", "FLOAT": "float8",
                 "TEXT": "text", "JSONB": "jsonb"}
# the columns' types as the schema makes them (a type not named above fails here, at import, not in a COPY)
_COPY_TYPES = [_DRIVER_TYPES[str(TABLES["observations"].c[c].type.compile(dialect=PG_DIALECT))]
               for c in BOUND_COLUMNS]


_COLUMNS = itemgetter(*OBSERVATION_COLUMNS)


def bind_observation(values: dict[str, Any]) -> list[Any]:
    """An Observation row's columns as the binary COPY takes them (`observations.Bind`): JSON as its value (the
    driver encodes it, with orjson)."""
    return [None, *_COLUMNS(values)]


def insert_observations(conn: Connection, rows: list[list[Any]]) -> list[int]:
    """Bulk insert of bound rows by COPY, the fastest way into PostgreSQL; the ids are drawn from the sequence first."""
    # the sequence looked up once (a subquery), not once per id: 1,000 ids 3.2 -> 0.7 ms
    ids = conn.exec_driver_sql(
        "SELECT array_agg(nextval((SELECT pg_get_serial_sequence('observations', 'id')::regclass))) "
        "FROM generate_series(1, %s)", (len(rows),)).scalar_one()
    with driver(conn, _COPY_OBSERVATIONS) as db, db.cursor() as cursor:
        set_json_dumps(orjson.dumps, context=cursor)
        with cursor.copy(_COPY_OBSERVATIONS) as copy:
            copy.set_types(_COPY_TYPES)
            for id_, row in zip(ids, rows, strict=True):
                row[0] = id_
                copy.write_row(row)
    return list(ids)
