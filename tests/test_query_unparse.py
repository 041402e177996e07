"""The query tree written back as text (nextLinks, expanded nextLinks) parses into the same tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorthings.query.limits import Limits
from sensorthings.query.parser import parse_filter, parse_query_options
from sensorthings.query.tree import (
    FUNCTIONS,
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
from sensorthings.query.unparse import duration_text, expr_text, next_link, option_pairs

ROUND_TRIP = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- generated trees, in the forms the parser builds -------------------------------------------------------
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
_DATETIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES)
_COORD = st.integers(-1800, 1800).map(lambda n: n / 10)


def _wkt(points: list[tuple[float, float]]) -> str:
    if len(points) == 1:
        return f"POINT ({points[0][0]} {points[0][1]})"
    return "LINESTRING (" + ", ".join(f"{x} {y}" for x, y in points) + ")"


LITERALS = st.one_of(
    st.just(Literal(None, "null")),
    st.booleans().map(lambda b: Literal(b, "bool")),
    st.integers(-(2**63) + 1, 2**63 - 1).map(lambda n: Literal(n, "int")),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: Literal(x, "float")),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda s: Literal(s, "string")),
    st.sampled_from(["it's", "''", "a;b)(,c", "50% & #1 + 2", "ü/é?=x"]).map(lambda s: Literal(s, "string")),
    _DATETIMES.map(lambda d: Literal(d, "datetime")),
    st.tuples(_DATETIMES, _DATETIMES).map(lambda p: Literal(p, "interval")),
    st.dates().map(lambda d: Literal(d, "date")),
    st.times().map(lambda t: Literal(t, "time")),
    st.timedeltas(min_value=timedelta(days=-10**6), max_value=timedelta(days=10**6)).map(
        lambda d: Literal(d, "duration")),
    st.lists(st.tuples(_COORD, _COORD), min_size=1, max_size=4).map(lambda p: Literal(_wkt(p), "geometry")),
)
PATHS = st.sampled_from([("name",), ("id",), ("result",), ("phenomenonTime",), ("properties", "owner"),
                         ("properties", "a-b[0]"), ("Datastream", "Thing", "name"), ("@iot.selfLink",)]).map(Path)
_OPS = ["eq", "ne", "gt", "ge", "lt", "le", "and", "or", "add", "sub", "mul", "div", "mod"]


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    calls = st.sampled_from(sorted(FUNCTIONS)).flatmap(
        lambda name: st.lists(children, min_size=FUNCTIONS[name][0], max_size=FUNCTIONS[name][1]).map(
            lambda args: Call(name, tuple(args))))
    # the parser folds a minus before a number into the number: `-5` is a literal, never neg(5)
    negatable = children.filter(lambda e: not (isinstance(e, Literal) and e.kind in ("int", "float")))
    return st.one_of(
        st.builds(BinaryOp, st.sampled_from(_OPS), children, children),
        st.builds(UnaryOp, st.just("not"), children),
        st.builds(UnaryOp, st.just("neg"), negatable),
        calls,
    )


EXPRESSIONS = st.recursive(st.one_of(LITERALS, PATHS), _extend, max_leaves=12)
ORDERBY = st.lists(st.builds(OrderBy, EXPRESSIONS, st.booleans()), min_size=1, max_size=3).map(tuple)
SELECT = st.lists(st.sampled_from(["id", "name", "description", "result", "phenomenonTime", "properties/owner",
                                   "@iot.selfLink", "Datastream"]), min_size=1, max_size=4, unique=True).map(tuple)
_NAVS = ["Datastreams", "Thing", "Locations", "Observations", "Sensor"]


def _options(expand: st.SearchStrategy[tuple[Expand, ...]], *, top_level: bool) -> st.SearchStrategy[QueryOptions]:
    return st.builds(
        QueryOptions,
        filter=st.none() | EXPRESSIONS,
        select=st.none() | SELECT,
        orderby=st.just(()) | ORDERBY,
        top=st.integers(0, 10_000) if top_level else st.none() | st.integers(0, 10_000),
        skip=st.integers(0, 2**63 - 1),
        count=st.none() | st.booleans(),
        expand=expand,
        result_format=st.none() | st.just("dataArray") if top_level else st.none(),
    )


def _expands(inner: st.SearchStrategy[tuple[Expand, ...]]) -> st.SearchStrategy[tuple[Expand, ...]]:
    # the parser merges items naming the same navigation property: one item per name
    return st.lists(st.sampled_from(_NAVS), max_size=2, unique=True).flatmap(
        lambda names: st.tuples(*(st.builds(Expand, st.just(n), _options(inner, top_level=False)) for n in names)))


EXPANDS = _expands(_expands(_expands(st.just(()))))
QUERIES = _options(EXPANDS, top_level=True)


# -- the round trip ----------------------------------------------------------------------------------------
@ROUND_TRIP
@given(EXPRESSIONS)
def test_filter_text_parses_into_the_same_tree(expr: Expr) -> None:
    assert parse_filter(expr_text(expr)) == expr


@ROUND_TRIP
@given(QUERIES)
def test_next_link_parses_into_the_same_options(options: QueryOptions) -> None:
    """What a client following a nextLink sends is the query the page answered, as a URL is decoded."""
    assert options.top is not None
    url = next_link("http://city.example/v1.1/Datastreams(7)/Observations", options, top=options.top,
                    skip=options.skip)
    parts = urlsplit(url)
    assert parts.path == "/v1.1/Datastreams(7)/Observations"
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert parse_query_options(params, Limits()) == options


def test_next_link_continues_by_skiptoken_or_skip() -> None:
    options = parse_query_options({"$filter": "result gt 1", "$top": "2", "$skip": "4"}, Limits())
    assert next_link("u", options, top=2, skip=6) == "u?$filter=result%20gt%201&$top=2&$skip=6"
    assert next_link("u", options, top=2, skip=6, skiptoken="abc") == "u?$filter=result%20gt%201&$top=2&$skiptoken=abc"


@pytest.mark.parametrize(("value", "text"), [
    (timedelta(hours=-1), "-PT1H"),
    (timedelta(seconds=1.5), "PT1.5S"),
    (timedelta(0), "PT0S"),
    (timedelta(days=2, hours=3), "P2DT3H"),
    (timedelta(days=-1, seconds=-0.000001), "-P1DT0.000001S"),
    (timedelta(weeks=3, minutes=1), "P21DT1M"),
])
def test_durations_are_written_as_the_parser_reads_them(value: timedelta, text: str) -> None:
    assert duration_text(value) == text
    assert parse_filter(f"duration'{text}' eq 1").left == Literal(value, "duration")  # type: ignore[union-attr]


def test_precedence_survives_the_round_trip() -> None:
    for text in ("(not a) eq b", "not a eq b and c", "a and (b and c)", "(a or b) and c", "-(a add b) mul 2",
                 "a sub (b sub c)", "a sub b sub c", "not (a or b)", "-(not a)"):
        tree = parse_filter(text)
        assert parse_filter(expr_text(tree)) == tree, (text, expr_text(tree))


def test_expand_options_are_written_back_whole() -> None:
    options = parse_query_options({"$expand": "Datastreams($select=name;$filter=name eq 'a;b';$expand="
                                              "Observations($orderby=phenomenonTime desc;$top=3;$count=true))"},
                                  Limits())
    assert dict(option_pairs(options))["$expand"] == ("Datastreams($filter=name eq 'a;b';$select=name;$expand="
                                                      "Observations($orderby=phenomenonTime desc;$top=3;$count=true))")
