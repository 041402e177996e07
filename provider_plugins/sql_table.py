"""A feature table in a SQL database served by rendering each request to SQL: the base of the live PostGIS
sources and of the departmental files imported into the platform's store.

Every request is one `Layout` (the table's columns, key, geometry and what the database can do with them)
turned into a count and a page query. `numberMatched` is exact whenever the request filters; an unfiltered
count is the subclass's to give (the row count an import recorded, or the planner's estimate of a big live
table: counting it on every page is the classic slow query, pygeoapi #1969, FROST-Server #2096).

Next links page by key (keyset paging), so a deep page costs what the first does: each page is ordered by the
sort keys then the table's key, and its `next` link carries a `cursor` holding the last row's sort-key values
and key (as the database's text of each); the next page is the rows after that one in the same order, nulls
last as the ORDER BY puts them, ascending and descending keys mixed as asked. Without sortby that is
`key > last`, an index range; with ascending sort keys that are NOT NULL columns it is one row comparison
`(a, b, key) > (x, y, last)`; otherwise (descending keys, nullable columns) it is the expanded comparison
(a > x OR a IS NULL OR a = x AND (…)). A key column that may hold NULL pages by `offset` instead. `offset` still
works when a client sends it; its pages' next links carry `offset` on.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.exc import DataError, DBAPIError

from features import crs as crsmod
from features.cql import FilterError
from features.cql_sql import BOOL, NUMBER, TEXT, TIME, SpatialSql, kind_of, render
from features.request import ItemsQuery, ParamError, encode_cursor
from features.source import DatabaseTable, FeatureSource, Page, SourceUnavailable, TileFeatures, geometry_kind
from sensorthings.store.reasons import reason

EXTENT = 4096  # MVT's grid, as features.tiles encodes it
DETAILED = 20_000  # rows a generalised tile is made of one by one; past them the database counts them per cell
_JSON_TYPES = {NUMBER: "number", TEXT: "string", TIME: "string", BOOL: "boolean"}


@dataclass(frozen=True)
class Layout:
    """What a request needs of the table: its columns by property name, key, geometry and spatial dialect."""

    table: Table
    columns: dict[str, Column]  # property name → column (names never reach SQL as text)
    key: Column
    geom: Column
    srid: int  # of the geometry column
    time: str | None  # the property `datetime=` filters on
    spatial: SpatialSql
    # each row's Feature pre-encoded in CRS84 with every property; in a side table keyed by the sequence column
    encoded: Column | None = None
    integer: frozenset[str] = frozenset()  # number properties that hold integers (JSON Schema "integer")
    rows: int | None = None  # the row count of a table that cannot change (an import)
    # the page order's last column (the key when None); `dense`: it numbers the rows 1…rows, so that an
    # unfiltered page at `offset` is the rows after that number, an index range instead of a walk past them
    order: Column | None = None
    dense: bool = False
    scope: ColumnElement | None = None  # a condition every row shown meets (a view of the table: public feedback)

    def scoped(self, cond: Any) -> Any:
        """`cond` and the view's own condition."""
        return cond if self.scope is None else and_(self.scope, cond)

    @property
    def sequence(self) -> Column:
        """The column that orders rows after the sort keys (and pages by key)."""
        return self.key if self.order is None else self.order

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """The queryables and their JSON Schema types."""
        return {n: {"type": "integer" if n in self.integer else _JSON_TYPES.get(kind_of(c.type), "string")} | (
            {"format": "date-time"} if n == self.time else {}) for n, c in self.columns.items()}


class SqlTableSource(FeatureSource):
    """Search and features for a `Layout` in SQL; subclasses say where the layout comes from."""

    postgis = True  # the database composes GeoJSON (PostGIS); False: SQLite, composed here from the stored rows

    @abstractmethod
    def layout(self, fresh: bool = False) -> Layout:
        """The table as it is now (`fresh`: look again, a request on the one known failed)."""

    @abstractmethod
    def connect(self) -> Any:
        """A context manager giving a read connection."""

    @abstractmethod
    def unfiltered_count(self, conn: Connection, layout: Layout) -> tuple[int, bool] | None:
        """The row count of the whole table and whether it is exact; None: count the rows."""

    @abstractmethod
    def unavailable(self, exc: DBAPIError) -> Exception:
        """What a database error means for the client (SourceUnavailable: 503 naming the collection)."""

    # -- what the OGC API asks ---------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """The table's columns and their JSON Schema types."""
        return self.layout().fields

    @property
    def time_column(self) -> str | None:
        """The time property."""
        return self.layout().time

    def search(self, q: ItemsQuery) -> Page:
        """One page, counted exactly or as the subclass says for an unfiltered table."""
        return self._retry(lambda layout: self._search(layout, q))

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One feature by its key."""
        return self._retry(lambda layout: self._feature(layout, fid, q))

    def vector_tile(self, layer: str, tms_id: str, z: int, row: int, col: int, buffer: int,
                    cell: int | None = None, properties: tuple[str, ...] | None = None) -> bytes | None:
        """PostGIS: a WebMercatorQuad tile made by `ST_AsMVT` over the rows meeting it: every one of them, or with
        `cell` generalised as features.tiles does it (the points in a cell of that many pixels as one with
        `point_count`; past DETAILED rows every row counted per cell by its centre)."""
        if not self.postgis or tms_id != "WebMercatorQuad":
            return None
        return self._retry(lambda layout: self._mvt(layout, layer, z, row, col, buffer, cell, properties))

    def database_table(self) -> DatabaseTable | None:
        """PostGIS: the table as the OGC API shows it (properties under their names), read in place."""
        if not self.postgis:
            return None
        return self._retry(self._database_table)

    def _database_table(self, t: Layout) -> DatabaseTable:
        from sqlalchemy.dialects import postgresql

        stmt = select(t.key.label("udp_id"), *(c.label(n) for n, c in t.columns.items()), t.geom.label("udp_geom"))
        if t.scope is not None:
            stmt = stmt.where(t.scope)
        sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        with self.connect() as conn:
            url = conn.engine.url.set(drivername="postgresql")
            found = conn.execute(select(func.GeometryType(t.geom)).where(t.geom.is_not(None)).limit(1)).scalar()
        return DatabaseTable(url.render_as_string(hide_password=False), sql, t.srid, geometry_kind(found),
                             str(found or "").upper().startswith("MULTI"))

    def _mvt(self, t: Layout, layer: str, z: int, row: int, col: int, buffer: int, cell: int | None,
             properties: tuple[str, ...] | None) -> bytes:
        envelope = func.ST_TileEnvelope(z, col, row)
        box = envelope if t.srid == 3857 else func.ST_Transform(envelope, t.srid)
        where = t.scoped(t.geom.op("&&")(box))
        numeric_key = kind_of(t.key.type) == NUMBER
        # the id column: MVT ids are unsigned integers; a text key stays an attribute (`id`)
        key = t.key.label("udp_fid") if numeric_key else cast(t.key, Text).label("id")
        props = [(func.to_char(c, 'YYYY-MM-DD"T"HH24:MI:SS') if isinstance(c.type, DateTime | Date) else c).label(n)
                 for n, c in t.columns.items()
                 if (n != "id" or numeric_key) and (properties is None or n in properties)]
        shape = func.ST_AsMVTGeom(_in_srid(t, 3857), envelope, EXTENT, buffer, True).label("udp_geom")
        with self.connect() as conn:
            if cell is None:
                rows = select(key, *props, shape).where(where).subquery("t")
            elif conn.execute(select(func.count()).select_from(
                    select(literal(1)).where(where).limit(DETAILED + 1).subquery())).scalar_one() > DETAILED:
                rows = self._mvt_counted(t, envelope, where, buffer, EXTENT // cell)
            else:
                rows = _mvt_clustered(select(key, *props, shape).where(where).subquery("r"), cell)
            args = [literal_column("t"), literal(layer), EXTENT, literal("udp_geom")]
            if "udp_fid" in rows.c:  # counted cells have no id
                args.append(literal("udp_fid"))
            found = conn.execute(select(func.ST_AsMVT(*args)).select_from(rows)).scalar()
        return bytes(found or b"")

    def _mvt_counted(self, t: Layout, envelope: Any, where: Any, buffer: int, cells: int) -> Any:
        """Every row counted per cell of a cells × cells grid over the tile, by its box's centre in CRS84."""
        e = func.ST_Transform(envelope, 4326)
        x, y, cx, cy = self._centres(t, (func.ST_XMin(e), func.ST_YMin(e), func.ST_XMax(e), func.ST_YMax(e)), cells)
        centre = func.ST_Transform(func.ST_SetSRID(func.ST_MakePoint(func.avg(x), func.avg(y)), 4326), 3857)
        return (select(func.count().label("point_count"),
                       func.ST_AsMVTGeom(centre, envelope, EXTENT, buffer, True).label("udp_geom"))
                .where(where).group_by(cx, cy).subquery("t"))

    def tile_features(self, bbox: tuple[float, float, float, float], limit: int,
                      cells: int | None = None) -> TileFeatures:
        """The rows meeting a CRS84 box, read as columns (no GeoJSON made and parsed again); with `cells`, more
        than DETAILED of them are counted per cell of a cells × cells grid over the box instead, in the
        database."""
        return self._retry(lambda layout: self._tile_features(layout, bbox, limit, cells))

    def _retry(self, run: Callable[[Layout], Any]) -> Any:
        """Run against the current layout; once more if the table moved under the request (a re-import)."""
        layout = self.layout()
        try:
            return run(layout)
        except DBAPIError as exc:
            fresh = self.layout(fresh=True)
            if fresh is layout:
                raise self.unavailable(exc) from None
            try:
                return run(fresh)
            except DBAPIError as again:
                raise self.unavailable(again) from None

    def _search(self, t: Layout, q: ItemsQuery) -> Page:
        where = self._where(t, q)
        seq = t.sequence
        keyset = self.pages_by_key and not q.offset and not seq.nullable
        with self.connect() as conn:
            filtered = where is not True
            cond = where if filtered else true()
            offset = q.offset
            if t.dense and not filtered and not q.sortby and q.after is None and offset:
                cond, offset = seq > offset, 0
            known = None if filtered else self.unfiltered_count(conn, t)
            if known is None or (q.hits and not known[1]):  # resulttype=hits asks for the exact count
                matched, exact = int(conn.execute(select(func.count()).select_from(t.table).where(cond))
                                     .scalar_one()), True
            else:
                matched, exact = known
            if q.hits:
                return Page(matched, [], exact=exact)
            order = [(t.columns[s.property].desc() if s.descending else t.columns[s.property].asc())
                     .nulls_last() for s in q.sortby]
            sort_cols = [t.columns[s.property] for s in q.sortby]
            if q.after is not None:
                try:
                    cond = and_(cond, self._after(t, q, q.after))
                except ValueError:
                    raise ParamError("cursor: its values do not fit this collection's columns") from None
            # the page's keys first, the JSON only for them: the database computes the select list of the
            # rows an OFFSET skips too. One row more than the page tells whether a next page exists.
            marks = [cast(c, Text).label(f"m{i}") for i, c in enumerate([*sort_cols, seq])]
            page = (select(seq.label("k"), *marks).where(cond).order_by(*order, seq)
                    .limit(q.limit + keyset).offset(offset).subquery())
            shown, encode = self._rendering(t, q)
            stmt = (select(*shown, *(page.c[m.name] for m in marks))
                    .select_from(_with_encoded(t, t.table.join(page, seq == page.c.k), shown)).order_by(*order, seq))
            try:
                rows = conn.execute(stmt).all()
            except DataError:
                if q.after is not None:  # a cursor made by hand, not by a next link
                    raise ParamError("cursor: its values do not fit this collection's columns") from None
                raise
        cursor = None
        if keyset and len(rows) > q.limit:
            rows = rows[:q.limit]
            cursor = encode_cursor(q.sortby, tuple(rows[-1][len(shown):]))
        return Page(matched, encode(rows), exact=exact, next_cursor=cursor)

    def _tile_features(self, t: Layout, bbox: tuple[float, float, float, float], limit: int,
                       cells: int | None) -> TileFeatures:
        where = self._where(t, ItemsQuery(bbox=bbox))
        names = list(t.columns)
        first = min(limit, DETAILED) if cells else limit
        wkb = func.ST_AsBinary(_in_srid(t, 4326)) if self.postgis else t.geom
        stmt = select(t.key, wkb, *t.columns.values()).where(where)
        with self.connect() as conn:
            rows = conn.execute(stmt.limit(first + 1)).all()
            if cells and len(rows) > first:
                return self._counted(conn, t, where, bbox, cells)
        shown = rows[:limit]
        geoms = shapely.from_wkb([None if r[1] is None else bytes(r[1]) for r in shown]) if shown else np.array([])
        return TileFeatures([r[0] for r in shown], np.asarray(geoms, dtype=object),
                            [dict(zip(names, r[2:], strict=True)) for r in shown], complete=len(rows) <= limit)

    def _counted(self, conn: Connection, t: Layout, where: Any, bbox: tuple[float, float, float, float],
                 cells: int) -> TileFeatures:
        """Each grid cell's rows as one point: the mean of their centres, the smallest key, `point_count`."""
        x, y, cx, cy = self._centres(t, bbox, cells)
        rows = conn.execute(select(func.min(t.key), func.count(), func.avg(x), func.avg(y)).where(where)
                            .group_by(cx, cy)).all()
        return TileFeatures([r[0] for r in rows], shapely.points([(r[2], r[3]) for r in rows]) if rows
                            else np.array([]), [{"point_count": int(r[1])} for r in rows])

    def _centres(self, t: Layout, box: tuple[Any, Any, Any, Any], cells: int) -> tuple[Any, Any, Any, Any]:
        """Each row's box centre in CRS84 (x, y) and its column and row of a cells × cells grid over `box` (left,
        bottom, right, top: numbers or SQL)."""
        if self.postgis:
            g = _in_srid(t, 4326)
            x, y = (func.ST_XMin(g) + func.ST_XMax(g)) / 2, (func.ST_YMin(g) + func.ST_YMax(g)) / 2
        else:
            minx, miny, maxx, maxy = t.spatial.bounds  # type: ignore[attr-defined]
            x, y = (minx + maxx) / 2, (miny + maxy) / 2
        left, bottom, right, top = box
        # floor on PostgreSQL (its cast to integer rounds); SQLite's cast truncates, as floor does from 0 on
        whole = func.floor if self.postgis else (lambda v: cast(v, Integer))
        return x, y, whole((x - left) * cells / (right - left)), whole((y - bottom) * cells / (top - bottom))

    def _feature(self, t: Layout, fid: str, q: ItemsQuery) -> bytes | None:
        value: Any = fid
        if kind_of(t.key.type) == NUMBER:
            try:
                value = int(fid)
            except ValueError:
                return None
        shown, encode = self._rendering(t, q)
        with self.connect() as conn:
            rows = conn.execute(select(*shown).select_from(_with_encoded(t, t.table, shown))
                                .where(t.scoped(t.key == value))).all()
        return encode(rows)[0] if rows else None

    # -- SQL -------------------------------------------------------------------------------------------
    def _after(self, t: Layout, q: ItemsQuery, after: tuple[str | None, ...]) -> ColumnElement:
        """The rows after the cursor's row in the page order (sort keys nulls last, then the sequence ascending)."""
        *marks, key_mark = after
        seq = t.sequence
        cond: ColumnElement = seq > self._mark(key_mark, seq)
        if not q.sortby:
            return cond  # an index range on the key
        cols = [t.columns[s.property] for s in q.sortby]
        if not any(s.descending for s in q.sortby) and not any(c.nullable for c in cols) and None not in marks:
            # one row comparison, an index range on an index over (sort keys…, key)
            return tuple_(*cols, seq) > tuple_(*(self._mark(m, c) for m, c in
                                                zip(after, [*cols, seq], strict=True)))
        for s, mark in zip(reversed(q.sortby), reversed(marks), strict=True):
            col = t.columns[s.property]
            if mark is None:  # a null sorts last: only the nulls that follow by the later keys come after it
                cond = and_(col.is_(None), cond)
                continue
            value = self._mark(mark, col)
            beyond = col < value if s.descending else col > value
            cond = or_(beyond, col.is_(None), and_(col == value, cond))
        return cond

    def _mark(self, mark: str | None, col: Column) -> ColumnElement:
        """A cursor value (the database's text of a column's value) as that column's value."""
        if self.postgis:
            return cast(literal(mark, Text), col.type)
        # SQLite: an untyped text parameter takes the column's affinity as it is compared (numbers convert,
        # time text compares as text), exactly as the text came out
        if kind_of(col.type) == NUMBER:
            float(mark or "")  # a cursor made by hand: ValueError, a 400
        return literal(mark)

    def _where(self, t: Layout, q: ItemsQuery) -> Any:
        """The query's conditions as one SQL condition; True when it has none."""
        parts: list[ColumnElement] = [] if t.scope is None else [t.scope]
        if q.bbox is not None:
            parts.append(t.spatial.predicate("INTERSECTS", t.geom, shapely.box(*q.bbox)))
        if q.time is not None and t.time is not None:
            col = t.columns[t.time]
            lo, hi = q.time
            parts.append(col.is_not(None))
            if lo is not None:
                parts.append(col >= lo.to_pydatetime())
            if hi is not None:
                parts.append(col <= hi.to_pydatetime())
        for name, value in q.equals:
            col = t.columns[name]
            if kind_of(col.type) == NUMBER:
                try:
                    parts.append(col == float(value))
                except ValueError:
                    raise ParamError(f"{name}: {value!r} is not a number") from None
            elif kind_of(col.type) == BOOL:
                parts.append(col == (value.lower() == "true") if value.lower() in ("true", "false") else false())
            else:
                parts.append((col if kind_of(col.type) == TEXT else cast(col, String)) == value)
        if q.filter is not None:
            try:
                parts.append(render(q.filter, t.columns, t.geom, t.spatial, q.filter_crs))
            except FilterError as exc:
                raise ParamError(f"filter: {exc}") from None
        return and_(*parts) if parts else True

    # -- GeoJSON ---------------------------------------------------------------------------------------
    def _rendering(self, t: Layout, q: ItemsQuery) -> tuple[Sequence[Any], Callable[[Sequence[Any]], list[bytes]]]:
        """What to select for each feature and how the rows become encoded Features."""
        if t.encoded is not None and q.crs is None and q.properties is None and not q.skip_geometry:
            return [t.encoded], _first_encoded
        if self.postgis:
            return [_composed(t, q)], _first_encoded
        return self.compose(t, q)

    def compose(self, t: Layout, q: ItemsQuery) -> tuple[Sequence[Any], Callable[[Sequence[Any]], list[bytes]]]:
        """A database that cannot compose GeoJSON: the columns to select and the encoder (SQLite sources)."""
        raise NotImplementedError


def wkb_geojson(wkbs: Sequence[Any], q: ItemsQuery) -> list[bytes]:
    """Stored WKB geometries as GeoJSON in the query's CRS (null for none, or all with skipGeometry)."""
    if q.skip_geometry:
        return [b"null"] * len(wkbs)
    geoms = shapely.from_wkb(np.array(wkbs, dtype=object))
    if q.crs is not None:
        geoms = crsmod.transform(geoms, None, q.crs)
    return [b"null" if g is None else g.encode() for g in shapely.to_geojson(geoms)]


def _in_srid(t: Layout, srid: int) -> Any:
    """The table's geometry in `srid` (PostGIS)."""
    return t.geom if t.srid == srid else func.ST_Transform(t.geom, srid)


def _mvt_clustered(rows: Any, cell: int) -> Any:
    """The rows of a tile (their MVT geometry `udp_geom`) with the points in one cell of `cell` pixels as one: the
    first's properties and place when alone, else their centre and `point_count`; other geometries each alone."""
    numbered = select(*rows.c, func.row_number().over().label("udp_rn")).where(rows.c.udp_geom.is_not(None)) \
        .subquery("n")
    n = numbered.c
    group = case((func.GeometryType(n.udp_geom) == "POINT",
                  func.concat(func.floor(func.ST_X(n.udp_geom) / cell), ":", func.floor(func.ST_Y(n.udp_geom) / cell))),
                 else_=cast(n.udp_rn, Text))
    single = func.count() == 1
    kept = []
    for c in n:
        if c.name in ("udp_geom", "udp_rn"):
            continue
        value = (func.bool_or(c) if isinstance(c.type, Boolean) else
                 func.min(c) if kind_of(c.type) == NUMBER else func.min(cast(c, Text)))
        kept.append(case((single, value)).label(c.name))
    collected = func.ST_Collect(n.udp_geom)
    shape = case((single, func.ST_GeometryN(collected, 1)), else_=func.ST_Centroid(collected)).label("udp_geom")
    return select(*kept, case((~single, func.count())).label("point_count"), shape).group_by(group).subquery("t")


def _with_encoded(t: Layout, source: Any, shown: Sequence[Any]) -> Any:
    """The FROM clause: the table (joined to the page), and the encoded features' side table when selected."""
    side = t.encoded.table if t.encoded is not None and t.encoded.table is not t.table else None
    if side is None or not any(c is t.encoded for c in shown):
        return source
    return source.join(side, side.primary_key.columns[0] == t.sequence)


def _first_encoded(rows: Sequence[Any]) -> list[bytes]:
    return [r[0].encode() for r in rows]


def _composed(t: Layout, q: ItemsQuery) -> ColumnElement:
    """Each row's GeoJSON Feature as text, composed by PostgreSQL (`json_build_object`, `ST_AsGeoJSON`)."""
    names = list(q.properties) if q.properties is not None else list(t.columns)
    pairs: list[Any] = []
    for n in names:
        pairs += [cast(literal(n), Text), _json_value(t.columns[n])]
    # json_build_object takes at most 100 arguments: wider rows join objects (jsonb, keys then sorted)
    chunks = [func.json_build_object(*pairs[i:i + 100]) for i in range(0, len(pairs), 100)] or [
        func.json_build_object()]
    props = chunks[0] if len(chunks) == 1 else _jsonb_merge(chunks)
    geometry: Any = null()
    if not q.skip_geometry:
        g: Any = t.geom
        target = q.crs or 4326
        if target != t.srid:
            g = func.ST_Transform(g, target)
        if crsmod.northing_first(q.crs):  # the output CRS's own axis order (OGC API Features Part 2)
            g = func.ST_FlipCoordinates(g)
        geometry = cast(func.ST_AsGeoJSON(g), JSON)
    return cast(func.json_build_object(
        cast(literal("type"), Text), cast(literal("Feature"), Text),
        cast(literal("id"), Text), t.key,
        cast(literal("geometry"), Text), geometry,
        cast(literal("properties"), Text), props), Text)


def _jsonb_merge(chunks: list[Any]) -> Any:
    out = cast(chunks[0], JSONB)
    for c in chunks[1:]:
        out = out.op("||")(cast(c, JSONB))
    return out


def _json_value(col: Column) -> Any:
    """A column as its GeoJSON property: times as RFC 3339 UTC text, as the imported features hold them."""
    if isinstance(col.type, DateTime):
        utc = func.timezone("UTC", col) if col.type.timezone else col
        return func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    if isinstance(col.type, Date):
        return func.to_char(col, 'YYYY-MM-DD"T00:00:00Z"')
    return col


def unavailable(collection: str, where: str, exc: DBAPIError) -> Exception:
    """A database error as the OGC API answers it: the request's own fault (bad data for a column) as it is
    (400), anything else a 503 naming the collection and what cannot be read."""
    if isinstance(exc, DataError):
        return exc
    return SourceUnavailable(f"collection {collection!r}: {where} cannot be read now "
                             f"({reason(exc)})")
