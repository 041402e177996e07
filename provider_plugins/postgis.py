"""A department's PostGIS table served live: reflected once at start-up, every request rendered to one SQL
query on the department's own database, each feature's GeoJSON composed there (`json_build_object` with
`ST_AsGeoJSON`), so a row the department inserts, updates or deletes shows on the next request.

`numberMatched` is exact (`count(*)`) whenever the request filters (bbox, datetime, `prop=value`, filter)
or the table is small. For an unfiltered table above `ESTIMATE_ABOVE` rows (by `pg_class.reltuples`),
counting would scan the whole table on every page (pygeoapi #1969, FROST-Server #2096): the page then
carries no `numberMatched` (OGC API Features makes it optional; clients page by the `next` link) and
`numberMatchedEstimate` with the planner's estimate instead, so that no client takes a guess for a count.

Next links page by key (keyset paging), so a deep page costs what the first does: each page is ordered by the
sort keys then the table's key, and its `next` link carries a `cursor` holding the last row's sort-key values
and key (as PostgreSQL's text of each); the next page is the rows after that one in the same order, nulls last
as the ORDER BY puts them, ascending and descending keys mixed as asked. Without sortby that is `key > last`,
an index range; with ascending sort keys that are NOT NULL columns it is one row comparison
`(a, b, key) > (x, y, last)`, an index range on an index over them; otherwise (descending keys, nullable
columns) it is the expanded comparison (a > x OR a IS NULL OR a = x AND (…)), which the planner may not serve
from an index. A key column that may hold NULL (a declared `id:`) pages by `offset` instead.
`offset` still works when a client sends it; its pages' next links carry `offset` on.

No ETag is computed in advance (`etag()` is ""): the OGC API derives it from the body, so it changes exactly
when the answer does, and `Cache-Control: no-cache` makes every client ask again.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    ColumnElement,
    Date,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    and_,
    cast,
    event,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.exc import DataError, DBAPIError, NoSuchTableError

from features import crs as crsmod
from features.cql import FilterError
from features.cql_sql import BOOL, NUMBER, TEXT, TIME, PostgisSql, kind_of, render
from features.request import ItemsQuery, ParamError, encode_cursor
from features.source import FeatureSource, Page, SourceUnavailable
from features.spec import CollectionSpec
from provider_plugins.table import SourceError

ESTIMATE_ABOVE = 100_000  # rows (pg_class.reltuples) above which an unfiltered page's count is estimated
_JSON_TYPES = {NUMBER: "number", TEXT: "string", TIME: "string", BOOL: "boolean"}
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


class PostgisSource(FeatureSource):
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
            self.key = self._key()
            self.pages_by_key = not self.key.nullable
            self._time = spec.time
            if self._time is not None and self._time not in self.columns:
                raise SourceError(spec.id, f"time column {self._time!r} not in {self.where}")
            if self._time is None:
                self._time = next((n for n, c in self.columns.items() if kind_of(c.type) == TIME), None)
            self._bbox = self._extent(conn)
        self.spatial = PostgisSql(srid)

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
    def fields(self) -> dict[str, dict[str, str]]:
        """The table's columns and their JSON Schema types."""
        return {n: {"type": _JSON_TYPES.get(kind_of(c.type), "string")} | (
            {"format": "date-time"} if n == self._time else {}) for n, c in self.columns.items()}

    @property
    def storage_crs(self) -> int | None:
        """The table's SRID (None: EPSG:4326, served as CRS84)."""
        return self._storage_crs

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The extent at start-up, in CRS84."""
        return self._bbox

    @property
    def time_column(self) -> str | None:
        """The time property."""
        return self._time

    def etag(self) -> str:
        """None in advance: the body's hash is the ETag (the table changes under us)."""
        return ""

    def search(self, q: ItemsQuery) -> Page:
        """One page, counted exactly or estimated (see the module's docstring)."""
        where = self._where(q)
        try:
            with self.engine.connect() as conn:
                filtered = where is not True
                cond = where if filtered else true()
                estimate = None if filtered or q.hits else self._estimate(conn)
                if estimate is None:
                    matched = int(conn.execute(select(func.count()).select_from(self.table).where(cond)).scalar_one())
                else:
                    matched = estimate
                if q.hits:
                    return Page(matched, [])
                order = [(self.columns[s.property].desc() if s.descending else self.columns[s.property].asc())
                         .nulls_last() for s in q.sortby]
                sort_cols = [self.columns[s.property] for s in q.sortby]
                if q.after is not None:
                    cond = and_(cond, self._after(q, q.after))
                # the page's keys first, the JSON only for them: PostgreSQL computes the select list of the
                # rows an OFFSET skips too. One row more than the page tells whether a next page exists.
                marks = [cast(c, Text).label(f"m{i}") for i, c in enumerate([*sort_cols, self.key])]
                keyset = self.pages_by_key and not q.offset
                page = (select(self.key.label("k"), *marks).where(cond).order_by(*order, self.key)
                        .limit(q.limit + keyset).offset(q.offset).subquery())
                stmt = (select(self._feature(q), *(page.c[m.name] for m in marks))
                        .select_from(self.table.join(page, self.key == page.c.k)).order_by(*order, self.key))
                rows = conn.execute(stmt).all()
        except DBAPIError as exc:
            if isinstance(exc, DataError) and q.after is not None:  # a cursor made by hand, not by a next link
                raise ParamError("cursor: its values do not fit this collection's columns") from None
            raise self._unavailable(exc) from None
        cursor = None
        if keyset and len(rows) > q.limit:
            rows = rows[:q.limit]
            cursor = encode_cursor(q.sortby, tuple(rows[-1][1:]))
        return Page(matched, [r[0].encode() for r in rows], exact=estimate is None, next_cursor=cursor)

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One feature by its key."""
        value: Any = fid
        if kind_of(self.key.type) == NUMBER:
            try:
                value = int(fid)
            except ValueError:
                return None
        try:
            with self.engine.connect() as conn:
                found = conn.execute(select(self._feature(q)).select_from(self.table)
                                     .where(self.key == value)).scalar()
        except DBAPIError as exc:
            raise self._unavailable(exc) from None
        return None if found is None else found.encode()

    # -- SQL -------------------------------------------------------------------------------------------
    def _unavailable(self, exc: DBAPIError) -> Exception:
        if isinstance(exc, DataError):
            return exc  # the request's fault: the OGC API answers 400
        return SourceUnavailable(f"collection {self.id!r}: {self.where} cannot be read now "
                                 f"({str(exc.orig).strip().splitlines()[0]})")

    def _after(self, q: ItemsQuery, after: tuple[str | None, ...]) -> ColumnElement:
        """The rows after the cursor's row in the page order (sort keys nulls last, then the key ascending)."""
        *marks, key_mark = after
        cond: ColumnElement = self.key > cast(literal(key_mark, Text), self.key.type)
        if not q.sortby:
            return cond  # an index range on the key
        cols = [self.columns[s.property] for s in q.sortby]
        if not any(s.descending for s in q.sortby) and not any(c.nullable for c in cols) and None not in marks:
            # one row comparison, an index range on an index over (sort keys…, key)
            return tuple_(*cols, self.key) > tuple_(*(cast(literal(m, Text), c.type) for m, c in
                                                     zip(after, [*cols, self.key], strict=True)))
        for s, mark in zip(reversed(q.sortby), reversed(marks), strict=True):
            col = self.columns[s.property]
            if mark is None:  # a null sorts last: only the nulls that follow by the later keys come after it
                cond = and_(col.is_(None), cond)
                continue
            value = cast(literal(mark, Text), col.type)
            beyond = col < value if s.descending else col > value
            cond = or_(beyond, col.is_(None), and_(col == value, cond))
        return cond

    def _estimate(self, conn: Any) -> int | None:
        """The planner's row count when the table is big enough to estimate, else None (count it)."""
        rel = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                           {"t": f'"{self.schema}"."{self.name}"'}).scalar()
        return int(rel) if rel is not None and rel > ESTIMATE_ABOVE else None

    def _where(self, q: ItemsQuery) -> Any:
        """The query's conditions as one SQL condition; True when it has none."""
        parts: list[ColumnElement] = []
        if q.bbox is not None:
            env = func.ST_MakeEnvelope(*q.bbox, 4326)
            parts.append(func.ST_Intersects(self.geom, env if self.srid == 4326 else func.ST_Transform(env, self.srid)))
        if q.time is not None and self._time is not None:
            col = self.columns[self._time]
            lo, hi = q.time
            parts.append(col.is_not(None))
            if lo is not None:
                parts.append(col >= lo.to_pydatetime())
            if hi is not None:
                parts.append(col <= hi.to_pydatetime())
        for name, value in q.equals:
            col = self.columns[name]
            if kind_of(col.type) == NUMBER:
                try:
                    parts.append(col == float(value))
                except ValueError:
                    raise ParamError(f"{name}: {value!r} is not a number") from None
            else:
                parts.append((col if kind_of(col.type) == TEXT else cast(col, String)) == value)
        if q.filter is not None:
            try:
                parts.append(render(q.filter, self.columns, self.geom, self.spatial, q.filter_crs))
            except FilterError as exc:
                raise ParamError(f"filter: {exc}") from None
        return and_(*parts) if parts else True

    def _feature(self, q: ItemsQuery) -> ColumnElement:
        """Each row's GeoJSON Feature as text, composed by the database."""
        names = list(q.properties) if q.properties is not None else list(self.columns)
        pairs: list[Any] = []
        for n in names:
            pairs += [cast(literal(n), Text), _json_value(self.columns[n])]
        # json_build_object takes at most 100 arguments: wider rows join objects (jsonb, keys then sorted)
        chunks = [func.json_build_object(*pairs[i:i + 100]) for i in range(0, len(pairs), 100)] or [
            func.json_build_object()]
        props = chunks[0] if len(chunks) == 1 else _jsonb_merge(chunks)
        geometry: Any = null()
        if not q.skip_geometry:
            g: Any = self.geom
            target = q.crs or 4326
            if target != self.srid:
                g = func.ST_Transform(g, target)
            if crsmod.northing_first(q.crs):  # the output CRS's own axis order (OGC API Features Part 2)
                g = func.ST_FlipCoordinates(g)
            geometry = cast(func.ST_AsGeoJSON(g), JSON)
        return cast(func.json_build_object(
            cast(literal("type"), Text), cast(literal("Feature"), Text),
            cast(literal("id"), Text), self.key,
            cast(literal("geometry"), Text), geometry,
            cast(literal("properties"), Text), props), Text)


def _jsonb_merge(chunks: list[Any]) -> Any:
    out = cast(chunks[0], JSONB)
    for c in chunks[1:]:
        out = out.op("||")(cast(c, JSONB))
    return out


def _json_value(col: Column) -> Any:
    """A column as its GeoJSON property: times as RFC 3339 UTC text, as the file sources write them."""
    if isinstance(col.type, DateTime):
        utc = func.timezone("UTC", col) if col.type.timezone else col
        return func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    if isinstance(col.type, Date):
        return func.to_char(col, 'YYYY-MM-DD"T00:00:00Z"')
    return col


def check_table(spec: CollectionSpec) -> tuple[int, int | None, tuple[float, float, float, float] | None]:
    """`udp check` for a PostGIS collection: its row count, CRS and extent (SourceError when it cannot serve)."""
    source = PostgisSource(spec)
    with source.engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(source.table)).scalar_one())
    return count, source.storage_crs, source.bbox

