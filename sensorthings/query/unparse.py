"""The query tree written back as query-option text, for nextLinks and MQTT topics."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

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


def _duration(value: timedelta) -> str:
    secs = int(value.total_seconds())
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"P{days}DT{hours}H{minutes}M{seconds}S"


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
        return f"duration'{_duration(v)}'"
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
        inner = expr_text(node.operand, 7)
        return f"not {inner}" if node.op == "not" else f"-{inner}"
    if isinstance(node, BinaryOp):
        prec = _PREC[node.op]
        text = f"{expr_text(node.left, prec)} {node.op} {expr_text(node.right, prec + 1)}"
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
