"""CQL2 filters (the pygeofilter trees features.cql parses from cql2-text and cql2-json) rendered as one
SQLAlchemy Core condition over a table's columns, as sensorthings/query/sql.py renders the SensorThings tree:
one visitor, literals bound as parameters, property names only ever as Column objects.

What differs between databases is behind `SpatialSql`: PostGIS (`ST_*` with the GiST index) and SQLite
(the R-tree over each row's bounding box, then the store's shapely-backed `udp_st_*` functions on the rows the
box admits). Times compare natively on both: timestamptz on PostgreSQL, ISO text on SQLite (SQLAlchemy binds
UTC datetimes in the text's own format). LIKE is case-sensitive on both (the SQLite store's connections set
`case_sensitive_like`); `ilike` renders `lower() LIKE lower()` there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

import numpy as np
import shapely
from pygeofilter import ast
from pygeofilter.backends.evaluator import handle
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    String,
    TableClause,
    and_,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from features.cql import GEOMETRY, FilterError, LiteralEvaluator, utc_timestamp
from sensorthings.store.sqlite import BBOX_PREDICATES

NUMBER, TEXT, TIME, BOOL, GEOM, OTHER = "number", "text", "time", "bool", "geometry", "other"
GEOM_LITERAL = "geometry literal"  # an Operand whose `sql` is a CRS84 shapely geometry, bound by SpatialSql


def kind_of(sql_type: Any) -> str:
    """What a column holds, for typed comparisons and its JSON Schema type."""
    if isinstance(sql_type, Boolean):
        return BOOL
    if isinstance(sql_type, Integer | Numeric | Float):
        return NUMBER
    if isinstance(sql_type, DateTime | Date):
        return TIME
    if isinstance(sql_type, String):
        return TEXT
    return OTHER


class SpatialSql(Protocol):
    """What a database spells its own way: spatial predicates between the geometry column and a literal."""

    def predicate(self, name: str, column: ColumnElement, geom: shapely.Geometry) -> ColumnElement:
        """`name(column, geom)` for a CQL2 spatial predicate (INTERSECTS, DISJOINT, CONTAINS, …), the
        literal in CRS84."""
        ...

    def ranged(self, column: ColumnElement, low: float | None, high: float | None) -> ColumnElement:
        """The column as a range condition between low and high (numbers, times as POSIX seconds; equality when
        low == high) should name it: itself, or an expression no index serves when a scan is cheaper."""
        ...


@dataclass(frozen=True)
class PostgisSql:
    """PostGIS: literals transformed to the table's SRID, so that the GiST index answers the predicate."""

    srid: int

    def predicate(self, name: str, column: ColumnElement, geom: shapely.Geometry) -> ColumnElement:
        """`ST_<name>(column, geom)`, the literal transformed to the table's SRID."""
        lit = func.ST_GeomFromText(literal(geom.wkt, String), 4326)
        return getattr(func, "ST_" + name.capitalize())(
            column, lit if self.srid == 4326 else func.ST_Transform(lit, self.srid))

    def ranged(self, column: ColumnElement, low: float | None, high: float | None) -> ColumnElement:
        """The column itself: PostgreSQL's planner has histograms."""
        return column


# a range holding more of the table than this is scanned on SQLite: a row by index costs about ten read in order
INDEX_SHARE = 0.08


@dataclass(frozen=True)
class SqliteSql:
    """SQLite: the R-tree beside the table (`id` = the table's `rowid` column) admits the rows whose boxes meet
    the literal's; the exact bounds columns settle points; the shapely-backed `udp_st_*` functions the rest."""

    rtree: TableClause
    rowid: ColumnElement
    bounds: tuple[ColumnElement, ColumnElement, ColumnElement, ColumnElement]  # minx, miny, maxx, maxy
    points: bool  # every geometry is a point: a box test is exact
    # a column's values at the 0th, 1st, … 100th percentile (times as POSIX seconds), measured at import: SQLite's
    # planner has no histograms and takes an index for any range, even one holding half the table
    spread: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def ranged(self, column: ColumnElement, low: float | None, high: float | None) -> ColumnElement:
        """`+column` (no index) when the range (or the value, low == high) holds more than INDEX_SHARE of the
        rows, else the column."""
        points = self.spread.get(getattr(column, "name", ""))
        if not points:
            return column
        if low is not None and low == high:  # equality: the percentiles that hold the value (a column of few)
            share = sum(1 for p in points if p == low) / len(points)
        else:
            share = (_below(points, high) if high is not None else 1.0) - (_below(points, low) if low is not None
                                                                           else 0.0)
        return UnaryExpression(column, operator=custom_op("+"), type_=column.type) if share > INDEX_SHARE else column

    def predicate(self, name: str, column: ColumnElement, geom: shapely.Geometry) -> ColumnElement:
        """The R-tree's candidates, then the exact test."""
        exact = getattr(func, "udp_st_" + name.lower())(column, literal(shapely.to_wkb(geom), LargeBinary))
        if name.lower() not in BBOX_PREDICATES:
            return exact
        x0, y0, x1, y1 = (float(v) for v in geom.bounds)
        r = self.rtree.c
        near = self.rowid.in_(select(r.id).where(r.minx <= x1, r.maxx >= x0, r.miny <= y1, r.maxy >= y0))
        minx, miny, maxx, maxy = self.bounds
        # the R-tree keeps 32-bit bounds rounded outwards: the row's own bounds are exact
        boxed = and_(near, minx <= x1, maxx >= x0, miny <= y1, maxy >= y0)
        if self.points and name == "INTERSECTS" and shapely.equals(geom, shapely.box(x0, y0, x1, y1)):
            return boxed
        return and_(boxed, exact)


def _below(points: tuple[float, ...], value: float) -> float:
    """The share of values below `value`, from the percentiles."""
    return float(np.interp(value, points, np.linspace(0, 1, len(points))))


@dataclass(frozen=True)
class Operand:
    """A translated expression and what it holds."""

    sql: Any
    kind: str


_SPATIAL = {"INTERSECTS", "DISJOINT", "CONTAINS", "WITHIN", "TOUCHES", "CROSSES", "OVERLAPS", "EQUALS"}


class _SqlRenderer(LiteralEvaluator):
    """A filter tree as a boolean SQL condition; nulls select nothing, NOT included (as features.cql does)."""

    def __init__(self, columns: Mapping[str, Any], geometry: Any, spatial: SpatialSql,
                 filter_crs: int | None) -> None:
        self.columns = columns
        self.geom = geometry
        self.spatial = spatial
        self.filter_crs = filter_crs

    # -- logic -------------------------------------------------------------------------------------
    @handle(ast.Not)
    def not_(self, node: Any, sub: Any) -> Any:
        return _negate(self._cond(sub))

    @handle(ast.And, ast.Or)
    def combination(self, node: Any, lhs: Any, rhs: Any) -> Any:
        a, b = self._cond(lhs), self._cond(rhs)
        return and_(a, b) if node.op.value == "AND" else or_(a, b)

    # -- comparisons -------------------------------------------------------------------------------
    @handle(ast.Comparison, subclasses=True)
    def comparison(self, node: Any, lhs: Any, rhs: Any) -> Any:
        op = node.op.value
        a, b = self._pair(lhs, rhs)
        if op in ("=", "<", "<=", ">", ">=") and isinstance(lhs, Operand) and not isinstance(rhs, Operand):
            at = _position(rhs)
            if at is not None:
                a = self.spatial.ranged(a, None if op[0] == "<" else at, None if op[0] == ">" else at)
        ops = {"=": lambda: a == b, "<>": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
               ">": lambda: a > b, ">=": lambda: a >= b}
        if not isinstance(lhs, Operand) and not isinstance(rhs, Operand):
            try:
                return true() if ops[op]() else false()
            except TypeError as exc:
                raise FilterError(f"cannot compare with {op}: {exc}") from None
        return ops[op]()

    @handle(ast.Between)
    def between(self, node: Any, lhs: Any, low: Any, high: Any) -> Any:
        a, lo = self._pair(lhs, low)
        _, hi = self._pair(lhs, high)
        if isinstance(lhs, Operand) and not node.not_:
            a = self.spatial.ranged(a, _position(low), _position(high))
        out = and_(a >= lo, a <= hi)
        return _negate(out) if node.not_ else out

    @handle(ast.Like)
    def like(self, node: Any, lhs: Any) -> Any:
        col = self._operand(lhs)
        text = col.sql if col.kind == TEXT else cast(col.sql, String)
        pattern = _sql_pattern(node.pattern, node.wildcard, node.singlechar, node.escapechar or "\\")
        out = text.ilike(pattern, escape="\\") if node.nocase else text.like(pattern, escape="\\")
        return _negate(out) if node.not_ else out

    @handle(ast.In)
    def in_(self, node: Any, lhs: Any, *options: Any) -> Any:
        col = self._operand(lhs)
        out = col.sql.in_([self._pair(col, o)[1] for o in options]) if options else false()
        return _negate(out) if node.not_ else out

    @handle(ast.IsNull)
    def null(self, node: Any, lhs: Any) -> Any:
        col = self._operand(lhs)
        return col.sql.is_not(None) if node.not_ else col.sql.is_(None)

    # -- time --------------------------------------------------------------------------------------
    @handle(ast.TemporalPredicate, subclasses=True)
    def temporal(self, node: Any, lhs: Any, rhs: Any) -> Any:
        col = self._operand(lhs)
        if col.kind != TIME:
            raise FilterError("temporal operators need a time property")
        start, end = rhs if isinstance(rhs, tuple) else (rhs, rhs)
        lo = None if start in (None, "..") else _timestamp(start)
        hi = None if end in (None, "..") else _timestamp(end)
        c = col.sql
        op = node.op.name
        if op == "BEFORE":
            return c < lo if lo is not None else false()
        if op == "AFTER":
            return c > hi if hi is not None else false()
        if op == "DURING":
            return and_(c > lo if lo is not None else c.is_not(None), c < hi if hi is not None else true())
        if op in ("TEQUALS", "EQUALS"):
            return and_(c == lo, c == hi) if lo is not None and hi is not None else false()
        if op in ("INTERSECTS", "T_INTERSECTS"):
            return and_(c >= lo if lo is not None else c.is_not(None), c <= hi if hi is not None else true())
        raise FilterError(f"temporal operator T_{op} is not supported on time instants")

    # -- space -------------------------------------------------------------------------------------
    @handle(ast.SpatialComparisonPredicate, subclasses=True)
    def spatial_(self, node: Any, lhs: Any, rhs: Any) -> Any:
        name = node.op.name
        a, b = self._operand(lhs), self._operand(rhs)
        if a.kind == GEOM_LITERAL and b.kind == GEOM:  # the literal first: the converse predicate
            a, b, name = b, a, {"CONTAINS": "WITHIN", "WITHIN": "CONTAINS"}.get(name, name)
        if a.kind != GEOM or b.kind != GEOM_LITERAL or name not in _SPATIAL:
            raise FilterError("spatial operators compare the `geometry` property with a geometry literal")
        return self.spatial.predicate(name, a.sql, b.sql)

    @handle(ast.BBox)
    def bbox(self, node: Any, lhs: Any) -> Any:
        box = self.crs84(shapely.box(node.minx, node.miny, node.maxx, node.maxy))
        col = self._operand(lhs)
        if col.kind != GEOM:
            raise FilterError("BBOX takes the `geometry` property")
        return self.spatial.predicate("INTERSECTS", col.sql, box)

    # -- leaves ------------------------------------------------------------------------------------
    @handle(ast.Attribute)
    def attribute(self, node: Any) -> Any:
        if node.name == GEOMETRY and GEOMETRY not in self.columns:
            return Operand(self.geom, GEOM)
        col = self.columns.get(node.name)
        if col is None:  # features.request refused it already; never let a name reach SQL as text
            raise FilterError(f"unknown property {node.name!r} in filter")
        return Operand(col, kind_of(col.type))

    @handle(ast.Arithmetic, subclasses=True)
    def arithmetic(self, node: Any, lhs: Any, rhs: Any) -> Any:
        op = node.op.value
        for side in (lhs, rhs):
            if (isinstance(side, Operand) and side.kind != NUMBER) or (
                    not isinstance(side, Operand) and (isinstance(side, bool) or not isinstance(side, int | float))):
                raise FilterError(f"arithmetic ({op}) takes numbers")
        if not isinstance(lhs, Operand) and not isinstance(rhs, Operand):
            return {"+": lhs + rhs, "-": lhs - rhs, "*": lhs * rhs, "/": lhs / rhs if rhs else float("nan")}[op]
        a = lhs.sql if isinstance(lhs, Operand) else literal(lhs)
        b = rhs.sql if isinstance(rhs, Operand) else literal(rhs)
        if op == "/":  # true division, as the evaluator's: integer columns divide into fractions
            return Operand(cast(a, Float) / b, NUMBER)
        return Operand({"+": a + b, "-": a - b, "*": a * b}[op], NUMBER)

    @handle(ast.Function)
    def function(self, node: Any, *args: Any) -> Any:
        name = node.name.lower()
        if name == "bbox" and len(args) in (4, 6):
            return self.bbox_of(args)
        if name in ("lower", "casei", "upper") and len(args) == 1:
            arg = args[0]
            fn = func.upper if name == "upper" else func.lower
            if isinstance(arg, Operand):
                return Operand(fn(arg.sql if arg.kind == TEXT else cast(arg.sql, String)), TEXT)
            return str(arg).upper() if name == "upper" else str(arg).lower()
        raise FilterError(f"unknown function {node.name!r} (known: casei, lower, upper, bbox)")

    # -- helpers -----------------------------------------------------------------------------------
    def _geometry(self, geom: shapely.Geometry) -> Operand:
        return Operand(geom, GEOM_LITERAL)

    def _operand(self, value: Any) -> Operand:
        if isinstance(value, Operand):
            return value
        raise FilterError("this operator needs a property on its left side")

    def _cond(self, value: Any) -> Any:
        if isinstance(value, Operand) or not isinstance(value, ColumnElement):
            raise FilterError("AND, OR and NOT combine conditions, not values")
        return value

    def _pair(self, lhs: Any, rhs: Any) -> tuple[Any, Any]:
        """Both sides as SQL, a literal bound as the column's type (numbers, text, times)."""
        if any(isinstance(side, Operand) and side.kind in (GEOM, GEOM_LITERAL) for side in (lhs, rhs)):
            raise FilterError("geometries are compared with the spatial operators (S_INTERSECTS, …)")
        if isinstance(lhs, Operand) and isinstance(rhs, Operand):
            return lhs.sql, rhs.sql
        if isinstance(lhs, Operand):
            return lhs.sql, _bind(lhs.kind, rhs)
        if isinstance(rhs, Operand):
            return _bind(rhs.kind, lhs), rhs.sql
        return lhs, rhs


def _bind(kind: str, value: Any) -> Any:
    """A literal compared with a column of `kind`, refused where the evaluator refuses it."""
    if isinstance(value, ColumnElement):
        return value
    if kind == TIME and isinstance(value, date | str):
        return literal(_timestamp(value), DateTime(timezone=True))
    if kind == NUMBER and isinstance(value, str):
        raise FilterError(f"property compares numbers, got the text {value!r}")
    if kind == TEXT and isinstance(value, int | float) and not isinstance(value, bool):
        raise FilterError(f"property holds text, got the number {value!r} (quote it)")
    if isinstance(value, list | tuple | dict):
        raise FilterError(f"cannot compare a property with {value!r}")
    return literal(value)


def _position(value: Any) -> float | None:
    """A range bound as the percentiles hold it (a number, a time as POSIX seconds); None: not a literal."""
    if isinstance(value, bool) or isinstance(value, ColumnElement | Operand):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, date | str):
        try:
            return _timestamp(value).timestamp()
        except FilterError:
            return None
    return None


def _timestamp(value: Any) -> datetime:
    """A CQL2 time literal as an aware UTC datetime."""
    return utc_timestamp(value).to_pydatetime()


def _negate(cond: Any) -> Any:
    # a null property makes the inner condition NULL; NOT of it selects the row, as the evaluator's mask does
    return not_(func.coalesce(cond, false()))


def _sql_pattern(pattern: str, wildcard: str, single: str, escape: str) -> str:
    """A CQL2 LIKE pattern in SQL's spelling (`%`, `_`, backslash escapes)."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == escape:
            nxt = next(chars, "")
            out.append("\\" + nxt if nxt in ("%", "_", "\\") else nxt)
        elif ch == wildcard:
            out.append("%")
        elif ch == single:
            out.append("_")
        elif ch in ("%", "_", "\\"):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def render(node: ast.Node, columns: Mapping[str, Any], geometry: Any, spatial: SpatialSql,
           filter_crs: int | None = None) -> ColumnElement:
    """The SQL condition a filter stands for (FilterError when it cannot be rendered)."""
    renderer = _SqlRenderer(columns, geometry, spatial, filter_crs)
    try:
        out = renderer.evaluate(node)
    except FilterError:
        raise
    except (TypeError, ValueError, KeyError, NotImplementedError, AttributeError) as exc:
        raise FilterError(f"cannot evaluate the filter: {exc}") from None
    if isinstance(out, bool):
        return true() if out else false()
    return renderer._cond(out)
