"""The query tree written back as query-option text, for nextLinks and MQTT topics.

What is written here parses back into the same tree (tests/test_query_parser.py proves it with
generated trees), so a nextLink continues exactly the query its page answered.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from urllib.parse import quote

from sensorthings.query.tree import (
    BinaryOp,
    Call,
    Expand,
    Expr,
    Literal,
    OrderBy,
    Path,
    QueryOptions,
    UnaryOp,
)
from sensorthings.times import format_instant

_PREC = {"or": 1, "and": 2, "eq": 4, "ne": 4, "gt": 4, "ge": 4, "lt": 4, "le": 4, "add": 5, "sub": 5,
         "mul": 6, "div": 6, "mod": 6}
_NOT_PREC = 3  # `not` binds tighter than and/or and looser than comparisons
_UNARY_PREC = 7
# the parser builds and/or chains balanced, so a nested and/or is written in parentheses on either side
_ASSOCIATIVE = frozenset({"and", "or"})


def duration_text(value: timedelta) -> str:
    """An ISO 8601 duration the $filter parser reads back exactly: `-PT1H`, `PT1.5S`, `P2DT3H`."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
    day_part = f"{value.days}D" if value.days else ""
    time_part = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or fraction or not (day_part or time_part):
        time_part += f"{seconds}{fraction}S"
    return f"{sign}P{day_part}" + (f"T{time_part}" if time_part else "")


def literal_text(node: Literal) -> str:
    """A literal as $filter text."""
    v = node.value
    if node.kind == "null":
        return "null"
    if node.kind == "bool":
        return "true" if v else "false"
    if node.kind == "string":
        return "'" + str(v).replace("'", "''") + "'"
    if node.kind == "datetime" and isinstance(v, datetime):
        return format_instant(v)
    if node.kind == "interval" and isinstance(v, tuple):
        return f"{format_instant(v[0])}/{format_instant(v[1])}"
    if node.kind in ("date", "time") and isinstance(v, date | time):
        return v.isoformat()
    if node.kind == "duration" and isinstance(v, timedelta):
        return f"duration'{duration_text(v)}'"
    if node.kind == "geometry":
        return f"geography'{v}'"
    return repr(v)


def expr_text(node: Expr, parent_prec: int = 0) -> str:
    """An expression as $filter text, parenthesised only where needed."""
    if isinstance(node, Literal):
        return literal_text(node)
    if isinstance(node, Path):
        return "/".join(node.segments)
    if isinstance(node, Call):
        return f"{node.name}({','.join(expr_text(a) for a in node.args)})"
    if isinstance(node, UnaryOp):
        if node.op == "not":
            text = f"not {expr_text(node.operand, _NOT_PREC)}"
            return f"({text})" if _NOT_PREC < parent_prec else text
        return f"-{expr_text(node.operand, _UNARY_PREC)}"
    if isinstance(node, BinaryOp):
        prec = _PREC[node.op]
        left = prec + 1 if node.op in _ASSOCIATIVE else prec
        text = f"{expr_text(node.left, left)} {node.op} {expr_text(node.right, prec + 1)}"
        return f"({text})" if prec < parent_prec else text
    raise TypeError(node)


def orderby_text(items: tuple[OrderBy, ...]) -> str:
    """$orderby text."""
    return ",".join(expr_text(o.expr) + (" desc" if o.descending else "") for o in items)


def expand_text(items: tuple[Expand, ...]) -> str:
    """$expand text."""
    out = []
    for item in items:
        inner = ";".join(f"{k}={v}" for k, v in option_pairs(item.options))
        out.append(f"{item.name}({inner})" if inner else item.name)
    return ",".join(out)


def option_pairs(options: QueryOptions, *, top: int | None = None, skip: int | None = None) -> list[tuple[str, str]]:
    """The options as (name, text) pairs; `top`/`skip` override the parsed values."""
    pairs: list[tuple[str, str]] = []
    if options.filter is not None:
        pairs.append(("$filter", expr_text(options.filter)))
    if options.select is not None:
        pairs.append(("$select", ",".join(options.select)))
    if options.orderby:
        pairs.append(("$orderby", orderby_text(options.orderby)))
    t = top if top is not None else options.top
    if t is not None:
        pairs.append(("$top", str(t)))
    s = skip if skip is not None else options.skip
    if s:
        pairs.append(("$skip", str(s)))
    if options.count is not None:
        pairs.append(("$count", "true" if options.count else "false"))
    if options.expand:
        pairs.append(("$expand", expand_text(options.expand)))
    if options.result_format:
        pairs.append(("$resultFormat", options.result_format))
    return pairs


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """Query options as a URL query string (the characters OData writes bare are left readable)."""
    return "&".join(f"{k}={quote(v, safe=',/()=;:$@')}" for k, v in pairs)


def next_link(url: str, options: QueryOptions, *, top: int, skip: int = 0, skiptoken: str | None = None) -> str:
    """The nextLink of a page of the set at `url` (top-level or expanded): the parsed options written back,
    with the page size `top` and where the next page starts, by `$skiptoken` when there is one, else `$skip`."""
    pairs = option_pairs(options, top=top, skip=0 if skiptoken else skip)
    if skiptoken:
        pairs.append(("$skiptoken", skiptoken))
    return f"{url}?{encode_query(pairs)}"
