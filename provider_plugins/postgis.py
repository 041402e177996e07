"""A department's PostGIS table served live: reflected once at start-up, every request rendered to one SQL
query on the department's own database (provider_plugins/sql_table.py), each feature's GeoJSON composed there
(`json_build_object` with `ST_AsGeoJSON`), so a row the department inserts, updates or deletes shows on the
next request.

For an unfiltered table above `ESTIMATE_ABOVE` rows (by `pg_class.reltuples`), counting would scan the whole
table on every page: the page then carries no `numberMatched` (OGC API Features makes it optional; clients page
by the `next` link) and `numberMatchedEstimate` with the planner's estimate instead, so that no client takes a
guess for a count.

No ETag is computed in advance (`etag()` is ""): the OGC API derives it from the body, so it changes exactly
when the answer does, and `Cache-Control: no-cache` makes every client ask again.

Vector tiles are made when asked, unless the collection says `changes: trigger`: the platform then logs where
the table's writes happen (provider_plugins/postgis_changes.py), and a tile is kept, and seeded ahead for a big
table, until a write reaches its region.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from sqlalchemy import Column, Connection, Engine, MetaData, Table, event, func, select, text
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from features import crs as crsmod
from features.cql_sql import TIME, PostgisSql, kind_of
from features.spec import CollectionSpec
from provider_plugins import postgis_changes
from provider_plugins.sql_table import Layout, SqlTableSource, unavailable
from provider_plugins.table import SourceError
from sensorthings.store.reasons import reason

ESTIMATE_ABOVE = 100_000  # rows (pg_class.reltuples) above which an unfiltered page's count is estimated
_ENGINES: dict[tuple[str, float | None], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str, statement_timeout: float | None) -> Engine:
    """One pool per department database (shared by its collections), with the statement timeout."""
    from sensorthings.store.postgres import create_postgres_engine

    with _ENGINES_LOCK:
        engine = _ENGINES.get((url, statement_timeout))
        if engine is None:
            engine = _ENGINES[(url, statement_timeout)] = create_postgres_engine(
                url, lambda v: orjson.dumps(v).decode(), orjson.loads, pool_size=2,
                statement_timeout=statement_timeout)
            event.listen(engine, "connect", _serving_session)
        return engine


def _serving_session(dbapi_conn: Any, _record: Any) -> None:
    # pages are small, indexed reads: launching parallel workers or JIT-compiling costs more than they do
    # (measured: 28 ms of a 40 ms bbox page went to starting a worker on two busy cores)
    with dbapi_conn.cursor() as cur:
        cur.execute("SET max_parallel_workers_per_gather = 0; SET jit = off")
    dbapi_conn.commit()


def dispose_engines() -> None:
    """Close every pool (a process that only checked the tables)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


class PostgisSource(SqlTableSource):
    """A PostGIS table (`postgresql://…#schema.table`) answering every query in SQL."""

    cache_control = "no-cache"

    def __init__(self, spec: CollectionSpec, statement_timeout: float | None = None) -> None:
        self.spec = spec
        self.describe(spec)
        url, _, qualified = spec.source.partition("#")
        schema, _, name = qualified.rpartition(".")
        self.schema, self.name = schema or "public", name
        self.where = f"{self.schema}.{self.name} in {url.rsplit('@', 1)[-1]}"
        self.engine = _engine(url, statement_timeout)
        try:
            self._reflect()
        except SourceError:
            raise
        except DBAPIError as exc:
            raise SourceError(spec.id, f"cannot read {self.where}: {str(exc.orig).strip()}") from None

    # -- start-up ------------------------------------------------------------------------------------
    def _reflect(self) -> None:
        spec = self.spec
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")  # start-up is no client's query
            try:
                self.table = Table(self.name, MetaData(), schema=self.schema, autoload_with=conn)
            except NoSuchTableError:
                raise SourceError(spec.id, f"no table {self.where}") from None
            found = conn.execute(text(
                "SELECT f_geometry_column, srid FROM geometry_columns WHERE f_table_schema = :s AND f_table_name = :t"),
                {"s": self.schema, "t": self.name}).first()
            if found is None:
                raise SourceError(spec.id, f"table {self.where} has no geometry column")
            self.geom = self.table.c[found[0]]
            srid = int(found[1] or 0)
            if not srid:  # a column without a type modifier (CREATE TABLE … AS): its rows say it
                srid = int(conn.execute(select(func.ST_SRID(self.geom)).where(self.geom.is_not(None))
                                        .limit(1)).scalar() or 0)
            if spec.crs:
                declared = crsmod.parse_crs(spec.crs)
                srid = srid or (declared or 4326)
            if not srid:
                raise SourceError(spec.id, f"table {self.where}: the geometry column has no SRID; declare `crs`")
            self.srid = srid
            self._storage_crs = None if srid == 4326 else srid
            # plain str: SQLAlchemy hands names out as its own str subclass, which YAML (pygeoapi) cannot write
            self.columns: dict[str, Column] = {str(c.name): c for c in self.table.columns if c.name != self.geom.name}
            key = self._key()
            self.pages_by_key = not key.nullable
            time = spec.time
            if time is not None and time not in self.columns:
                raise SourceError(spec.id, f"time column {time!r} not in {self.where}")
            if time is None:
                time = next((n for n, c in self.columns.items() if kind_of(c.type) == TIME), None)
            self._bbox = self._extent(conn)
            self._changes = ""
            if spec.changes == "trigger":
                self._changes = "log" + self._track(conn)
        self._layout = Layout(self.table, self.columns, key, self.geom, srid, time, PostgisSql(srid))

    def _track(self, conn: Connection) -> str:
        """The change log's triggers on the table, installed where missing (committed at once: every worker and
        the seeder see them); the log's identity."""
        try:
            postgis_changes.install(conn, self.schema, self.name, str(self.geom.name), self.srid)
        except DBAPIError as exc:
            raise SourceError(self.spec.id, f"changes: trigger needs the table's owner or the TRIGGER privilege and "
                                            f"CREATE on schema {self.schema} ({self.where}): "
                                            f"{reason(exc)}") from None
        conn.commit()
        return postgis_changes.log_identity(conn, self.schema)

    def _key(self) -> Column:
        if self.spec.id_column is not None:
            if self.spec.id_column not in self.columns:
                raise SourceError(self.id, f"id column {self.spec.id_column!r} not in {self.where} "
                                           f"(columns: {', '.join(self.columns)})")
            return self.columns[self.spec.id_column]
        pk = list(self.table.primary_key.columns)
        if len(pk) != 1:
            raise SourceError(self.id, f"table {self.where} has no single-column primary key: "
                                       "declare the key column with `id:`")
        return pk[0]

    def _extent(self, conn: Any) -> tuple[float, float, float, float] | None:
        box = func.ST_Transform(func.ST_SetSRID(func.ST_Extent(self.geom), self.srid), 4326)
        row = conn.execute(select(func.ST_XMin(box), func.ST_YMin(box), func.ST_XMax(box), func.ST_YMax(box))
                           .select_from(self.table)).first()
        return None if row is None or row[0] is None else tuple(float(v) for v in row)  # type: ignore[return-value]

    # -- what the OGC API asks ---------------------------------------------------------------------------
    @property
    def storage_crs(self) -> int | None:
        """The table's SRID (None: EPSG:4326, served as CRS84)."""
        return self._storage_crs

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The extent at start-up, in CRS84."""
        return self._bbox

    def etag(self) -> str:
        """None in advance: the body's hash is the ETag (the table changes under us)."""
        return ""

    def tiles_version(self) -> str:
        """With `changes: trigger`, the change log's identity (each tile has its region's version within it)."""
        return self._changes

    def region_version(self, box: tuple[float, float, float, float]) -> str:
        """The logged writes that met the box."""
        if not self._changes:
            return ""
        with self.connect() as conn:
            return postgis_changes.marker(conn, self.schema, self.name, box)

    def changes_seen(self) -> str:
        """The logged writes (`changes: trigger`), else the rows written to the table as PostgreSQL's statistics
        have counted them (they lag the commits by a second to ten, and start again after a statistics reset,
        which changes the marker too)."""
        if self._changes:
            with self.connect() as conn:
                return self._changes + ":" + postgis_changes.marker(conn, self.schema, self.name)
        try:
            with self.connect() as conn:
                row = conn.execute(text(
                    "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, COALESCE(stats_reset::text, '') "
                    "FROM pg_stat_user_tables s LEFT JOIN pg_stat_database d ON d.datname = current_database() "
                    "WHERE s.relid = CAST(:t AS regclass)"), {"t": f'"{self.schema}"."{self.name}"'}).first()
        except DBAPIError:
            return ""
        return "" if row is None else "s" + "-".join(str(v) for v in row)

    def layout(self, fresh: bool = False) -> Layout:
        """The table as reflected at start-up."""
        return self._layout

    def connect(self) -> Any:
        """A pooled connection to the department's database."""
        return self.engine.connect()

    def unfiltered_count(self, conn: Connection, layout: Layout) -> tuple[int, bool] | None:
        """The planner's row count when the table is big enough to estimate, else None (count it)."""
        rel = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                           {"t": f'"{self.schema}"."{self.name}"'}).scalar()
        return (int(rel), False) if rel is not None and rel > ESTIMATE_ABOVE else None

    def unavailable(self, exc: DBAPIError) -> Exception:
        """503 naming the collection and the table."""
        return unavailable(self.id, self.where, exc)


def check_table(spec: CollectionSpec) -> tuple[int, int | None, tuple[float, float, float, float] | None]:
    """`udp check` for a PostGIS collection: its row count, CRS and extent (SourceError when it cannot serve)."""
    source = PostgisSource(spec)
    with source.engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(source.table)).scalar_one())
    return count, source.storage_crs, source.bbox

