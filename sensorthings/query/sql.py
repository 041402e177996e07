"""The one translator from the parsed query tree to SQLAlchemy Core expressions.

Each store supplies an `SqlDialect` for the few things SQLite and PostgreSQL spell differently
(JSON paths, date parts, spatial functions); everything else is shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    ColumnElement,
    FromClause,
    String,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.expression import BooleanClauseList, ColumnClause, Exists

from sensorthings import results
from sensorthings.model import EntityType, Kind, Nav, NavKind, target_of
from sensorthings.query.tree import BinaryOp, Call, Expr, Literal, OrderBy, Path, QueryError, UnaryOp
from sensorthings.store.schema import TABLES, UtcDateTime

JSON_PATH_ITEM = re.compile(r"^(?P<name>[^\[\]]*)(?P<idx>(\[\d+\])*)$")


class SqlDialect(Protocol):
    """What a store must render in its own SQL."""

    name: str

    def json_text(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement: ...
    def json_number(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement: ...
    def json_bool(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement: ...
    def json_value(self, col: ColumnElement, path: tuple[str | int, ...]) -> ColumnElement: ...
    def date_part(self, part: str, expr: ColumnElement) -> ColumnElement: ...
    def time_bucket(self, expr: ColumnElement, seconds: int) -> ColumnElement:
        """Which `seconds`-long interval from 1970-01-01T00:00Z a time falls in (an integer, floored)."""
    def to_date(self, expr: ColumnElement) -> ColumnElement: ...
    def to_time(self, expr: ColumnElement) -> ColumnElement: ...
    def date_literal(self, value: date) -> ColumnElement: ...
    def time_literal(self, value: time) -> ColumnElement: ...
    def geom_literal(self, wkt: str) -> ColumnElement: ...
    def spatial(self, name: str, *args: ColumnElement) -> ColumnElement: ...
    def near(self, col: ColumnElement, wkt: str, distance: float | ColumnElement) -> ColumnElement:
        """A condition every row of `col` within `distance` of the geometry `wkt` meets (others may too), in a form
        the spatial index answers; the distance itself is compared besides."""
    def instr(self, haystack: ColumnElement, needle: ColumnElement) -> ColumnElement: ...
    def mod(self, a: ColumnElement, b: ColumnElement) -> ColumnElement: ...


# Value types the translator tracks to choose the right column and cast
NUMBER, STRING, BOOL, DATETIME, DATE, TIME, DURATION, GEOMETRY, JSONPATH, RESULT, INTERVAL, NULL = (
    "number", "string", "bool", "datetime", "date", "time", "duration", "geometry", "json", "result",
    "interval", "null",
)


@dataclass
class Val:
    """A translated operand: its SQL and what kind of value it is."""

    type: str
    sql: Any = None  # ColumnElement, or for INTERVAL a (start, end) pair
    json_col: Any = None  # JSONPATH: the column
    path: tuple[str | int, ...] = ()  # JSONPATH: the path inside it
    table: Any = None  # RESULT: the observations table alias
    const: Any = None  # literals kept as Python values for folding
    is_const: bool = False


@dataclass
class _Scope:
    """The joins a filter's navigation paths need, shared by identical path prefixes."""

    root: FromClause
    froms: list[FromClause] = field(default_factory=list)
    conds: list[ColumnElement] = field(default_factory=list)
    aliases: dict[tuple[str, ...], FromClause] = field(default_factory=dict)
    # the steps out of the root: (the condition joining it, the root's column, the other side's, through a link table)
    hops: list[tuple[ColumnElement, ColumnElement, ColumnElement, bool]] = field(default_factory=list)
    # each link table's join to its target: (the condition, the link's column, the target's id)
    links: list[tuple[ColumnElement, ColumnElement, ColumnElement]] = field(default_factory=list)
    near: bool = False  # a spatial predicate against a constant geometry: the spatial index finds few rows


def json_path(segments: tuple[str, ...], pos: int) -> tuple[str | int, ...]:
    """`('a', 'list[0]')` → `('a', 'list', 0)`."""
    out: list[str | int] = []
    for seg in segments:
        m = JSON_PATH_ITEM.match(seg)
        if not m:
            raise QueryError(f"bad JSON path segment {seg!r}", "$filter", pos)
        if m.group("name"):
            out.append(m.group("name"))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group("idx")))
    return tuple(out)


class Translator:
    """Turns filter and orderby trees over one entity type into SQLAlchemy expressions."""

    def __init__(self, dialect: SqlDialect, now: datetime | None = None) -> None:
        self.dialect = dialect
        self.now = now or datetime.now(UTC)

    # -- public -------------------------------------------------------------------------------
    def where(self, entity: EntityType, table: FromClause, expr: Expr, option: str = "$filter") -> ColumnElement:
        """The boolean SQL for a `$filter` over `table` (an alias of the entity's table)."""
        self.option = option
        scope = _Scope(table)
        val = self._expr(entity, scope, expr)
        cond = self._as_bool(val, expr)
        if not scope.froms:
            return cond
        if len(scope.hops) == 1 and (scope.hops[0][3] or (scope.near and not _visits_observations(scope))):
            # one step out of the root, through a link table (Things' Locations) or to an area: the root's ids among
            # those the rest finds, the terms of the root alone beside it. As a correlated EXISTS SQLite's planner
            # probed the link's key (Thing, Location) for each Location the R-tree let through, for every Thing (the
            # Things in an area of a city of 50,000: 612 ms against 3.7), and visited every row for an area found
            # through another table (the Datastreams there through their Things: 12 ms, 88 in the OGC API's
            # latest values with their count), where the area's few rows lead to theirs. Not where Observations are
            # read: the rows of an area's Observations, sorted for a page, may be millions. PostgreSQL plans both
            # forms as one semi-join
            joined, outer, inner, _link = scope.hops[0]
            rest = [c for c in scope.conds if c is not joined]
            terms = list(cond.clauses) if isinstance(cond, BooleanClauseList) and cond.operator is operators.and_ \
                else [cond]
            own = [t for t in terms if not any(_reads(t, f) for f in scope.froms)]
            away = [t for t in terms if not any(t is o for o in own)]
            if not any(_reads(c, scope.root) for c in (*rest, *away)):
                found = outer.in_(select(inner).select_from(*scope.froms).where(and_(*rest, *away)))
                return and_(*own, found) if own else found
        conds = scope.conds
        if self.dialect.name == "sqlite" and scope.links:
            # visited from each root row, a link is followed from its own side (Thing, then Location): SQLite's planner
            # otherwise probed the link's key for every Location the R-tree let through (Datastreams in an area:
            # their Things' Locations), for every row. `+ 0` keeps the link's target column from serving as a key
            guarded = {id(c): link + 0 == target for c, link, target in scope.links}
            conds = [guarded.get(id(c), c) for c in conds]
        return Exists(select(literal(1)).select_from(*scope.froms).where(and_(*conds, cond)))

    def order(self, entity: EntityType, table: FromClause,
              orderby: tuple[OrderBy, ...]) -> list[tuple[ColumnElement, bool]]:
        """ORDER BY keys for `$orderby` as (expression, descending); the caller adds the id as a tiebreak."""
        self.option = "$orderby"
        keys: list[tuple[ColumnElement, bool]] = []
        for item in orderby:
            scope = _Scope(table)
            val = self._expr(entity, scope, item.expr)
            cols = self._sort_columns(val, item.expr)
            if scope.froms:
                if any(_is_many_path(entity, item.expr)):
                    raise QueryError("cannot order by a property of a set", "$orderby", item.expr.pos)
                cols = [
                    select(c).select_from(*scope.froms).where(and_(*scope.conds)).limit(1).scalar_subquery()
                    for c in cols
                ]
            # a key without a column orders nothing, and PostgreSQL refuses a bare constant in ORDER BY
            keys.extend((c, item.descending) for c in cols if _references_a_column(c))
        return keys

    # -- expressions ----------------------------------------------------------------------------
    def _err(self, message: str, node: Any) -> QueryError:
        return QueryError(message, self.option, getattr(node, "pos", None))

    def _expr(self, entity: EntityType, scope: _Scope, node: Expr) -> Val:
        if isinstance(node, Literal):
            return self._literal(node)
        if isinstance(node, Path):
            return self._path(entity, scope, node)
        if isinstance(node, UnaryOp):
            inner = self._expr(entity, scope, node.operand)
            if node.op == "not":
                return Val(BOOL, not_(self._as_bool(inner, node.operand)))
            if inner.is_const and isinstance(inner.const, int | float):
                return self._const(-inner.const, NUMBER)
            return Val(NUMBER, -self._as_number(inner, node.operand))
        if isinstance(node, BinaryOp):
            return self._binary(entity, scope, node)
        if isinstance(node, Call):
            return self._call(entity, scope, node)
        raise self._err("unsupported expression", node)

    def _const(self, value: Any, type_: str) -> Val:
        sql = None
        if type_ == NUMBER or type_ == STRING or type_ == BOOL:
            sql = literal(value)
        elif type_ == DATETIME:
            sql = literal(value, UtcDateTime())
        elif type_ == DATE:
            sql = self.dialect.date_literal(value)
        elif type_ == TIME:
            sql = self.dialect.time_literal(value)
        elif type_ == NULL:
            sql = null()
        return Val(type_, sql, const=value, is_const=True)

    def _literal(self, node: Literal) -> Val:
        kind = node.kind
        if kind in ("int", "float"):
            return self._const(node.value, NUMBER)
        if kind == "string":
            return self._const(node.value, STRING)
        if kind == "bool":
            return self._const(node.value, BOOL)
        if kind == "null":
            return self._const(None, NULL)
        if kind == "datetime":
            return self._const(node.value, DATETIME)
        if kind == "date":
            return self._const(node.value, DATE)
        if kind == "time":
            return self._const(node.value, TIME)
        if kind == "duration":
            return Val(DURATION, const=node.value, is_const=True)
        if kind == "interval":
            start, end = node.value  # type: ignore[misc]
            return Val(INTERVAL, (literal(start, UtcDateTime()), literal(end, UtcDateTime())),
                       const=node.value, is_const=True)
        if kind == "geometry":
            return Val(GEOMETRY, self.dialect.geom_literal(str(node.value)), const=node.value, is_const=True)
        raise self._err(f"unsupported literal {kind}", node)

    def _path(self, entity: EntityType, scope: _Scope, node: Path) -> Val:
        segs = node.segments
        table = scope.root
        current = entity
        prefix: tuple[str, ...] = ()
        i = 0
        while i < len(segs) and segs[i] in current.nav_by_name:
            nav = current.nav_by_name[segs[i]]
            # Datastream/id on an Observation is the Observation's own column: no join
            if nav.kind is NavKind.FK and i + 2 == len(segs) and segs[i + 1] in ("id", "@iot.id"):
                return Val(NUMBER, table.c[nav.column])
            prefix = prefix + (segs[i],)
            if prefix not in scope.aliases:
                scope.aliases[prefix] = self._join(scope, table, nav)
            table = scope.aliases[prefix]
            current = target_of(nav)
            i += 1
        if i == len(segs):
            raise self._err(f"{'/'.join(segs)} is a navigation property, not a value", node)
        name = segs[i]
        rest = segs[i + 1:]
        if name in ("id", "@iot.id"):
            if rest:
                raise self._err("id has no sub-properties", node)
            return Val(NUMBER, table.c.id)
        prop = current.prop_by_name.get(name)
        if prop is None:
            raise self._err(f"{current.name} has no property {name!r}", node)
        if prop.kind is Kind.JSON or (rest and prop.kind in (Kind.GEOJSON, Kind.RESULT)):
            col_name = "result_json" if prop.kind is Kind.RESULT else prop.column
            if not rest and prop.kind is Kind.JSON:
                return Val(JSONPATH, json_col=table.c[col_name], path=())
            return Val(JSONPATH, json_col=table.c[col_name], path=json_path(rest, node.pos))
        if rest:
            raise self._err(f"{current.name}.{name} has no sub-properties", node)
        if prop.kind is Kind.TEXT:
            return Val(STRING, table.c[prop.column])
        if prop.kind is Kind.TIME:
            return Val(DATETIME, table.c[prop.column])
        if prop.kind in (Kind.INTERVAL, Kind.TIME_OR_INTERVAL):
            return Val(INTERVAL, (table.c[f"{prop.column}_start"],
                                  func.coalesce(table.c[f"{prop.column}_end"], table.c[f"{prop.column}_start"])))
        if prop.kind is Kind.GEOJSON:
            return Val(GEOMETRY, table.c.geom)
        if prop.kind is Kind.RESULT:
            return Val(RESULT, table=table)
        raise self._err(f"cannot filter on {name}", node)

    def _join(self, scope: _Scope, src: FromClause, nav: Nav) -> FromClause:
        target = TABLES[target_of(nav).table].alias()
        scope.froms.append(target)
        if nav.kind is NavKind.FK:
            outer, inner = src.c[nav.column], target.c.id
        elif nav.kind is NavKind.REVERSE:
            outer, inner = src.c.id, target.c[nav.column]
        else:
            link = TABLES[nav.link_table].alias()
            scope.froms.append(link)
            reached = link.c[nav.link_target] == target.c.id
            scope.conds.append(reached)
            scope.links.append((reached, link.c[nav.link_target], target.c.id))
            outer, inner = src.c.id, link.c[nav.link_self]
        joined = inner == outer
        scope.conds.append(joined)
        if src is scope.root:
            scope.hops.append((joined, outer, inner, nav.kind is NavKind.LINK))
        return target

    # -- coercions ------------------------------------------------------------------------------
    def _as_bool(self, val: Val, node: Any) -> ColumnElement:
        if val.type == BOOL:
            if val.is_const:
                return true() if val.const else false()
            return val.sql
        if val.type == JSONPATH:
            return self.dialect.json_bool(val.json_col, val.path) == true()
        if val.type == RESULT:
            t = val.table
            return and_(t.c.result_type == results.BOOL, t.c.result_number == 1)
        raise self._err("expected a boolean expression", node)

    def _as_number(self, val: Val, node: Any) -> ColumnElement:
        if val.type == NUMBER:
            return val.sql
        if val.type == JSONPATH:
            return self.dialect.json_number(val.json_col, val.path)
        if val.type == RESULT:
            return val.table.c.result_number
        raise self._err(f"expected a number, found {val.type}", node)

    def _as_string(self, val: Val, node: Any) -> ColumnElement:
        if val.type == STRING:
            return val.sql
        if val.type == JSONPATH:
            return self.dialect.json_text(val.json_col, val.path)
        if val.type == RESULT:
            return val.table.c.result_string
        raise self._err(f"expected a string, found {val.type}", node)

    def _as_time(self, val: Val, node: Any, which: int = 0) -> ColumnElement:
        if val.type == DATETIME:
            return val.sql
        if val.type == INTERVAL:
            return val.sql[which]
        raise self._err(f"expected a time, found {val.type}", node)

    def _sort_columns(self, val: Val, node: Any) -> list[ColumnElement]:
        if val.type == INTERVAL:
            # the start alone, so that the (Datastream, phenomenonTime) index serves the order
            return [val.sql[0]]
        if val.type == RESULT:
            t = val.table
            return [t.c.result_number, t.c.result_string]
        if val.type == JSONPATH:
            return [self.dialect.json_value(val.json_col, val.path)]
        if val.type == GEOMETRY:
            raise self._err("cannot order by a geometry", node)
        return [val.sql]

    # -- operators ------------------------------------------------------------------------------
    def _binary(self, entity: EntityType, scope: _Scope, node: BinaryOp) -> Val:
        op = node.op
        if op in ("and", "or"):
            left = self._as_bool(self._expr(entity, scope, node.left), node.left)
            right = self._as_bool(self._expr(entity, scope, node.right), node.right)
            return Val(BOOL, and_(left, right) if op == "and" else or_(left, right))
        left = self._expr(entity, scope, node.left)
        right = self._expr(entity, scope, node.right)
        if op in ("add", "sub", "mul", "div", "mod"):
            return self._arith(op, left, right, node)
        compared = self._compare(op, left, right, node)
        near = self._near(entity, scope, node)
        return Val(BOOL, compared if near is None else and_(near, compared))

    def _near(self, entity: EntityType, scope: _Scope, node: BinaryOp) -> ColumnElement | None:
        """For `geo.distance(a location, a constant geometry) lt (le) a number` (either way round): a condition the
        spatial index answers, which every row within that distance meets. "Near me" visited every row: 50,000
        Locations, 312 ms on SQLite, 30-136 on PostgreSQL."""
        op, call, bound = node.op, node.left, node.right
        if isinstance(bound, Call):
            op, call, bound = _FLIP.get(op, op), bound, call
        if op not in ("lt", "le"):
            return None
        if not (isinstance(bound, Literal) and bound.kind in ("int", "float")):
            return None
        if (found := distance_to_constant(call)) is None:
            return None
        path, wkt = found
        col = self._expr(entity, scope, path)
        if col.type != GEOMETRY:
            return None
        scope.near = True
        # no distance is below zero (and PostGIS refuses a negative one): the comparison answers for those
        return self.dialect.near(col.sql, wkt, max(float(bound.value), 0.0))  # type: ignore[arg-type]

    def _arith(self, op: str, left: Val, right: Val, node: BinaryOp) -> Val:
        if left.is_const and right.is_const:
            folded = _fold(op, left.const, right.const)
            if folded is not None:
                value, type_ = folded
                return self._const(value, type_)
        if DURATION in (left.type, right.type) or DATETIME in (left.type, right.type):
            raise self._err("time arithmetic is supported on constants only (now() sub duration'P1D')", node)
        a = self._as_number(left, node.left)
        b = self._as_number(right, node.right)
        if op == "add":
            return Val(NUMBER, a + b)
        if op == "sub":
            return Val(NUMBER, a - b)
        if op == "mul":
            return Val(NUMBER, a * b)
        if op == "div":
            return Val(NUMBER, a / b)
        return Val(NUMBER, self.dialect.mod(a, b))

    def _compare(self, op: str, left: Val, right: Val, node: BinaryOp) -> ColumnElement:
        # put the typed side first so that a literal on either side reads the same
        if left.is_const and not right.is_const:
            left, right = right, left
            op = _FLIP.get(op, op)
        if right.type == NULL:
            sql = self._null_side(left, node)
            return sql.is_(None) if op == "eq" else sql.is_not(None) if op == "ne" else self._bad_null(node)
        if left.type == INTERVAL or right.type == INTERVAL:
            return self._compare_times(op, left, right, node)
        if left.type == RESULT or left.type == JSONPATH:
            if right.type == NUMBER:
                return _cmp(op, self._as_number(left, node.left), right.sql)
            if right.type == BOOL:
                rs = right.sql if not right.is_const else literal(bool(right.const), Boolean)
                if left.type == RESULT:
                    t = left.table
                    cond = and_(t.c.result_type == results.BOOL,
                                _cmp(op if op in ("eq", "ne") else "eq", t.c.result_number,
                                     literal(1.0 if right.const else 0.0)))
                    return cond if op != "ne" else not_(cond)
                return _cmp(op, self.dialect.json_bool(left.json_col, left.path), rs)
            if right.type in (STRING, RESULT, JSONPATH):
                return _cmp(op, self._as_string(left, node.left), self._as_string(right, node.right))
            if right.type == DATETIME:
                return _cmp(op, cast(self._as_string(left, node.left), String), cast(right.sql, String))
            raise self._err(f"cannot compare {left.type} with {right.type}", node)
        if right.type in (RESULT, JSONPATH):
            return self._compare(_FLIP.get(op, op), right, left, node)
        if left.type == NUMBER or right.type == NUMBER:
            return _cmp(op, self._as_number(left, node.left), self._as_number(right, node.right))
        if left.type == DATETIME and right.type == DATETIME:
            return _cmp(op, left.sql, right.sql)
        if left.type == right.type and left.type in (STRING, BOOL, DATE, TIME):
            return _cmp(op, left.sql, right.sql)
        if {left.type, right.type} == {DATETIME, STRING}:
            raise self._err("compare times with a time literal, not a string", node)
        raise self._err(f"cannot compare {left.type} with {right.type}", node)

    def _null_side(self, val: Val, node: Any) -> ColumnElement:
        if val.type == JSONPATH:
            return self.dialect.json_value(val.json_col, val.path)
        if val.type == INTERVAL:
            return val.sql[0]
        if val.type == RESULT:
            t = val.table
            return case((t.c.result_type == results.JSON, t.c.result_json), else_=literal(1))
        return val.sql

    def _bad_null(self, node: Any) -> ColumnElement:
        raise self._err("null can only be compared with eq or ne", node)

    def _compare_times(self, op: str, left: Val, right: Val, node: BinaryOp) -> ColumnElement:
        # an interval is before a time when it ends before it, after it when it starts after it
        ls, le = left.sql if left.type == INTERVAL else (self._as_time(left, node), self._as_time(left, node))
        rs, re_ = right.sql if right.type == INTERVAL else (self._as_time(right, node), self._as_time(right, node))
        if op == "eq":
            return and_(ls == rs, le == re_)
        if op == "ne":
            return or_(ls != rs, le != re_)
        # an interval never ends before it starts (sensorthings.times): a start before (after) the time is implied,
        # and said as well, so that the (Datastream, phenomenonTime) index bounds the scan on both sides (a day's
        # chart read the Datastream's whole rest from the day on without it: 190 ms of 100 million rows)
        if op == "lt":
            return and_(ls < rs, le < rs) if left.type == INTERVAL else le < rs
        if op == "le":
            return and_(ls <= rs, le <= rs) if left.type == INTERVAL else le <= rs
        if op == "gt":
            return and_(ls > rs, ls > re_) if right.type == INTERVAL else ls > re_
        return and_(ls >= rs, ls >= re_) if right.type == INTERVAL else ls >= re_

    # -- functions ------------------------------------------------------------------------------
    def _call(self, entity: EntityType, scope: _Scope, node: Call) -> Val:
        name = node.name
        args = [self._expr(entity, scope, a) for a in node.args]
        d = self.dialect
        if name == "now":
            return self._const(self.now, DATETIME)
        if name == "mindatetime":
            return self._const(datetime(1, 1, 1, tzinfo=UTC), DATETIME)
        if name == "maxdatetime":
            return self._const(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), DATETIME)
        s = lambda i: self._as_string(args[i], node.args[i])  # noqa: E731
        n = lambda i: self._as_number(args[i], node.args[i])  # noqa: E731
        if name == "substringof":
            return Val(BOOL, d.instr(s(1), s(0)) > 0)
        if name == "contains":
            return Val(BOOL, d.instr(s(0), s(1)) > 0)
        if name == "startswith":
            return Val(BOOL, func.substr(s(0), 1, func.length(s(1))) == s(1))
        if name == "endswith":
            a, b = s(0), s(1)
            return Val(BOOL, func.substr(a, func.length(a) - func.length(b) + 1) == b)
        if name == "length":
            return Val(NUMBER, func.length(s(0)))
        if name == "indexof":
            return Val(NUMBER, d.instr(s(0), s(1)) - 1)
        if name == "substring":
            if len(args) == 3:
                return Val(STRING, func.substr(s(0), n(1) + 1, n(2)))
            return Val(STRING, func.substr(s(0), n(1) + 1))
        if name == "tolower":
            return Val(STRING, func.lower(s(0)))
        if name == "toupper":
            return Val(STRING, func.upper(s(0)))
        if name == "trim":
            return Val(STRING, func.trim(s(0)))
        if name == "concat":
            return Val(STRING, s(0).op("||")(s(1)))
        if name in ("year", "month", "day", "hour", "minute", "second", "fractionalseconds"):
            return Val(NUMBER, d.date_part(name, self._as_time(args[0], node.args[0])))
        if name == "date":
            return Val(DATE, d.to_date(self._as_time(args[0], node.args[0])))
        if name == "time":
            return Val(TIME, d.to_time(self._as_time(args[0], node.args[0])))
        if name == "totaloffsetminutes":
            self._as_time(args[0], node.args[0])
            return self._const(0, NUMBER)  # every stored time is UTC
        if name == "round":
            return Val(NUMBER, func.round(n(0)))
        if name == "floor":
            return Val(NUMBER, func.floor(n(0)))
        if name == "ceiling":
            return Val(NUMBER, func.ceil(n(0)))
        geoms = [self._as_geometry(a, node.args[i]) for i, a in enumerate(args) if i < 2]
        if name == "geo.distance":
            return Val(NUMBER, d.spatial("st_distance", *geoms))
        if name == "geo.length":
            return Val(NUMBER, d.spatial("st_length", *geoms))
        if name == "geo.intersects":
            scope.near = scope.near or any(not _references_a_column(g) for g in geoms)
            return Val(BOOL, d.spatial("st_intersects", *geoms))
        if name == "st_relate":
            return Val(BOOL, d.spatial("st_relate", *geoms, s(2)))
        if name.startswith("st_"):
            if name[3:] in _NEAR and any(not _references_a_column(g) for g in geoms):
                scope.near = True
            return Val(BOOL, d.spatial(name, *geoms))
        raise self._err(f"unknown function {name}", node)

    def _as_geometry(self, val: Val, node: Any) -> ColumnElement:
        if val.type == GEOMETRY:
            return val.sql
        raise self._err(f"expected a geometry (a location or geography'...'), found {val.type}", node)


_FLIP = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}
# predicates that hold only where two bounding boxes meet: against a constant geometry a spatial index answers them
_NEAR = frozenset({"equals", "touches", "within", "overlaps", "crosses", "intersects", "contains"})


def distance_to_constant(expr: Expr) -> tuple[Path, str] | None:
    """For `geo.distance(a path, a constant geometry)`, either way round: the path and the geometry's WKT; None for
    any other expression."""
    if not (isinstance(expr, Call) and expr.name == "geo.distance" and len(expr.args) == 2):
        return None
    shapes = [a for a in expr.args if isinstance(a, Literal) and a.kind == "geometry"]
    paths = [a for a in expr.args if isinstance(a, Path)]
    if len(shapes) != 1 or len(paths) != 1:
        return None
    return paths[0], str(shapes[0].value)


def _visits_observations(scope: _Scope) -> bool:
    """Whether a filter's root or a table it joins is the Observations'."""
    return any(getattr(f, "original", f).name == "observations" for f in (scope.root, *scope.froms))


def _cmp(op: str, a: Any, b: Any) -> ColumnElement:
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if op == "lt":
        return a < b
    if op == "le":
        return a <= b
    if op == "gt":
        return a > b
    return a >= b


def _fold(op: str, a: Any, b: Any) -> tuple[Any, str] | None:
    """Constant arithmetic: numbers, and times with durations (now() sub duration'P1D')."""
    if isinstance(a, datetime) and isinstance(b, timedelta) and op in ("add", "sub"):
        try:
            return (a + b if op == "add" else a - b), DATETIME
        except OverflowError:
            raise QueryError("date-time out of range (years 1 to 9999)", "$filter") from None
    if isinstance(a, datetime) and isinstance(b, datetime) and op == "sub":
        return None
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        try:
            if op == "add":
                return a + b, NUMBER
            if op == "sub":
                return a - b, NUMBER
            if op == "mul":
                product = a * b
                # beyond Int64 a product is a decimal, as a literal that large is (and no driver binds it)
                return (float(product) if isinstance(product, int) and abs(product) >= 2**63 else product), NUMBER
            if op == "div":
                return (a // b if isinstance(a, int) and isinstance(b, int) else a / b), NUMBER
            if op == "mod":
                return a % b, NUMBER
        except ZeroDivisionError:
            raise QueryError("division by zero", "$filter") from None
    return None


def _is_many_path(entity: EntityType, expr: Expr) -> list[bool]:
    """For each navigation step of a path, whether it leads to a set."""
    if not isinstance(expr, Path):
        return []
    out = []
    current = entity
    for seg in expr.segments:
        nav = current.nav_by_name.get(seg)
        if nav is None:
            break
        out.append(nav.many)
        current = target_of(nav)
    return out


def _reads(expr: ColumnElement, table: FromClause) -> bool:
    """Whether an SQL expression reads a column of `table`."""
    return any(isinstance(node, ColumnClause) and node.table is table for node in visitors.iterate(expr))


def _references_a_column(expr: ColumnElement) -> bool:
    """Whether an SQL expression reads any column (else it is a constant)."""
    return any(isinstance(node, ColumnClause) for node in visitors.iterate(expr))
