"""Parser for the SensorThings query options: $filter, $orderby, $select, $expand, $top, ...

A lazy regex tokenizer feeds a precedence-climbing recursive-descent parser that builds the
typed tree of `tree.py`. Every failure is a QueryError carrying the option and a 0-based offset
into that option's text. Nesting is bounded, so no input can exhaust the Python stack here or
in the code that later walks (or hashes) the tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NoReturn

from shapely import wkt as shapely_wkt

from .limits import Limits
from .tree import (
    FUNCTIONS,
    BinaryOp,
    Call,
    Expand,
    Expr,
    Literal,
    OrderBy,
    Path,
    QueryError,
    QueryOptions,
    UnaryOp,
)

__all__ = ["parse_expand", "parse_filter", "parse_orderby", "parse_query_options", "parse_select"]

# Parentheses, function calls, `not`, unary minus and $expand levels each count as one level.
MAX_DEPTH = 50
# Long left-associative chains (`a add b add c ...`) deepen the tree without nesting syntax.
MAX_TREE_DEPTH = 100
INT64_MAX = 2**63 - 1

_DT = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_STRING = r"'[^']*(?:''[^']*)*'"

# Alternatives are tried in order: date-times and dates before numbers, typed literals before
# names. Inner groups are non-capturing so `lastgroup` names the token kind.
_TOKEN_RE = re.compile(
    rf"""[ \t\r\n]*(?:
        (?P<dt>{_DT}(?:/{_DT})?)
      | (?P<date>[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})
      | (?P<time>[0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:\.[0-9]+)?)?)
      | (?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?:[dDfFmMlL](?![A-Za-z0-9_]))?)
      | (?P<typed>(?i:datetime|duration|geography|geometry){_STRING})
      | (?P<str>{_STRING})
      | (?P<name>@iot\.[A-Za-z]+|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<punct>[(),/-])
      | (?P<end>\Z)
    )""",
    re.VERBOSE,
)
_DT_RE = re.compile(_DT)
_WS_RE = re.compile(r"[ \t\r\n]*")
_WORDISH_RE = re.compile(r"[A-Za-z0-9_@.$]+|.", re.DOTALL)
_NAV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT_RE = re.compile(r"@iot\.[A-Za-z]+|[A-Za-z_][A-Za-z0-9_]*")
# Keys inside JSON properties are free-form; allow dashes, leading digits and array indexes.
_JSON_SEGMENT_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\[[0-9]+\])*")
_OPTION_NAME_RE = re.compile(r"\$[A-Za-z]+")
_UINT_RE = re.compile(r"[ \t\r\n]*([0-9]+)[ \t\r\n]*")
_PAREN_QUOTE_RE = re.compile(r"[()']")
_OPTION_SPLIT_RE = re.compile(r"[();']")
_SRID_RE = re.compile(r"[ \t\r\n]*SRID=[0-9]+;", re.IGNORECASE)
_DURATION_RE = re.compile(
    r"(-)?P(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)W)?(?:([0-9]+)D)?"
    r"(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+(?:\.[0-9]+)?)S)?)?",
    re.IGNORECASE,
)

# Properties whose value is free JSON: path segments after them are JSON keys, not entity names.
_JSON_ROOTS = frozenset(
    {"properties", "parameters", "resultQuality", "unitOfMeasurement", "feature", "location", "result"}
)
_COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
_ADDITIVE = frozenset({"add", "sub"})
_MULTIPLICATIVE = frozenset({"mul", "div", "mod"})
_RESERVED = _COMPARISONS | _ADDITIVE | _MULTIPLICATIVE | {"and", "or", "not"}
_LITERAL_KINDS = frozenset({"num", "str", "dt", "date", "time", "typed"})
_FLOAT_SUFFIXES = frozenset("dDfFmM")
_INT_SUFFIXES = frozenset("lL")
_EXPAND_OPTIONS = ("$filter", "$select", "$orderby", "$top", "$skip", "$count", "$expand")
_OPTION_FIELDS = {
    "filter": "$filter",
    "select": "$select",
    "orderby": "$orderby",
    "top": "$top",
    "skip": "$skip",
    "count": "$count",
    "result_format": "$resultFormat",
}
_DEFAULTS = QueryOptions()
# every query option a request may carry, as the standard spells it
QUERY_OPTIONS = (*_EXPAND_OPTIONS, "$resultFormat")
_CANONICAL_NAMES = {option.lower(): option for option in QUERY_OPTIONS}


class _Ctx:
    """Where errors go: the full option text, the option name and a message prefix for nesting."""

    __slots__ = ("text", "option", "prefix")

    def __init__(self, text: str, option: str, prefix: str = "") -> None:
        self.text = text
        self.option = option
        self.prefix = prefix

    def fail(self, message: str, pos: int) -> NoReturn:
        raise QueryError(self.prefix + message, self.option, pos)

    def found_at(self, pos: int, end: int) -> str:
        """A short description of the text at `pos`, for 'expected X but found Y' messages."""
        if pos >= end:
            return "end of input"
        m = _WORDISH_RE.match(self.text, pos, end)
        return _quote(m.group() if m else self.text[pos])


def _quote(s: str) -> str:
    if len(s) > 40:
        s = s[:37] + "..."
    return f"'{s}'"


def _skip_ws(text: str, pos: int, end: int) -> int:
    return _WS_RE.match(text, pos, end).end()  # type: ignore[union-attr]  # always matches


def _normalise_segment(seg: str) -> str:
    return "id" if seg == "@iot.id" else seg


def _continue_path(ctx: _Ctx, pos: int, end: int, segments: list[str]) -> int:
    """Consume `/segment` repetitions at `pos` into `segments`; return the offset after them."""
    text = ctx.text
    in_json = any(s in _JSON_ROOTS for s in segments)
    while pos < end and text[pos] == "/":
        m = (_JSON_SEGMENT_RE if in_json else _SEGMENT_RE).match(text, pos + 1, end)
        if m is None:
            ctx.fail(f"expected a property name after '/' but found {ctx.found_at(pos + 1, end)}", pos + 1)
        seg = _normalise_segment(m.group())
        segments.append(seg)
        in_json = in_json or seg in _JSON_ROOTS
        pos = m.end()
    return pos


# ---------------------------------------------------------------------------------------------
# Literals


def _number(ctx: _Ctx, s: str, pos: int) -> Literal:
    suffix = s[-1]
    body = s[:-1] if suffix in _FLOAT_SUFFIXES or suffix in _INT_SUFFIXES else s
    is_float = suffix in _FLOAT_SUFFIXES or "." in body or "e" in body or "E" in body
    if suffix in _INT_SUFFIXES and is_float:
        ctx.fail(f"invalid integer literal '{s}'", pos)
    # Beyond Int64 OData treats the number as a decimal; this also keeps int() off huge strings.
    if not is_float and len(body) <= 19:
        value = int(body)
        if value <= INT64_MAX:
            return Literal(value, "int", pos)
    number = float(body)
    if number == float("inf"):
        ctx.fail(f"number out of range '{_quote(s)[1:-1]}'", pos)
    return Literal(number, "float", pos)


def _datetime(ctx: _Ctx, s: str, pos: int) -> datetime:
    iso = s[:-1] + "+00:00" if s[-1] in "zZ" else s
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        ctx.fail(f"invalid date-time {_quote(s)}", pos)
    # The tree promises aware datetimes; SensorThings times without an offset are UTC.
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)  # 0001-01-01T00:00+01:00 is no instant Python (or SQLite's text column) can hold
    except OverflowError:
        ctx.fail(f"date-time out of range {_quote(s)}", pos)
    return value


def _duration(ctx: _Ctx, s: str, pos: int) -> timedelta:
    m = _DURATION_RE.fullmatch(s.strip())
    if m is None or s.strip()[-1:] in ("P", "p", "T", "t"):
        ctx.fail(f"invalid duration {_quote(s)}", pos)
    sign, years, months, weeks, days, hours, minutes, seconds = m.groups()
    if years is not None or months is not None:
        ctx.fail("durations with years or months are not supported (their length varies)", pos)
    try:
        value = timedelta(
            weeks=int(weeks or 0),
            days=int(days or 0),
            hours=int(hours or 0),
            minutes=int(minutes or 0),
            seconds=float(seconds or 0),
        )
    except (ValueError, OverflowError):
        ctx.fail(f"duration out of range {_quote(s)}", pos)
    return -value if sign else value


def _geometry(ctx: _Ctx, prefix: str, s: str, pos: int) -> str:
    m = _SRID_RE.match(s)
    wkt = (s[m.end() :] if m else s).strip()
    try:
        shapely_wkt.loads(wkt)
    # shapely reports bad WKT as GEOSException but other inputs can surface other types; any
    # failure here means the literal is unusable.
    except Exception:
        ctx.fail(f"invalid WKT in {prefix} literal {_quote(wkt)}", pos)
    return wkt


def _typed(ctx: _Ctx, s: str, pos: int) -> Literal:
    q = s.index("'")
    prefix = s[:q].lower()
    body = s[q + 1 : -1].replace("''", "'")
    if prefix == "datetime":
        if _DT_RE.fullmatch(body) is None:
            ctx.fail(f"invalid date-time {_quote(body)}", pos)
        return Literal(_datetime(ctx, body, pos), "datetime", pos)
    if prefix == "duration":
        return Literal(_duration(ctx, body, pos), "duration", pos)
    return Literal(_geometry(ctx, prefix, body, pos), "geometry", pos)


# ---------------------------------------------------------------------------------------------
# Expressions


class _ExprParser:
    """Precedence climbing over a one-token lookahead; tokens are lexed lazily from `text`."""

    __slots__ = ("ctx", "text", "end", "kind", "start", "stop", "word", "nesting")

    def __init__(self, ctx: _Ctx, start: int, end: int) -> None:
        self.ctx = ctx
        self.text = ctx.text
        self.end = end
        self.nesting = 0
        self._lex(start)

    # -- tokens --

    def _lex(self, pos: int) -> None:
        m = _TOKEN_RE.match(self.text, pos, self.end)
        if m is None:
            bad = _skip_ws(self.text, pos, self.end)
            if self.text[bad] == "'":
                self.ctx.fail("unterminated string", bad)
            self.ctx.fail(f"unexpected character {_quote(self.text[bad])}", bad)
        kind = m.lastgroup or "end"
        self.start = m.start(kind)
        self.stop = m.end()
        if kind == "punct":
            kind = self.text[self.start]
        self.kind = kind
        self.word = self.text[self.start : self.stop].lower() if kind == "name" else ""

    def _found(self) -> str:
        if self.kind == "end":
            return "end of input"
        s = _quote(self.text[self.start : self.stop])
        return f"string {s[1:-1]}" if self.kind == "str" else s

    def _expected(self, what: str) -> NoReturn:
        self.ctx.fail(f"expected {what} but found {self._found()}", self.start)

    def _enter(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            self.ctx.fail(f"expression nested more than {MAX_DEPTH} levels deep", pos)

    # -- grammar; every method returns (node, depth of node) --

    def whole(self) -> Expr:
        if self.kind == "end":
            self.ctx.fail("expected an expression but found end of input", self.start)
        expr = self.expression()
        if self.kind != "end":
            self._expected("an operator or end of input")
        return expr

    def expression(self) -> Expr:
        return self._or()[0]

    def _or(self) -> tuple[Expr, int]:
        first = self._and()
        if self.word != "or":
            return first
        items = [first]
        while self.word == "or":
            self._lex(self.stop)
            items.append(self._and())
        return self._balanced("or", items, 0, len(items))

    def _and(self) -> tuple[Expr, int]:
        first = self._not()
        if self.word != "and":
            return first
        items = [first]
        while self.word == "and":
            self._lex(self.stop)
            items.append(self._not())
        return self._balanced("and", items, 0, len(items))

    def _balanced(self, op: str, items: list[tuple[Expr, int]], lo: int, hi: int) -> tuple[Expr, int]:
        # and/or are associative, so long generated chains (`id eq 1 or id eq 2 or ...`) are
        # built balanced to stay shallow. Splitting left-heavy keeps 2 and 3 operands
        # identical to the left-associative tree.
        if hi - lo == 1:
            return items[lo]
        mid = (lo + hi + 1) // 2
        return self._binary(op, self._balanced(op, items, lo, mid), self._balanced(op, items, mid, hi))

    def _not(self) -> tuple[Expr, int]:
        if self.word != "not":
            return self._comparison()
        pos = self.start
        self._enter(pos)
        self._lex(self.stop)
        operand, depth = self._not()
        self.nesting -= 1
        return UnaryOp("not", operand, pos), depth + 1

    def _comparison(self) -> tuple[Expr, int]:
        left = self._additive()
        while self.word in _COMPARISONS:
            op = self.word
            self._lex(self.stop)
            left = self._binary(op, left, self._additive())
        return left

    def _additive(self) -> tuple[Expr, int]:
        left = self._multiplicative()
        while self.word in _ADDITIVE:
            op = self.word
            self._lex(self.stop)
            left = self._binary(op, left, self._multiplicative())
        return left

    def _multiplicative(self) -> tuple[Expr, int]:
        left = self._unary()
        while self.word in _MULTIPLICATIVE:
            op = self.word
            self._lex(self.stop)
            left = self._binary(op, left, self._unary())
        return left

    def _binary(self, op: str, left: tuple[Expr, int], right: tuple[Expr, int]) -> tuple[Expr, int]:
        depth = max(left[1], right[1]) + 1
        if depth > MAX_TREE_DEPTH:
            self.ctx.fail(f"expression is too complex (more than {MAX_TREE_DEPTH} levels)", left[0].pos)
        return BinaryOp(op, left[0], right[0], left[0].pos), depth

    def _unary(self) -> tuple[Expr, int]:
        if self.kind != "-":
            return self._primary()
        pos = self.start
        self._enter(pos)
        self._lex(self.stop)
        operand, depth = self._unary()
        self.nesting -= 1
        # A negative number is a literal, not an operation, for the SQL generator's sake.
        if isinstance(operand, Literal) and operand.kind in ("int", "float"):
            return Literal(-operand.value, operand.kind, pos), 1  # type: ignore[operator]
        return UnaryOp("neg", operand, pos), depth + 1

    def _primary(self) -> tuple[Expr, int]:
        kind = self.kind
        if kind == "name":
            return self._name()
        if kind in _LITERAL_KINDS:
            node = self._literal()
            self._lex(self.stop)
            return node, 1
        if kind == "(":
            self._enter(self.start)
            self._lex(self.stop)
            inner = self._or()
            if self.kind != ")":
                self._expected("')'")
            self.nesting -= 1
            self._lex(self.stop)
            return inner
        if kind == "end":
            self.ctx.fail("unexpected end of input", self.start)
        self._expected("an expression")

    def _literal(self) -> Literal:
        kind, pos = self.kind, self.start
        s = self.text[pos : self.stop]
        if kind == "num":
            return _number(self.ctx, s, pos)
        if kind == "str":
            return Literal(s[1:-1].replace("''", "'"), "string", pos)
        if kind == "dt":
            if "/" not in s:
                return Literal(_datetime(self.ctx, s, pos), "datetime", pos)
            first, second = s.split("/")
            interval = (_datetime(self.ctx, first, pos), _datetime(self.ctx, second, pos + len(first) + 1))
            return Literal(interval, "interval", pos)
        if kind == "date":
            try:
                return Literal(date.fromisoformat(s), "date", pos)
            except ValueError:
                self.ctx.fail(f"invalid date {_quote(s)}", pos)
        if kind == "time":
            try:
                return Literal(time.fromisoformat(s), "time", pos)
            except ValueError:
                self.ctx.fail(f"invalid time {_quote(s)}", pos)
        return _typed(self.ctx, s, pos)

    def _name(self) -> tuple[Expr, int]:
        word, pos, stop = self.word, self.start, self.stop
        raw = self.text[pos:stop]
        if word == "null":
            self._lex(stop)
            return Literal(None, "null", pos), 1
        if word in ("true", "false"):
            self._lex(stop)
            return Literal(word == "true", "bool", pos), 1
        if word in _RESERVED:
            self._expected("an expression")
        if stop < self.end and self.text[stop] == "/":
            segments = [self._first_segment(raw, pos)]
            self._lex(_continue_path(self.ctx, stop, self.end, segments))
            return Path(tuple(segments), pos), 1
        self._lex(stop)
        if self.kind == "(":
            return self._call(raw, word, pos)
        return Path((self._first_segment(raw, pos),), pos), 1

    def _first_segment(self, raw: str, pos: int) -> str:
        # Dotted names exist only as function names (geo.distance); as a property they are typos.
        if "." in raw and not raw.startswith("@"):
            self.ctx.fail(f"invalid property name {_quote(raw)}", pos)
        return _normalise_segment(raw)

    def _call(self, raw: str, name: str, pos: int) -> tuple[Expr, int]:
        arity = FUNCTIONS.get(name)
        if arity is None:
            self.ctx.fail(f"unknown function {_quote(raw)}", pos)
        self._enter(pos)
        self._lex(self.stop)
        args: list[Expr] = []
        depth = 0
        if self.kind != ")":
            while True:
                arg, arg_depth = self._or()
                args.append(arg)
                depth = max(depth, arg_depth)
                if self.kind == ",":
                    self._lex(self.stop)
                elif self.kind == ")":
                    break
                else:
                    self._expected("',' or ')'")
        self.nesting -= 1
        self._lex(self.stop)
        low, high = arity
        if not low <= len(args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            noun = "argument" if high == 1 else "arguments"
            self.ctx.fail(f"{name}() takes {wanted} {noun} but {len(args)} given", pos)
        return Call(name, tuple(args), pos), depth + 1


# ---------------------------------------------------------------------------------------------
# Option values, on a [start, end) slice of the context's text so nested positions stay global


def _filter(ctx: _Ctx, start: int, end: int) -> Expr:
    return _ExprParser(ctx, start, end).whole()


def _orderby(ctx: _Ctx, start: int, end: int) -> tuple[OrderBy, ...]:
    parser = _ExprParser(ctx, start, end)
    if parser.kind == "end":
        ctx.fail("expected an expression but found end of input", parser.start)
    keys: list[OrderBy] = []
    while True:
        expr = parser.expression()
        descending = False
        if parser.word in ("asc", "desc"):
            descending = parser.word == "desc"
            parser._lex(parser.stop)
        keys.append(OrderBy(expr, descending))
        if parser.kind == "end":
            return tuple(keys)
        if parser.kind != ",":
            parser._expected("',', 'asc', 'desc', an operator or end of input")
        parser._lex(parser.stop)


def _select(ctx: _Ctx, start: int, end: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The selected names, and where each starts (for the checks against the model after parsing)."""
    text = ctx.text
    names: dict[str, int] = {}  # ordered set: duplicates select nothing more
    pos = _skip_ws(text, start, end)
    while True:
        m = _SEGMENT_RE.match(text, pos, end)
        if m is None:
            ctx.fail(f"expected a property name but found {ctx.found_at(pos, end)}", pos)
        segments = [_normalise_segment(m.group())]
        start_pos = pos
        pos = _skip_ws(text, _continue_path(ctx, m.end(), end, segments), end)
        names.setdefault("/".join(segments), start_pos)
        if pos >= end:
            return tuple(names), tuple(names.values())
        if text[pos] != ",":
            ctx.fail(f"expected ',' or end of input but found {ctx.found_at(pos, end)}", pos)
        pos = _skip_ws(text, pos + 1, end)


def _count(ctx: _Ctx, start: int, end: int) -> bool:
    value = ctx.text[start:end].strip().lower()
    if value not in ("true", "false"):
        pos = _skip_ws(ctx.text, start, end)
        ctx.fail(f"expected true or false but found {ctx.found_at(pos, end)}", pos)
    return value == "true"


def _non_negative(ctx: _Ctx, start: int, end: int, limit: int, limit_message: str) -> int:
    m = _UINT_RE.fullmatch(ctx.text, start, end)
    if m is None:
        pos = _skip_ws(ctx.text, start, end)
        ctx.fail(f"expected a non-negative integer but found {ctx.found_at(pos, end)}", pos)
    digits = m.group(1)
    # The length check keeps int() away from the huge strings it refuses to convert.
    if len(digits) > 19 or int(digits) > limit:
        ctx.fail(limit_message, m.start(1))
    return int(digits)


def _top(ctx: _Ctx, start: int, end: int, max_top: int) -> int:
    return _non_negative(ctx, start, end, max_top, f"$top must not exceed the maximum of {max_top} (server.max_top)")


def _skip(ctx: _Ctx, start: int, end: int) -> int:
    return _non_negative(ctx, start, end, INT64_MAX, "$skip is too large")


def _closing_paren(ctx: _Ctx, open_pos: int, end: int) -> int:
    """The offset of the ')' matching the '(' at open_pos, skipping quoted strings."""
    level = 0
    quote = -1
    for m in _PAREN_QUOTE_RE.finditer(ctx.text, open_pos, end):
        c, pos = m.group(), m.start()
        if quote >= 0:
            if c == "'":
                quote = -1
        elif c == "'":
            quote = pos
        elif c == "(":
            level += 1
        else:
            level -= 1
            if level == 0:
                return pos
    if quote >= 0:
        ctx.fail("unterminated string", quote)
    ctx.fail("expected ')' but found end of input", end)


def _split_options(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split at the ';' that are outside parentheses and quotes (the caller checked balance)."""
    parts: list[tuple[int, int]] = []
    level = 0
    in_quote = False
    part_start = start
    for m in _OPTION_SPLIT_RE.finditer(text, start, end):
        c = m.group()
        if c == "'":
            in_quote = not in_quote
        elif in_quote:
            continue
        elif c == "(":
            level += 1
        elif c == ")":
            level -= 1
        elif level == 0:
            parts.append((part_start, m.start()))
            part_start = m.end()
    parts.append((part_start, end))
    return parts


def _expand_options(ctx: _Ctx, start: int, end: int, depth: int, max_top: int, where: str) -> QueryOptions:
    text = ctx.text
    values: dict[str, Any] = {}
    for part_start, part_end in _split_options(text, start, end):
        pos = _skip_ws(text, part_start, part_end)
        m = _OPTION_NAME_RE.match(text, pos, part_end)
        if m is None:
            ctx.fail(f"expected a query option such as $filter but found {ctx.found_at(pos, part_end)}", pos)
        name = m.group().lower()
        if name not in _EXPAND_OPTIONS:
            ctx.fail(f"unknown query option {m.group()} in $expand", pos)
        field_name = name[1:]
        if field_name in values:
            ctx.fail(f"duplicate query option {name} in $expand", pos)
        eq = _skip_ws(text, m.end(), part_end)
        if eq >= part_end or text[eq] != "=":
            ctx.fail(f"expected '=' after {m.group()} but found {ctx.found_at(eq, part_end)}", eq)
        inner = _Ctx(text, ctx.option, f"in {name} of {where}: ")
        vs = eq + 1
        if name == "$filter":
            values[field_name] = _filter(inner, vs, part_end)
        elif name == "$select":
            values["select"], values["select_pos"] = _select(inner, vs, part_end)
        elif name == "$orderby":
            values[field_name] = _orderby(inner, vs, part_end)
        elif name == "$top":
            values[field_name] = _top(inner, vs, part_end, max_top)
        elif name == "$skip":
            values[field_name] = _skip(inner, vs, part_end)
        elif name == "$count":
            values[field_name] = _count(inner, vs, part_end)
        else:
            values[field_name] = _expand(inner, vs, part_end, depth, max_top, where + "/")
    return QueryOptions(**values)


def _expand(
    ctx: _Ctx, start: int, end: int, depth: int, max_top: int, parent: str = ""
) -> tuple[Expand, ...]:
    text = ctx.text
    items: list[Expand] = []
    pos = _skip_ws(text, start, end)
    while True:
        names: list[tuple[str, int]] = []
        while True:
            m = _NAV_RE.match(text, pos, end)
            if m is None:
                ctx.fail(f"expected a navigation property name but found {ctx.found_at(pos, end)}", pos)
            names.append((m.group(), pos))
            pos = m.end()
            if pos >= end or text[pos] != "/":
                break
            pos += 1
        if depth + len(names) > MAX_DEPTH:
            ctx.fail(f"$expand nested more than {MAX_DEPTH} levels deep", names[0][1])
        where = parent + "/".join(name for name, _ in names)
        options = _DEFAULTS
        pos = _skip_ws(text, pos, end)
        if pos < end and text[pos] == "(":
            close = _closing_paren(ctx, pos, end)
            options = _expand_options(ctx, pos + 1, close, depth + len(names), max_top, where)
            pos = _skip_ws(text, close + 1, end)
        name, name_pos = names[-1]
        item = Expand(name, options, name_pos)
        for name, name_pos in reversed(names[:-1]):
            item = Expand(name, QueryOptions(expand=(item,)), name_pos)
        items.append(item)
        if pos >= end:
            return _merge(ctx, items)
        if text[pos] != ",":
            ctx.fail(f"expected ',', '(' or end of input but found {ctx.found_at(pos, end)}", pos)
        pos = _skip_ws(text, pos + 1, end)


def _merge(ctx: _Ctx, items: list[Expand] | tuple[Expand, ...]) -> tuple[Expand, ...]:
    """Fold items that expand the same navigation property into one, keeping first-seen order."""
    merged: dict[str, Expand] = {}
    for item in items:
        seen = merged.get(item.name)
        merged[item.name] = item if seen is None else _merge_two(ctx, seen, item)
    return tuple(merged.values())


def _merge_two(ctx: _Ctx, a: Expand, b: Expand) -> Expand:
    values: dict[str, Any] = {}
    for field_name, option in _OPTION_FIELDS.items():
        default = getattr(_DEFAULTS, field_name)
        mine, theirs = getattr(a.options, field_name), getattr(b.options, field_name)
        if theirs == default or theirs == mine:
            values[field_name] = mine
        elif mine == default:
            values[field_name] = theirs
        else:
            ctx.fail(f"conflicting {option} for expanded {a.name}", b.pos)
    values["select_pos"] = (a if values["select"] is a.options.select else b).options.select_pos
    values["expand"] = _merge(ctx, a.options.expand + b.options.expand)
    return Expand(a.name, QueryOptions(**values), a.pos)


# ---------------------------------------------------------------------------------------------
# Public API


def _check_text(text: object, option: str) -> str:
    if not isinstance(text, str):
        raise QueryError("the option value must be text", option, 0)
    return text


def parse_filter(text: str) -> Expr:
    """Parse a $filter expression into the typed tree."""
    text = _check_text(text, "$filter")
    return _filter(_Ctx(text, "$filter"), 0, len(text))


def parse_orderby(text: str) -> tuple[OrderBy, ...]:
    """Parse a $orderby list: comma-separated expressions, each optionally `asc` or `desc`."""
    text = _check_text(text, "$orderby")
    return _orderby(_Ctx(text, "$orderby"), 0, len(text))


def parse_select(text: str) -> tuple[str, ...]:
    """Parse a $select list into property names (`@iot.id` becomes `id`, paths keep their '/')."""
    text = _check_text(text, "$select")
    return _select(_Ctx(text, "$select"), 0, len(text))[0]


def parse_expand(text: str, *, max_top: int = Limits.max_top) -> tuple[Expand, ...]:
    """Parse a $expand list, nesting `A/B` paths and merging items that share a leading name."""
    text = _check_text(text, "$expand")
    return _expand(_Ctx(text, "$expand"), 0, len(text), 0, max_top)


def _expand_depth(items: tuple[Expand, ...]) -> tuple[int, int]:
    """How many levels the deepest branch of an $expand nests, and where that branch's deepest name is."""
    best = (0, 0)
    for item in items:
        below, pos = _expand_depth(item.options.expand)
        best = max(best, (below + 1, pos if below else item.pos))
    return best


def parse_query_options(params: Mapping[str, str], limits: Limits) -> QueryOptions:
    """Parse the `$`-prefixed query options of a request within `limits`; other parameters are ignored.

    `$top` (top-level and inside `$expand`) is at most `limits.max_top` and defaults to `limits.default_top`;
    `$expand` nests at most `limits.max_expand_depth` levels (`A/B` and `A($expand=B)` are two levels each).
    Every way in (HTTP GET, `$batch`, MQTT topics) parses with the platform's limits: they are not optional.
    """
    max_top, max_expand_depth = limits.max_top, limits.max_expand_depth
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for key, raw in params.items():
        if not isinstance(key, str) or not key.startswith("$"):
            continue
        name = key.lower()
        option = _CANONICAL_NAMES.get(name)
        if option is None:
            raise QueryError(f"unknown query option {key}", key, 0)
        if name in seen:
            raise QueryError(f"duplicate query option {option}", option, 0)
        seen.add(name)
        text = _check_text(raw, option)
        ctx = _Ctx(text, option)
        end = len(text)
        if name == "$filter":
            values["filter"] = _filter(ctx, 0, end)
        elif name == "$select":
            values["select"], values["select_pos"] = _select(ctx, 0, end)
        elif name == "$orderby":
            values["orderby"] = _orderby(ctx, 0, end)
        elif name == "$expand":
            values["expand"] = _expand(ctx, 0, end, 0, max_top)
            depth, pos = _expand_depth(values["expand"])
            if depth > max_expand_depth:
                ctx.fail(f"$expand nests {depth} levels; the limit is {max_expand_depth} (server.max_expand_depth)",
                         pos)
        elif name == "$top":
            values["top"] = _top(ctx, 0, end, max_top)
        elif name == "$skip":
            values["skip"] = _skip(ctx, 0, end)
        elif name == "$count":
            values["count"] = _count(ctx, 0, end)
        else:
            if text.strip().lower() != "dataarray":
                ctx.fail(f"unsupported $resultFormat {_quote(text)}; only dataArray is supported", 0)
            values["result_format"] = "dataArray"
    values.setdefault("top", limits.default_top)
    return QueryOptions(**values)
