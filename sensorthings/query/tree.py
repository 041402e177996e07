"""The typed tree a SensorThings request's query options are parsed into.

Nodes are frozen dataclasses: hashable, so a parsed query can key a cache of rendered SQL.
Source positions (`pos`, 0-based character offset in the option's text) do not take part in
equality, so the same query written with different spacing shares one cache entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta


class QueryError(ValueError):
    """A query option that cannot be parsed or does not apply; carries the option and position."""

    def __init__(self, message: str, option: str = "", position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.option = option
        self.position = position

    def to_json(self) -> dict:
        """The error as the JSON body of a 400 response."""
        body: dict = {"code": 400, "type": "error", "message": str(self)}
        if self.option:
            body["option"] = self.option
        if self.position is not None:
            body["position"] = self.position
        return body

    def __str__(self) -> str:
        where = f" at position {self.position}" if self.position is not None else ""
        opt = f"{self.option}: " if self.option else ""
        return f"{opt}{self.message}{where}"


@dataclass(frozen=True)
class Literal:
    """A constant. `kind` is one of: null, bool, int, float, string, datetime, date, time,
    duration, interval, geometry. For geometry, `value` is WKT text; for interval, a pair of
    aware datetimes; datetimes are always timezone-aware."""

    value: None | bool | int | float | str | datetime | date | time | timedelta | tuple
    kind: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Path:
    """A property path: `name`, `Datastream/Thing/name`, `properties/owner/name`, `id`."""

    segments: tuple[str, ...]
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class BinaryOp:
    """op: eq ne gt ge lt le and or add sub mul div mod."""

    op: str
    left: Expr
    right: Expr
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class UnaryOp:
    """op: not, neg."""

    op: str
    operand: Expr
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Call:
    """A function call; `name` is lower-cased (`substringof`, `year`, `geo.distance`, `st_within`)."""

    name: str
    args: tuple[Expr, ...]
    pos: int = field(default=0, compare=False)


Expr = Literal | Path | BinaryOp | UnaryOp | Call


@dataclass(frozen=True)
class OrderBy:
    """One `$orderby` key."""

    expr: Expr
    descending: bool = False


@dataclass(frozen=True)
class Expand:
    """One navigation property to expand, with the options that apply inside it.
    `Datastreams/Observations` is parsed as Expand('Datastreams', options with expand=(Expand('Observations'),))."""

    name: str
    options: QueryOptions
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class QueryOptions:
    """All query options of one (top-level or expanded) entity set or entity."""

    filter: Expr | None = None
    select: tuple[str, ...] | None = None
    orderby: tuple[OrderBy, ...] = ()
    top: int | None = None
    skip: int = 0
    count: bool | None = None
    expand: tuple[Expand, ...] = ()
    result_format: str | None = None
    # where each `select` name starts in the option's text, for the checks against the model after parsing
    select_pos: tuple[int, ...] = field(default=(), compare=False)


# The functions $filter accepts, with their arity (min, max).
FUNCTIONS: dict[str, tuple[int, int]] = {
    # string
    "substringof": (2, 2),
    "endswith": (2, 2),
    "startswith": (2, 2),
    "contains": (2, 2),
    "length": (1, 1),
    "indexof": (2, 2),
    "substring": (2, 3),
    "tolower": (1, 1),
    "toupper": (1, 1),
    "trim": (1, 1),
    "concat": (2, 2),
    # date and time
    "year": (1, 1),
    "month": (1, 1),
    "day": (1, 1),
    "hour": (1, 1),
    "minute": (1, 1),
    "second": (1, 1),
    "fractionalseconds": (1, 1),
    "date": (1, 1),
    "time": (1, 1),
    "totaloffsetminutes": (1, 1),
    "now": (0, 0),
    "mindatetime": (0, 0),
    "maxdatetime": (0, 0),
    # math
    "round": (1, 1),
    "floor": (1, 1),
    "ceiling": (1, 1),
    # geospatial
    "geo.distance": (2, 2),
    "geo.length": (1, 1),
    "geo.intersects": (2, 2),
    "st_equals": (2, 2),
    "st_disjoint": (2, 2),
    "st_touches": (2, 2),
    "st_within": (2, 2),
    "st_overlaps": (2, 2),
    "st_crosses": (2, 2),
    "st_intersects": (2, 2),
    "st_contains": (2, 2),
    "st_relate": (3, 3),
}
