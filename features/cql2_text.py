"""CQL2 text (OGC 21-065r2 and the BNF in its annex) parsed by hand into the pygeofilter tree that
`pygeofilter.parsers.cql2_json` builds for the same filter written in CQL2 JSON.

Where that JSON parser departs from the standard, the standard wins: LIKE's single-character
wildcard is `_` (not `.`); BBOX(west, south, east, north) fills values.Envelope's x1, x2, y1, y2
with west, east, south, north (the JSON parser passes the four numbers in their written order); and
T_INTERSECTS is the TimeOverlaps node the JSON parser makes, but with an op that says INTERSECTS."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from enum import Enum
from typing import Any, NoReturn

from pygeofilter import ast, values

__all__ = ["CQL2SyntaxError", "parse"]

# parentheses, calls and collections inside each other; each level costs ~10 Python frames of this
# parser, and a filter nested this deep is a generated mistake, not a query
MAX_DEPTH = 48
# levels of the tree: the evaluators walk it recursively, two or three Python frames a level, so a
# chain of 500 ORs would exhaust the stack there (a long OR of values is x IN (...))
MAX_HEIGHT = 128


class CQL2SyntaxError(ValueError):
    """A CQL2 text filter that does not parse: `position` is the 0-based offset of the character the reason is
    about, as the SensorThings query parser reports it (one way of counting for both APIs' errors)."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"{reason} at position {position}")
        self.position = position
        self.reason = reason


# -- tokens ----------------------------------------------------------------------------------------
NUM, STR, IDENT, QIDENT, OP, END = "number", "text", "name", "quoted name", "operator", "end"

# identifierStart / identifierPart of the BNF (XML's name characters); Korean, CJK etc. included
_ID_START = (":_A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1ffe\u200c-\u200d"
             "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff")
_IDENT = re.compile(f"[{_ID_START}][{_ID_START}.0-9\u0300-\u036f\u203f-\u2040]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_OPERATORS = ("<>", "<=", ">=", "<", ">", "=", "(", ")", ",", "+", "-", "*", "/", "%", "^")
_NOT_CQL2 = {"!=": "'!=' is not CQL2, write '<>'", "[": "arrays are written in parentheses: ('a', 'b')",
             "]": "arrays are written in parentheses: ('a', 'b')"}


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical unit: `text` as written, `value` as meant, `pos` its 0-based offset."""

    kind: str
    text: str
    value: Any
    pos: int


def _show(tok: Token) -> str:
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "…"
    return f"the text {text}" if tok.kind == STR else f"'{text}'"


def _string(text: str, start: int) -> tuple[str, int]:
    """The content of the character literal opening at `start`, and the offset after its closing quote."""
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            if i + 1 < n and text[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if c == "\\" and i + 1 < n and text[i + 1] in "'\\":
            # the BNF's other quote escape, \' ; a doubled backslash stays as written so that a LIKE
            # pattern can end in an escaped backslash ('a\\') without swallowing the closing quote
            out.append("'" if text[i + 1] == "'" else "\\\\")
            i += 2
            continue
        out.append(c)
        i += 1
    raise CQL2SyntaxError(start, "this text has no closing quote (a quote inside a text is written '')")


def _quoted_name(text: str, start: int) -> tuple[str, int]:
    """The property name in the double quotes opening at `start`, and the offset after them."""
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            if i + 1 < n and text[i + 1] == '"':
                out.append('"')
                i += 2
                continue
            if not out:
                raise CQL2SyntaxError(start, 'a quoted property name cannot be empty ("")')
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise CQL2SyntaxError(start, "this quoted property name has no closing '\"'")


def _number(literal: str, pos: int) -> int | float:
    try:
        value: int | float = float(literal) if any(c in literal for c in ".eE") else int(literal)
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise CQL2SyntaxError(pos, "this number has too many digits") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CQL2SyntaxError(pos, "this number is too large")
    return value


def tokenize(text: str) -> list[Token]:
    """The tokens of a CQL2 text filter, ending in an END token (CQL2SyntaxError for a character that fits none)."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if m := _IDENT.match(text, i):
            tokens.append(Token(IDENT, m.group(), m.group(), i))
            i = m.end()
        elif m := _NUMBER.match(text, i):
            tokens.append(Token(NUM, m.group(), _number(m.group(), i), i))
            i = m.end()
        elif c == "'":
            value, end = _string(text, i)
            tokens.append(Token(STR, text[i:end], value, i))
            i = end
        elif c == '"':
            value, end = _quoted_name(text, i)
            tokens.append(Token(QIDENT, text[i:end], value, i))
            i = end
        elif op := next((o for o in _OPERATORS if text.startswith(o, i)), None):
            tokens.append(Token(OP, op, op, i))
            i += len(op)
        else:
            hint = next((h for bad, h in _NOT_CQL2.items() if text.startswith(bad, i)), None)
            shown = f"'{c}'" if c.isprintable() else f"U+{ord(c):04X}"
            raise CQL2SyntaxError(i, hint or f"unexpected character {shown}")
    tokens.append(Token(END, "", None, n))
    return tokens


# -- what the parser builds ------------------------------------------------------------------------
# kinds of parsed pieces, so that each place can say which it takes (the BNF's expression classes)
COND, BOOL, PROP, FUNC, TEXT, CHAR = "condition", "boolean", "property", "function call", "text", "CASEI/ACCENTI"
NUMBER, ARITH, INSTANT, INTERVAL, GEOM, ARRAY = "number", "arithmetic", "instant", "interval", "geometry", "array"
_NOUN = {COND: "a condition", BOOL: "TRUE/FALSE", PROP: "a property", FUNC: "a function call", TEXT: "a text",
         CHAR: "a CASEI/ACCENTI text", NUMBER: "a number", ARITH: "an arithmetic expression",
         INSTANT: "a date or timestamp", INTERVAL: "an interval", GEOM: "a geometry", ARRAY: "an array"}

_CONDITION = {COND, BOOL, FUNC}
_SCALAR = {TEXT, CHAR, NUMBER, INSTANT, ARITH, BOOL, PROP, FUNC}
_CHARACTER = {TEXT, CHAR, PROP, FUNC}
_NUMERIC = {NUMBER, ARITH, PROP, FUNC}
_RANGE = _NUMERIC | {INSTANT}  # BETWEEN on dates too: the evaluators compare them like numbers
_SPATIAL_ARG = {GEOM, PROP, FUNC}
_TEMPORAL_ARG = {INSTANT, INTERVAL, PROP, FUNC}
_ARRAY_ARG = {ARRAY, PROP, FUNC}
_NULLABLE = set(_NOUN) - {ARRAY}

_SCALAR_WANTED = "a text, number, date, timestamp, TRUE/FALSE, property or function"
_NUMERIC_WANTED = "a number, property or function"
_OPERATOR_WANTED = "a comparison (=, <>, <, <=, >, >=, LIKE, BETWEEN, IN or IS NULL)"

_RESERVED = {"AND", "OR", "NOT", "LIKE", "BETWEEN", "IN", "IS", "NULL", "TRUE", "FALSE", "DIV"}
_COMPARISONS: dict[str, Callable[[Any, Any], ast.Node]] = {
    "=": ast.Equal, "<>": ast.NotEqual, "<": ast.LessThan, "<=": ast.LessEqual,
    ">": ast.GreaterThan, ">=": ast.GreaterEqual}
_SPATIAL: dict[str, Callable[[Any, Any], ast.Node]] = {
    "S_INTERSECTS": ast.GeometryIntersects, "S_EQUALS": ast.GeometryEquals, "S_DISJOINT": ast.GeometryDisjoint,
    "S_TOUCHES": ast.GeometryTouches, "S_WITHIN": ast.GeometryWithin, "S_OVERLAPS": ast.GeometryOverlaps,
    "S_CROSSES": ast.GeometryCrosses, "S_CONTAINS": ast.GeometryContains}
_ARRAY: dict[str, Callable[[Any, Any], ast.Node]] = {
    "A_EQUALS": ast.ArrayEquals, "A_CONTAINS": ast.ArrayContains, "A_CONTAINEDBY": ast.ArrayContainedBy,
    "A_OVERLAPS": ast.ArrayOverlaps}


class _Intersects(Enum):
    """The op of T_INTERSECTS, which pygeofilter's TemporalComparisonOp lacks."""

    INTERSECTS = "INTERSECTS"


def _t_intersects(lhs: Any, rhs: Any) -> ast.TimeOverlaps:
    """T_INTERSECTS as the TimeOverlaps node cql2-json gives, marked so that it keeps its own meaning."""
    node = ast.TimeOverlaps(lhs, rhs)
    # pygeofilter files T_INTERSECTS under the strict T_OVERLAPS; the evaluators (features.cql,
    # features.cql_sta) read op.name and test INTERSECTS inclusively, so the node keeps cql2-json's
    # type and equality but says which test it is
    node.op = _Intersects.INTERSECTS  # type: ignore[misc]
    return node


# CQL2's names; pygeofilter calls STARTS/FINISHES BEGINS/ENDS, as its cql2-json parser's t_begins etc.
_TEMPORAL: dict[str, Callable[[Any, Any], ast.Node]] = {
    "T_AFTER": ast.TimeAfter, "T_BEFORE": ast.TimeBefore, "T_CONTAINS": ast.TimeContains,
    "T_DISJOINT": ast.TimeDisjoint, "T_DURING": ast.TimeDuring, "T_EQUALS": ast.TimeEquals,
    "T_FINISHEDBY": ast.TimeEndedBy, "T_FINISHES": ast.TimeEnds, "T_INTERSECTS": _t_intersects,
    "T_MEETS": ast.TimeMeets, "T_METBY": ast.TimeMetBy, "T_OVERLAPPEDBY": ast.TimeOverlappedBy,
    "T_OVERLAPS": ast.TimeOverlaps, "T_STARTEDBY": ast.TimeBegunBy, "T_STARTS": ast.TimeBegins}
_GEOMETRY_TAGS = {"POINT": "Point", "LINESTRING": "LineString", "POLYGON": "Polygon", "MULTIPOINT": "MultiPoint",
                  "MULTILINESTRING": "MultiLineString", "MULTIPOLYGON": "MultiPolygon",
                  "GEOMETRYCOLLECTION": "GeometryCollection"}

_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIMESTAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
                        r"([Zz]|[+-][0-9]{2}:[0-9]{2})?")


def _date(tok: Token) -> date | None:
    """The date in a quoted 'YYYY-MM-DD', None when the text has another form."""
    m = _DATE.fullmatch(tok.value)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise CQL2SyntaxError(tok.pos, f"'{tok.value}' is not a calendar date") from None


def _timestamp(tok: Token) -> datetime | None:
    """The zone-aware time in a quoted RFC 3339 timestamp, None when the text has another form."""
    m = _TIMESTAMP.fullmatch(tok.value)
    if m is None:
        return None
    zone = m[8]
    tz: timezone = UTC  # CQL2 writes timestamps in UTC ('Z'); one without a zone is taken as UTC too
    if zone is not None and zone not in ("Z", "z"):
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise CQL2SyntaxError(tok.pos, f"'{zone}' is not a time zone offset")
        offset = timedelta(hours=hours, minutes=minutes)
        tz = timezone(offset if zone[0] == "+" else -offset)
    micro = int((m[7] or "")[:6].ljust(6, "0"))  # Python keeps microseconds; finer digits are dropped
    try:
        return datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), micro, tzinfo=tz)
    except ValueError:
        raise CQL2SyntaxError(tok.pos, f"'{tok.value}' is not a valid timestamp") from None


@dataclass(slots=True)
class _Item:
    """A parsed piece: its tree, its kind, the token it starts at, and whether it was in parentheses."""

    node: Any
    kind: str
    start: Token
    grouped: bool = False
    height: int = 1


# -- the parser ------------------------------------------------------------------------------------
class _Parser:
    """Recursive descent over the tokens, one method per precedence level of the BNF."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- token access ------------------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != END:
            self.i += 1
        return tok

    @staticmethod
    def keyword(tok: Token) -> str:
        # keywords are ASCII: upper() would turn a Turkish dotless 'ın' into IN
        return tok.value.upper() if tok.kind == IDENT and tok.value.isascii() else ""

    def at_keyword(self, *words: str) -> bool:
        return self.keyword(self.peek()) in words

    def at_op(self, *ops: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == OP and tok.text in ops

    # -- errors ------------------------------------------------------------------------------------
    def fail(self, wanted: str, hint: str = "") -> NoReturn:
        """CQL2SyntaxError at the current token: what was wanted, after what, and what came instead."""
        tok = self.peek()
        prev = self.tokens[self.i - 1] if self.i > 0 else None
        after = f" after {_show(prev)}" if prev is not None else ""
        if tok.kind == END:
            raise CQL2SyntaxError(prev.pos if prev else 0, f"expected {wanted}{after} but the filter ended{hint}")
        raise CQL2SyntaxError(tok.pos, f"expected {wanted}{after} but found {_show(tok)}{hint}")

    def expect_op(self, op: str, wanted: str = "") -> Token:
        if not self.at_op(op):
            self.fail(wanted or f"'{op}'")
        return self.advance()

    @staticmethod
    def need(item: _Item, kinds: set[str], role: str, wanted: str) -> None:
        if item.kind not in kinds:
            raise CQL2SyntaxError(item.start.pos, f"{role} must be {wanted}, not {_NOUN[item.kind]}")

    def condition(self, item: _Item) -> None:
        """A value where a condition belongs: name the operator that should have followed it."""
        if item.kind in _CONDITION:
            return
        word = self.keyword(self.peek())
        hint = ""
        if word in _TEMPORAL or word in _SPATIAL or word in _ARRAY:
            hint = f" ({word} is written as a function: {word}(a, b))"
        self.fail(_OPERATOR_WANTED, hint)

    @staticmethod
    def built(node: Any, kind: str, start: Token, parts: list[_Item], at: Token) -> _Item:
        """A node over `parts`, a level above the highest of them (CQL2SyntaxError at `at` past MAX_HEIGHT)."""
        height = 1 + max((p.height for p in parts), default=0)
        if height > MAX_HEIGHT:
            raise CQL2SyntaxError(at.pos, f"the filter nests more than {MAX_HEIGHT} operators deep here "
                                              "(a long OR of values is written x IN (...))")
        return _Item(node, kind, start, height=height)

    @contextmanager
    def nested(self, tok: Token) -> Iterator[None]:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise CQL2SyntaxError(tok.pos, f"the filter nests more than {MAX_DEPTH} levels deep")
            yield
        finally:
            self.depth -= 1

    # -- boolean levels ----------------------------------------------------------------------------
    def filter(self) -> Any:
        if self.peek().kind == END:
            raise CQL2SyntaxError(0, "the filter is empty")
        item = self.or_()
        self.condition(item)
        if self.peek().kind != END:
            self.fail("AND, OR or the end of the filter")
        return item.node

    def or_(self) -> _Item:
        left = self.and_()
        while self.at_keyword("OR"):
            self.condition(left)
            op = self.advance()
            right = self.and_()
            self.condition(right)
            left = self.built(ast.Or(left.node, right.node), COND, left.start, [left, right], op)
        return left

    def and_(self) -> _Item:
        left = self.not_()
        while self.at_keyword("AND"):
            self.condition(left)
            op = self.advance()
            right = self.not_()
            self.condition(right)
            left = self.built(ast.And(left.node, right.node), COND, left.start, [left, right], op)
        return left

    def not_(self) -> _Item:
        nots: list[Token] = []
        while self.at_keyword("NOT"):
            nots.append(self.advance())
        item = self.predicate()
        if nots:
            self.condition(item)
            for tok in reversed(nots):
                item = self.built(ast.Not(item.node), COND, tok, [item], tok)
        return item

    def predicate(self) -> _Item:
        left = self.additive()
        tok = self.peek()
        if tok.kind == OP and tok.text in _COMPARISONS:
            self.need(left, _SCALAR, f"the left side of '{tok.text}'", _SCALAR_WANTED)
            self.advance()
            right = self.additive()
            self.need(right, _SCALAR, f"the right side of '{tok.text}'", _SCALAR_WANTED)
            return self.built(_COMPARISONS[tok.text](left.node, right.node), COND, left.start, [left, right], tok)
        negated = self.at_keyword("NOT") and self.keyword(self.peek(1)) in ("LIKE", "BETWEEN", "IN")
        if negated:
            self.advance()
        op = self.peek()
        word = self.keyword(op)
        node: ast.Node
        parts = [left]
        if word == "LIKE":
            self.need(left, _CHARACTER, "the left side of LIKE", "a text, property or function")
            self.advance()
            pattern, nocase = self.like_pattern()
            node = ast.Like(left.node, pattern, nocase, "%", "_", "\\", False)
        elif word == "BETWEEN":
            self.need(left, _RANGE, "the value before BETWEEN", "a number, date, timestamp, property or function")
            self.advance()
            low = self.additive()
            self.need(low, _RANGE, "the low end of BETWEEN", "a number, date, timestamp, property or function")
            if not self.at_keyword("AND"):
                self.fail("AND")
            self.advance()
            high = self.additive()
            self.need(high, _RANGE, "the high end of BETWEEN", "a number, date, timestamp, property or function")
            node = ast.Between(left.node, low.node, high.node, False)
            parts += [low, high]
        elif word == "IN":
            self.need(left, _SCALAR, "the value before IN", _SCALAR_WANTED)
            self.advance()
            items = self.in_list()
            node = ast.In(left.node, [item.node for item in items], False)
            parts += items
        elif word == "IS":
            self.advance()
            negated = self.at_keyword("NOT")
            if negated:
                self.advance()
            if not self.at_keyword("NULL"):
                self.fail("NULL")
            self.advance()
            self.need(left, _NULLABLE, "the value before IS NULL", "a single value")
            node = ast.IsNull(left.node, False)
        else:
            return left
        # cql2-json writes "NOT LIKE" etc. as {"op": "not", "args": [{"op": "like", ...}]}: so does this
        item = self.built(node, COND, left.start, parts, op)
        return self.built(ast.Not(node), COND, left.start, [item], op) if negated else item

    def like_pattern(self) -> tuple[str, bool]:
        """A LIKE pattern: a quoted text, perhaps in CASEI(...), which makes the match case-insensitive."""
        opened = 0
        while self.at_keyword("CASEI", "ACCENTI") and self.at_op("(", ahead=1):
            tok = self.advance()
            if self.keyword(tok) == "ACCENTI":
                # a Like node has no accent flag, and the evaluators take the pattern as a plain text
                raise CQL2SyntaxError(tok.pos, "ACCENTI(...) around a LIKE pattern is not supported")
            self.advance()
            opened += 1
        tok = self.peek()
        if tok.kind != STR:
            self.fail("a quoted pattern such as '%text%'")
        self.advance()
        for _ in range(opened):
            self.expect_op(")")
        return tok.value, opened > 0

    def in_list(self) -> list[_Item]:
        self.expect_op("(", "'(' and a list of values")
        items: list[_Item] = []
        while True:
            item = self.additive()
            self.need(item, _SCALAR, "a value in the IN list", _SCALAR_WANTED)
            items.append(item)
            if not self.at_op(","):
                self.expect_op(")", "',' or ')'")
                return items
            self.advance()

    # -- arithmetic levels -------------------------------------------------------------------------
    def additive(self) -> _Item:
        left = self.term()
        while self.at_op("+", "-"):
            op = self.advance()
            self.need(left, _NUMERIC, f"the left side of '{op.text}'", _NUMERIC_WANTED)
            right = self.term()
            self.need(right, _NUMERIC, f"the right side of '{op.text}'", _NUMERIC_WANTED)
            node = (ast.Add if op.text == "+" else ast.Sub)(left.node, right.node)
            left = self.built(node, ARITH, left.start, [left, right], op)
        return left

    def term(self) -> _Item:
        left = self.power()
        while self.at_op("*", "/", "%") or self.at_keyword("DIV"):
            op = self.advance()
            name = op.text if op.kind == OP else "div"
            self.need(left, _NUMERIC, f"the left side of '{name}'", _NUMERIC_WANTED)
            right = self.power()
            self.need(right, _NUMERIC, f"the right side of '{name}'", _NUMERIC_WANTED)
            if name in ("*", "/"):
                node: ast.Node = (ast.Mul if name == "*" else ast.Div)(left.node, right.node)
            else:  # pygeofilter has no modulo / integer division node; cql2-json's {"op": "%"} has none either
                node = ast.Function(name, [left.node, right.node])
            left = self.built(node, ARITH, left.start, [left, right], op)
        return left

    def power(self) -> _Item:
        factors = [self.unary()]
        carets: list[Token] = []
        while self.at_op("^"):
            carets.append(self.advance())
            self.need(factors[-1], _NUMERIC, "the left side of '^'", _NUMERIC_WANTED)
            factors.append(self.unary())
            self.need(factors[-1], _NUMERIC, "the right side of '^'", _NUMERIC_WANTED)
        item = factors.pop()
        while factors:  # a ^ b ^ c is a ^ (b ^ c)
            base = factors.pop()
            item = self.built(ast.Function("^", [base.node, item.node]), ARITH, base.start, [base, item], carets.pop())
        return item

    def unary(self) -> _Item:
        signs: list[Token] = []
        while self.at_op("-", "+"):
            signs.append(self.advance())
        item = self.primary()
        if not signs:
            return item
        negative = sum(tok.text == "-" for tok in signs) % 2 == 1
        if item.kind == NUMBER:
            return _Item(-item.node if negative else item.node, NUMBER, signs[0], height=item.height)
        self.need(item, _NUMERIC, f"the value after '{signs[-1].text}'", _NUMERIC_WANTED)
        if not negative:
            return _Item(item.node, item.kind, signs[0], height=item.height)
        # cql2-json has no negation: -x is written {"op": "*", "args": [-1, x]}
        return self.built(ast.Mul(-1, item.node), ARITH, signs[0], [item], signs[0])

    # -- primaries ---------------------------------------------------------------------------------
    def primary(self) -> _Item:
        tok = self.peek()
        if tok.kind == NUM:
            self.advance()
            return _Item(tok.value, NUMBER, tok)
        if tok.kind == STR:
            self.advance()
            return _Item(tok.value, TEXT, tok)
        if tok.kind == QIDENT:
            self.advance()
            return _Item(ast.Attribute(tok.value), PROP, tok)
        if tok.kind == IDENT:
            return self.name()
        if self.at_op("("):
            return self.group()
        self.fail("a value")

    def group(self) -> _Item:
        """( expression ), or the array ( a, b, ... ) / ()."""
        open_ = self.advance()
        with self.nested(open_):
            if self.at_op(")"):
                self.advance()
                return _Item([], ARRAY, open_)
            first = self.or_()
            if not self.at_op(","):
                self.expect_op(")")
                return _Item(first.node, first.kind, open_, grouped=True, height=first.height)
            elements = [first]
            while self.at_op(","):
                self.advance()
                elements.append(self.or_())
            self.expect_op(")", "',' or ')'")
        return self.built([e.node for e in elements], ARRAY, open_, elements, open_)

    def name(self) -> _Item:
        """A name: a keyword literal, a geometry, a call of a built-in or other function, or a property."""
        tok = self.peek()
        word = self.keyword(tok)
        if word in ("TRUE", "FALSE"):
            self.advance()
            return _Item(word == "TRUE", BOOL, tok)
        if word in _RESERVED:
            self.fail("a value", " (compare with NULL as: x IS NULL)" if word == "NULL" else "")
        if word in _GEOMETRY_TAGS and (self.at_op("(", ahead=1) or self.keyword(self.peek(1)) in ("Z", "EMPTY")):
            return _Item(values.Geometry(self.geometry()), GEOM, tok)
        if not self.at_op("(", ahead=1):
            self.advance()
            return _Item(ast.Attribute(tok.value), PROP, tok)
        if word in ("DATE", "TIMESTAMP"):
            return self.instant(word)
        if word == "INTERVAL":
            return self.interval()
        args = self.arguments()
        if word in ("BBOX", "ENVELOPE"):
            return self.bbox(tok, word, args)
        if word in ("CASEI", "ACCENTI"):
            self.count(tok, word, args, 1)
            self.need(args[0], _CHARACTER, f"the argument of {word}", "a text, property or function")
            return self.built(ast.Function("lower" if word == "CASEI" else "accenti", [args[0].node]), CHAR, tok,
                              args, tok)
        for table, kinds, wanted in ((_SPATIAL, _SPATIAL_ARG, "a geometry, property or function"),
                                     (_TEMPORAL, _TEMPORAL_ARG, "a date, timestamp, interval, property or function"),
                                     (_ARRAY, _ARRAY_ARG, "an array, property or function")):
            if word in table:
                self.count(tok, word, args, 2)
                if table is _ARRAY:  # ('a') in an array's place is the one-element array
                    args = [self.built([a.node], ARRAY, a.start, [a], a.start) if a.grouped and a.kind != ARRAY else a
                            for a in args]
                for nth, arg in zip(("first", "second"), args, strict=True):
                    self.need(arg, kinds, f"the {nth} argument of {word}", wanted)
                return self.built(table[word](args[0].node, args[1].node), COND, tok, args, tok)
        return self.built(ast.Function(tok.value, [a.node for a in args]), FUNC, tok, args, tok)

    @staticmethod
    def count(tok: Token, word: str, args: list[_Item], n: int) -> None:
        if len(args) != n:
            raise CQL2SyntaxError(tok.pos, f"{word} takes {n} argument{'s' if n > 1 else ''}, not {len(args)}")

    def arguments(self) -> list[_Item]:
        """The name, '(', the comma-separated arguments and ')' of a call."""
        self.advance()
        open_ = self.advance()
        args: list[_Item] = []
        with self.nested(open_):
            if self.at_op(")"):
                self.advance()
                return args
            while True:
                args.append(self.or_())
                if not self.at_op(","):
                    self.expect_op(")", "',' or ')'")
                    return args
                self.advance()

    def bbox(self, tok: Token, word: str, args: list[_Item]) -> _Item:
        """BBOX(west, south, [min height,] east, north [, max height]) as an Envelope; BBOX(geometry,
        minx, miny, maxx, maxy [, crs]) as the BBox predicate pygeofilter's own text parser gave."""
        v = [a.node for a in args]
        if len(args) in (4, 6) and all(a.kind == NUMBER for a in args):
            west, south, east, north = v if len(v) == 4 else (v[0], v[1], v[3], v[4])
            return _Item(values.Envelope(west, east, south, north), GEOM, tok)
        if (word == "BBOX" and len(args) in (5, 6) and args[0].kind in _SPATIAL_ARG
                and all(a.kind == NUMBER for a in args[1:5]) and (len(args) == 5 or args[5].kind == TEXT)):
            return self.built(ast.BBox(v[0], v[1], v[2], v[3], v[4], v[5] if len(v) == 6 else None), COND, tok,
                              args, tok)
        raise CQL2SyntaxError(tok.pos, f"{word} takes 4 or 6 numbers: west, south, [min height,] "
                                           "east, north[, max height]")

    def instant(self, word: str) -> _Item:
        tok = self.advance()
        self.advance()
        arg = self.peek()
        example = "'2020-01-31'" if word == "DATE" else "'2020-01-31T12:00:00Z'"
        if arg.kind != STR:
            self.fail(f"a quoted {word.lower()} such as {example}")
        self.advance()
        value = _date(arg) if word == "DATE" else _timestamp(arg)
        if value is None:
            raise CQL2SyntaxError(arg.pos, f"{word} takes a {word.lower()} written as {example}, "
                                               f"not '{arg.value[:40]}'")
        self.expect_op(")")
        return _Item(value, INSTANT, tok)

    def interval(self) -> _Item:
        tok = self.advance()
        open_ = self.advance()
        with self.nested(open_):
            start = self.interval_end()
            self.expect_op(",", "',' and the end of the interval")
            end = self.interval_end()
            self.expect_op(")")
        return self.built(values.Interval(start.node, end.node), INTERVAL, tok, [start, end], tok)

    def interval_end(self) -> _Item:
        """One end of an INTERVAL: a quoted date or timestamp, '..' (open), a property or a function."""
        tok = self.peek()
        if tok.kind == STR:
            self.advance()
            if tok.value == "..":
                return _Item(None, INSTANT, tok)
            value = _date(tok) or _timestamp(tok)
            if value is None:
                raise CQL2SyntaxError(tok.pos, "an interval's ends are dates ('2020-01-31'), timestamps "
                                                   f"('2020-01-31T12:00:00Z') or '..', not '{tok.value[:40]}'")
            return _Item(value, INSTANT, tok)
        item = self.additive()
        self.need(item, {INSTANT, PROP, FUNC}, "an end of INTERVAL", "a quoted date or timestamp, '..', a property "
                  "or a function")
        return item

    # -- WKT ---------------------------------------------------------------------------------------
    def geometry(self) -> dict[str, Any]:
        """A WKT geometry as the GeoJSON dict cql2-json carries (coordinates as written)."""
        tag = self.advance()
        kind = _GEOMETRY_TAGS[self.keyword(tag)]
        dims: list[int | None] = [None]
        if self.at_keyword("Z"):
            self.advance()
            dims[0] = 3
        if self.at_keyword("EMPTY"):
            self.advance()
            return {"type": kind, "geometries" if kind == "GeometryCollection" else "coordinates": []}
        if kind == "GeometryCollection":
            open_ = self.expect_op("(", "'(' or EMPTY")
            members = []
            with self.nested(open_):
                while True:
                    if self.keyword(self.peek()) not in _GEOMETRY_TAGS:
                        self.fail("a WKT geometry such as POINT(1 2)")
                    members.append(self.geometry())
                    if not self.at_op(","):
                        self.expect_op(")", "',' or ')'")
                        return {"type": kind, "geometries": members}
                    self.advance()
        coordinates: Any
        if kind == "Point":
            coordinates = self.point_text(dims, "'(' or EMPTY")
        elif kind == "LineString":
            coordinates = self.points(dims, 2, "a LINESTRING")
        elif kind == "Polygon":
            coordinates = self.rings(dims)
        elif kind == "MultiPoint":
            # the BNF wants MULTIPOINT((1 2), (3 4)); MULTIPOINT(1 2, 3 4) is common WKT too
            coordinates = self.listed(lambda: self.point_text(dims) if self.at_op("(") else self.point(dims))
        elif kind == "MultiLineString":
            coordinates = self.listed(lambda: self.points(dims, 2, "each LINESTRING"))
        else:
            coordinates = self.listed(lambda: self.rings(dims))
        return {"type": kind, "coordinates": coordinates}

    def listed(self, element: Callable[[], Any]) -> list[Any]:
        """( element, element, ... )"""
        self.expect_op("(", "'(' or EMPTY")
        out = [element()]
        while self.at_op(","):
            self.advance()
            out.append(element())
        self.expect_op(")", "',' or ')'")
        return out

    def rings(self, dims: list[int | None]) -> list[Any]:
        return self.listed(lambda: self.points(dims, 4, "a polygon ring"))

    def point_text(self, dims: list[int | None], wanted: str = "'('") -> list[int | float]:
        """( x y [z] )"""
        self.expect_op("(", wanted)
        coords = self.point(dims)
        self.expect_op(")")
        return coords

    def points(self, dims: list[int | None], least: int, what: str) -> list[Any]:
        """( x y, x y, ... ) with at least `least` points."""
        open_ = self.expect_op("(")
        out = [self.point(dims)]
        while self.at_op(","):
            self.advance()
            out.append(self.point(dims))
        self.expect_op(")", "',' or ')'")
        if len(out) < least:
            raise CQL2SyntaxError(open_.pos, f"{what} needs at least {least} points, not {len(out)}")
        return out

    def point(self, dims: list[int | None]) -> list[int | float]:
        """x y [z], each a signed number; every point of one geometry has as many coordinates."""
        start = self.peek()
        coords: list[int | float] = []
        while len(coords) < 3 and (self.peek().kind == NUM or (self.at_op("+", "-") and self.peek(1).kind == NUM)):
            sign = -1 if self.at_op("-") else 1
            if self.peek().kind == OP:
                self.advance()
            coords.append(sign * self.advance().value)
        if len(coords) < 2:
            self.fail("a coordinate (a number)")
        if dims[0] is None:
            dims[0] = len(coords)
        elif len(coords) != dims[0]:
            raise CQL2SyntaxError(start.pos, f"expected {dims[0]} coordinates in this point, as in the "
                                                 f"geometry's others (or its Z), not {len(coords)}")
        return coords


def parse(text: str) -> Any:
    """A CQL2 text filter as the pygeofilter tree cql2-json gives for it; CQL2SyntaxError names where it fails."""
    if not isinstance(text, str):
        raise CQL2SyntaxError(0, f"a filter is text, not {type(text).__name__}")
    return _Parser(text).filter()
