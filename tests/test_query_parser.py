"""Tests for the SensorThings query option parser."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorthings.query.limits import Limits
from sensorthings.query.parser import (
    MAX_DEPTH,
    parse_expand,
    parse_filter,
    parse_orderby,
    parse_query_options,
    parse_select,
)
from sensorthings.query.tree import (
    FUNCTIONS,
    BinaryOp,
    Call,
    Expand,
    Literal,
    OrderBy,
    Path,
    QueryError,
    QueryOptions,
    UnaryOp,
)


def P(*segments: str) -> Path:
    return Path(tuple(segments))


def L(value: object, kind: str) -> Literal:
    return Literal(value, kind)  # type: ignore[arg-type]


def B(op: str, left: object, right: object) -> BinaryOp:
    return BinaryOp(op, left, right)  # type: ignore[arg-type]


def error(func: object, text: object) -> QueryError:
    with pytest.raises(QueryError) as info:
        func(text)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------------------------------------
# $filter: operators and precedence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a add b mul c", B("add", P("a"), B("mul", P("b"), P("c")))),
        ("a mul b add c", B("add", B("mul", P("a"), P("b")), P("c"))),
        ("a sub b sub c", B("sub", B("sub", P("a"), P("b")), P("c"))),
        ("a div b mod c", B("mod", B("div", P("a"), P("b")), P("c"))),
        (
            "not a eq 1 and b eq 2",
            B("and", UnaryOp("not", B("eq", P("a"), L(1, "int"))), B("eq", P("b"), L(2, "int"))),
        ),
        ("(a or b) and c", B("and", B("or", P("a"), P("b")), P("c"))),
        ("a or b and c", B("or", P("a"), B("and", P("b"), P("c")))),
        ("a and b or c", B("or", B("and", P("a"), P("b")), P("c"))),
        ("a or b or c", B("or", B("or", P("a"), P("b")), P("c"))),
        ("a add 1 gt b mul 2", B("gt", B("add", P("a"), L(1, "int")), B("mul", P("b"), L(2, "int")))),
        ("not not a", UnaryOp("not", UnaryOp("not", P("a")))),
        ("-a mul b", B("mul", UnaryOp("neg", P("a")), P("b"))),
        ("-(a add b)", UnaryOp("neg", B("add", P("a"), P("b")))),
        ("((((a))))", P("a")),
        ("a EQ 1 AND b Ne 2", B("and", B("eq", P("a"), L(1, "int")), B("ne", P("b"), L(2, "int")))),
        ("NOT a", UnaryOp("not", P("a"))),
        ("not(a)", UnaryOp("not", P("a"))),
    ],
)
def test_precedence(text: str, expected: object) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "ge", "lt", "le", "add", "sub", "mul", "div", "mod"])
def test_every_binary_operator(op: str) -> None:
    assert parse_filter(f"x {op} 2") == B(op, P("x"), L(2, "int"))


def test_long_or_chain_is_shallow_and_hashable() -> None:
    text = " or ".join(f"id eq {i}" for i in range(5000))
    tree = parse_filter(text)
    hash(tree)

    def leaves(node: object) -> list[int]:
        if isinstance(node, BinaryOp) and node.op == "or":
            return leaves(node.left) + leaves(node.right)
        assert isinstance(node, BinaryOp)
        return [node.right.value]  # type: ignore[union-attr]

    assert leaves(tree) == list(range(5000))


def test_positions() -> None:
    tree = parse_filter("name eq 'x' and  not(result gt -5)")
    assert isinstance(tree, BinaryOp)
    assert tree.pos == 0
    assert tree.left.pos == 0
    assert tree.left.right.pos == 8  # type: ignore[union-attr]
    assert tree.right.pos == 17
    assert tree.right.operand.pos == 21  # type: ignore[union-attr]
    assert tree.right.operand.right == Literal(-5, "int")  # type: ignore[union-attr]
    assert tree.right.operand.right.pos == 31  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# $filter: literals


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("null", None, "null"),
        ("NULL", None, "null"),
        ("true", True, "bool"),
        ("False", False, "bool"),
        ("42", 42, "int"),
        ("0", 0, "int"),
        ("10L", 10, "int"),
        ("-7", -7, "int"),
        ("1.5", 1.5, "float"),
        ("-0.5", -0.5, "float"),
        ("2e3", 2000.0, "float"),
        ("2.5E-1", 0.25, "float"),
        ("1.5d", 1.5, "float"),
        ("1.5f", 1.5, "float"),
        ("3m", 3.0, "float"),
        ("9223372036854775807", 9223372036854775807, "int"),
        ("92233720368547758070", 92233720368547758070.0, "float"),
        ("'hello'", "hello", "string"),
        ("''", "", "string"),
        ("'it''s'", "it's", "string"),
        ("'a (b), c; d'", "a (b), c; d", "string"),
        ("'ünïcode ✓'", "ünïcode ✓", "string"),
        ("2012-12-03", date(2012, 12, 3), "date"),
        ("07:16:23", time(7, 16, 23), "time"),
        ("07:16", time(7, 16), "time"),
        ("07:16:23.5", time(7, 16, 23, 500000), "time"),
        ("duration'P1DT2H'", timedelta(days=1, hours=2), "duration"),
        ("duration'PT30M'", timedelta(minutes=30), "duration"),
        ("duration'PT1.5S'", timedelta(seconds=1.5), "duration"),
        ("duration'P2W'", timedelta(weeks=2), "duration"),
        ("duration'-P1D'", timedelta(days=-1), "duration"),
        ("DURATION'p1d'", timedelta(days=1), "duration"),
        ("geography'POINT(1 2)'", "POINT(1 2)", "geometry"),
        ("geometry'POLYGON((0 0, 1 0, 1 1, 0 0))'", "POLYGON((0 0, 1 0, 1 1, 0 0))", "geometry"),
        ("GeoGraphy'SRID=4326;POINT(7.5 51.9)'", "POINT(7.5 51.9)", "geometry"),
        ("geography'LINESTRING(0 0, 1 1)'", "LINESTRING(0 0, 1 1)", "geometry"),
    ],
)
def test_literals(text: str, value: object, kind: str) -> None:
    node = parse_filter(text)
    assert node == Literal(value, kind)  # type: ignore[arg-type]
    assert type(node.value) is type(value)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2012-12-03T07:16:23Z", datetime(2012, 12, 3, 7, 16, 23, tzinfo=UTC)),
        ("2012-12-03T07:16Z", datetime(2012, 12, 3, 7, 16, tzinfo=UTC)),
        ("2012-12-03T07:16:23", datetime(2012, 12, 3, 7, 16, 23, tzinfo=UTC)),
        (
            "2012-12-03T07:16:23.123+02:00",
            datetime(2012, 12, 3, 7, 16, 23, 123000, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "2012-12-03T07:16:23-05:30",
            datetime(2012, 12, 3, 7, 16, 23, tzinfo=timezone(-timedelta(hours=5.5))),
        ),
        ("datetime'2012-12-03T07:16:23Z'", datetime(2012, 12, 3, 7, 16, 23, tzinfo=UTC)),
    ],
)
def test_datetimes_are_aware(text: str, expected: datetime) -> None:
    node = parse_filter(text)
    assert node == Literal(expected, "datetime")
    assert node.value.tzinfo is not None  # type: ignore[union-attr]
    assert node.value.utcoffset() == expected.utcoffset()  # type: ignore[union-attr]


def test_interval() -> None:
    node = parse_filter("phenomenonTime ge 2012-12-03T00:00:00Z/2012-12-04T00:00:00+01:00")
    assert node == B(
        "ge",
        P("phenomenonTime"),
        L(
            (
                datetime(2012, 12, 3, tzinfo=UTC),
                datetime(2012, 12, 4, tzinfo=timezone(timedelta(hours=1))),
            ),
            "interval",
        ),
    )
    assert node.right.pos == 18  # type: ignore[union-attr]


def test_sql_injection_is_a_plain_string() -> None:
    assert parse_filter("name eq 'x''; DROP TABLE things; --'") == B(
        "eq", P("name"), L("x'; DROP TABLE things; --", "string")
    )
    assert parse_filter("name eq '1'' OR ''1''=''1'") == B("eq", P("name"), L("1' OR '1'='1", "string"))


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("2012-13-03", 0, "invalid date"),
        ("2012-12-03T25:00:00Z", 0, "invalid date-time"),
        ("x eq 2012-12-03T00:00:00Z/2012-12-32T00:00:00Z", 26, "invalid date-time"),
        ("25:00:00", 0, "invalid time"),
        ("datetime'yesterday'", 0, "invalid date-time"),
        ("x eq duration'P1Y'", 5, "years or months"),
        ("duration'P1M'", 0, "years or months"),
        ("duration'P'", 0, "invalid duration"),
        ("duration'PT'", 0, "invalid duration"),
        ("duration'1 day'", 0, "invalid duration"),
        ("x eq geography'POINT(1'", 5, "invalid WKT"),
        ("geometry'NOT WKT'", 0, "invalid WKT"),
        ("geometry''", 0, "invalid WKT"),
        ("1e999", 0, "out of range"),
        ("1.5L", 0, "invalid integer"),
        ("name eq 'abc", 8, "unterminated string"),
        ("x eq geography'POINT(1 2)", 14, "unterminated string"),
    ],
)
def test_literal_errors(text: str, position: int, fragment: str) -> None:
    err = error(parse_filter, text)
    assert err.position == position
    assert fragment in err.message
    assert err.option == "$filter"


# ---------------------------------------------------------------------------------------------
# $filter: paths and functions


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("name", ("name",)),
        ("id", ("id",)),
        ("@iot.id", ("id",)),
        ("Datastream/Thing/name", ("Datastream", "Thing", "name")),
        ("Datastream/@iot.id", ("Datastream", "id")),
        ("properties/owner/name", ("properties", "owner", "name")),
        ("Datastreams/Observations/result", ("Datastreams", "Observations", "result")),
        ("Thing/properties/building-id", ("Thing", "properties", "building-id")),
        ("properties/list[0]/name", ("properties", "list[0]", "name")),
        ("properties/matrix[1][2]", ("properties", "matrix[1][2]")),
        ("result/0", ("result", "0")),
        ("parameters/_x", ("parameters", "_x")),
        ("unitOfMeasurement/symbol", ("unitOfMeasurement", "symbol")),
    ],
)
def test_paths(text: str, segments: tuple[str, ...]) -> None:
    assert parse_filter(text) == Path(segments)


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("Datastream/", 11, "expected a property name after '/' but found end of input"),
        ("Datastream/foo-bar", 14, "found '-'"),  # dashes only inside JSON
        ("Datastream//name", 11, "expected a property name"),
        ("a.b eq 1", 0, "invalid property name"),
        ("properties/a b", 13, "expected an operator"),
    ],
)
def test_path_errors(text: str, position: int, fragment: str) -> None:
    err = error(parse_filter, text)
    assert err.position == position
    assert fragment in err.message


def _args_for(count: int) -> str:
    return ", ".join(["name", "'x'", "3", "4"][:count])


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_and_its_arity(name: str) -> None:
    low, high = FUNCTIONS[name]
    for count in range(low, high + 1):
        node = parse_filter(f"{name.upper()}({_args_for(count)})")
        assert isinstance(node, Call)
        assert node.name == name
        assert len(node.args) == count
    for count in (low - 1, high + 1):
        if count < 0:
            continue
        err = error(parse_filter, f"x eq {name}({_args_for(count)})")
        assert err.position == 5
        assert f"{name}() takes" in err.message


def test_function_call_tree() -> None:
    assert parse_filter("substringof('abc', tolower(name))") == Call(
        "substringof", (L("abc", "string"), Call("tolower", (P("name"),)))
    )
    assert parse_filter("year(phenomenonTime) eq 2012") == B(
        "eq", Call("year", (P("phenomenonTime"),)), L(2012, "int")
    )
    assert parse_filter("now()") == Call("now", ())
    assert parse_filter("geo.distance(location, geography'POINT(1 2)') lt 0.5") == B(
        "lt", Call("geo.distance", (P("location"), L("POINT(1 2)", "geometry"))), L(0.5, "float")
    )
    assert parse_filter("st_within(location, geometry'POLYGON((0 0, 1 0, 1 1, 0 0))')") == Call(
        "st_within", (P("location"), L("POLYGON((0 0, 1 0, 1 1, 0 0))", "geometry"))
    )
    assert parse_filter("round(result add 0.5) mul 2") == B(
        "mul", Call("round", (B("add", P("result"), L(0.5, "float")),)), L(2, "int")
    )


def test_function_names_as_properties() -> None:
    # Without parentheses a function name is just a property.
    assert parse_filter("length gt 3") == B("gt", P("length"), L(3, "int"))


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("foo(1)", 0, "unknown function 'foo'"),
        ("name eq bar.baz(1)", 8, "unknown function 'bar.baz'"),
        ("name eq 'x' and", 15, "unexpected end of input"),
        ("name eq (1", 10, "expected ')' but found end of input"),
        ("(a eq 1 b", 8, "expected ')' but found 'b'"),
        ("(name eq 1 eq", 13, "unexpected end of input"),
        ("", 0, "expected an expression but found end of input"),
        ("   ", 3, "expected an expression but found end of input"),
        ("name eq", 7, "unexpected end of input"),
        ("eq 1", 0, "expected an expression but found 'eq'"),
        ("name eq eq", 8, "expected an expression but found 'eq'"),
        ("name eq 1 foo", 10, "expected an operator or end of input but found 'foo'"),
        ("name eq 'a' 'b'", 12, "expected an operator or end of input but found string 'b'"),
        ("name eq )", 8, "expected an expression but found ')'"),
        ("name eq #", 8, "unexpected character '#'"),
        ("year(a b)", 7, "expected ',' or ')' but found 'b'"),
        ("year(a,)", 7, "expected an expression but found ')'"),
        ("name == 'x'", 5, "unexpected character '='"),
        ("name eq 1,", 9, "expected an operator or end of input but found ','"),
    ],
)
def test_filter_errors(text: str, position: int, message: str) -> None:
    err = error(parse_filter, text)
    assert err.message == message
    assert err.position == position
    assert err.option == "$filter"
    assert str(err) == f"$filter: {message} at position {position}"


@pytest.mark.parametrize(
    "text",
    [
        "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1),
        "not " * (MAX_DEPTH + 1) + "a",
        "-" * 5000 + "1",
        "a add " * 500 + "a",
        "a eq " * 500 + "a",
        "year(" * 500 + "a" + ")" * 500,
        "(" * 100000,
    ],
)
def test_nesting_is_bounded(text: str) -> None:
    err = error(parse_filter, text)
    assert "levels" in err.message


def test_nesting_at_the_limit_is_fine() -> None:
    text = "(" * MAX_DEPTH + "a eq 1" + ")" * MAX_DEPTH
    assert parse_filter(text) == B("eq", P("a"), L(1, "int"))


def test_equal_trees_ignore_positions() -> None:
    assert parse_filter("a  eq  1") == parse_filter("(a eq 1)")
    assert hash(parse_filter("a  eq  1")) == hash(parse_filter("(a eq 1)"))


# ---------------------------------------------------------------------------------------------
# $orderby and $select


def test_orderby() -> None:
    assert parse_orderby("phenomenonTime desc,id") == (
        OrderBy(P("phenomenonTime"), True),
        OrderBy(P("id"), False),
    )
    assert parse_orderby("result DESC") == (OrderBy(P("result"), True),)
    assert parse_orderby("name ASC , Datastream/name desc") == (
        OrderBy(P("name"), False),
        OrderBy(P("Datastream", "name"), True),
    )
    assert parse_orderby("year(phenomenonTime) desc, result add 1") == (
        OrderBy(Call("year", (P("phenomenonTime"),)), True),
        OrderBy(B("add", P("result"), L(1, "int")), False),
    )
    assert parse_orderby("@iot.id") == (OrderBy(P("id")),)


@pytest.mark.parametrize(
    ("text", "position"),
    [("", 0), ("name,", 5), ("name desc desc", 10), ("name sideways", 5), (",name", 0), ("name eq", 7)],
)
def test_orderby_errors(text: str, position: int) -> None:
    err = error(parse_orderby, text)
    assert err.option == "$orderby"
    assert err.position == position


def test_select() -> None:
    assert parse_select("id,name") == ("id", "name")
    assert parse_select(" @iot.id , name ,description ") == ("id", "name", "description")
    assert parse_select("@iot.selfLink,properties/owner") == ("@iot.selfLink", "properties/owner")
    assert parse_select("result,phenomenonTime,id,result") == ("result", "phenomenonTime", "id")


@pytest.mark.parametrize(("text", "position"), [("", 0), ("id,", 3), ("id name", 3), ("id,,x", 3), ("a/", 2)])
def test_select_errors(text: str, position: int) -> None:
    err = error(parse_select, text)
    assert err.option == "$select"
    assert err.position == position


# ---------------------------------------------------------------------------------------------
# $expand


def E(name: str, **options: object) -> Expand:
    return Expand(name, QueryOptions(**options))  # type: ignore[arg-type]


def test_expand_simple_and_paths() -> None:
    assert parse_expand("Datastreams") == (E("Datastreams"),)
    assert parse_expand("Thing , Sensor") == (E("Thing"), E("Sensor"))
    assert parse_expand("Datastreams/Observations/FeatureOfInterest") == (
        E("Datastreams", expand=(E("Observations", expand=(E("FeatureOfInterest"),)),)),
    )


def test_expand_nested_options() -> None:
    text = "Datastreams($orderby=name;$top=1;$expand=Observations($select=result;$filter=result gt 5;$top=1))"
    (datastreams,) = parse_expand(text)
    assert datastreams == E(
        "Datastreams",
        orderby=(OrderBy(P("name")),),
        top=1,
        expand=(E("Observations", select=("result",), filter=B("gt", P("result"), L(5, "int")), top=1),),
    )
    observations = datastreams.options.expand[0]
    assert observations.pos == text.index("Observations")
    # Node positions inside nested options are offsets into the whole $expand text.
    assert observations.options.filter.pos == text.index("result gt 5")  # type: ignore[union-attr]


def test_expand_all_inner_options() -> None:
    text = (
        "Observations($filter=result ge 1;$select=id,result;$orderby=phenomenonTime DESC;"
        "$top=5;$skip=10;$count=true;$expand=FeatureOfInterest($select=name))"
    )
    assert parse_expand(text) == (
        E(
            "Observations",
            filter=B("ge", P("result"), L(1, "int")),
            select=("id", "result"),
            orderby=(OrderBy(P("phenomenonTime"), True),),
            top=5,
            skip=10,
            count=True,
            expand=(E("FeatureOfInterest", select=("name",)),),
        ),
    )


def test_expand_masterportal() -> None:
    assert parse_expand("Locations,Datastreams/Observations($orderby=phenomenonTime desc;$top=1)") == (
        E("Locations"),
        E("Datastreams", expand=(E("Observations", orderby=(OrderBy(P("phenomenonTime"), True),), top=1),)),
    )


def test_expand_merging() -> None:
    assert parse_expand("Datastreams/Sensor,Datastreams/ObservedProperty") == (
        E("Datastreams", expand=(E("Sensor"), E("ObservedProperty"))),
    )
    assert parse_expand("Datastreams($top=1),Datastreams/Sensor") == (
        E("Datastreams", top=1, expand=(E("Sensor"),)),
    )
    assert parse_expand("Datastreams/Sensor,Datastreams($top=1)") == (
        E("Datastreams", top=1, expand=(E("Sensor"),)),
    )
    assert parse_expand("Datastreams($expand=Sensor),Datastreams/Sensor($select=name),Thing") == (
        E("Datastreams", expand=(E("Sensor", select=("name",)),)),
        E("Thing"),
    )
    assert parse_expand("Thing,Thing") == (E("Thing"),)


def test_expand_quotes_and_parentheses_in_values() -> None:
    (item,) = parse_expand("Observations($filter=result eq 'a;b)(,c''' and (x eq 1);$top=2)")
    assert item.options.filter == B(
        "and", B("eq", P("result"), L("a;b)(,c'", "string")), B("eq", P("x"), L(1, "int"))
    )
    assert item.options.top == 2


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "expected a navigation property name"),
        ("Datastreams,", 12, "expected a navigation property name"),
        ("Datastreams/", 12, "expected a navigation property name"),
        ("Datastreams(", 12, "expected ')'"),
        ("Datastreams()", 12, "expected a query option"),
        ("Datastreams($top=1;)", 19, "expected a query option"),
        ("Datastreams($foo=1)", 12, "unknown query option $foo"),
        ("Datastreams($resultFormat=dataArray)", 12, "unknown query option"),
        ("Datastreams($top=1;$top=2)", 19, "duplicate query option $top"),
        ("Datastreams($top)", 16, "expected '='"),
        ("Datastreams($top=x)", 17, "non-negative integer"),
        ("Datastreams($top=-1)", 17, "non-negative integer"),
        ("Datastreams($count=yes)", 19, "true or false"),
        ("Datastreams($filter=name eq)", 27, "in $filter of Datastreams: unexpected end of input"),
        (
            "Datastreams($expand=Observations($filter=result gt))",
            50,
            "in $filter of Datastreams/Observations: unexpected end of input",
        ),
        ("Things/Datastreams($select=a,)", 29, "in $select of Things/Datastreams"),
        ("Datastreams($filter='abc)", 20, "unterminated string"),
        ("Datastreams($top=1) Thing", 20, "expected ',', '(' or end of input"),
        ("Datastreams($top=1),Datastreams($top=2)", 20, "conflicting $top for expanded Datastreams"),
        ("Datastreams($top=10001)", 17, "maximum of 10000"),
        ("Datastreams)", 11, "expected ',', '(' or end of input"),
    ],
)
def test_expand_errors(text: str, position: int, fragment: str) -> None:
    err = error(parse_expand, text)
    assert err.option == "$expand"
    assert err.position == position
    assert fragment in err.message


def test_expand_nesting_is_bounded() -> None:
    assert "levels" in error(parse_expand, "A/" * MAX_DEPTH + "B").message
    assert (
        "levels" in error(parse_expand, "A($expand=" * (MAX_DEPTH + 1) + "B" + ")" * (MAX_DEPTH + 1)).message
    )
    assert "levels" in error(parse_expand, "A($expand=" * 2000 + "B" + ")" * 2000).message
    ok = parse_expand("A($expand=" * (MAX_DEPTH - 1) + "B" + ")" * (MAX_DEPTH - 1))
    hash(ok)


# ---------------------------------------------------------------------------------------------
# parse_query_options


def test_query_options() -> None:
    options = parse_query_options(
        {
            "$filter": "name eq 'x'",
            "$select": "id,name",
            "$orderby": "id desc",
            "$expand": "Datastreams($top=2)",
            "$top": "10",
            "$skip": "20",
            "$count": "true",
            "$resultFormat": "dataArray",
            "id": "ignored",
            "f": "json",
        },
        Limits(),
    )
    assert options == QueryOptions(
        filter=B("eq", P("name"), L("x", "string")),
        select=("id", "name"),
        orderby=(OrderBy(P("id"), True),),
        top=10,
        skip=20,
        count=True,
        expand=(E("Datastreams", top=2),),
        result_format="dataArray",
    )


def _options(params: dict[str, str]) -> QueryOptions:
    return parse_query_options(params, Limits())


def test_query_options_defaults() -> None:
    assert _options({}) == QueryOptions(top=100)
    assert parse_query_options({}, Limits(default_top=7)).top == 7
    assert parse_query_options({}, Limits(max_top=5)).top == 5  # the page size never exceeds max_top
    assert _options({"$top": "0"}).top == 0
    assert _options({"$Top": "5", "$COUNT": "FALSE"}) == QueryOptions(top=5, count=False)
    assert _options({"$resultformat": "DATAARRAY"}).result_format == "dataArray"
    assert _options({"$top": " 7 "}).top == 7
    assert _options({"$skip": "9223372036854775807"}).skip == 2**63 - 1


@pytest.mark.parametrize(
    ("params", "option", "position", "fragment"),
    [
        ({"$top": "10001"}, "$top", 0, "maximum of 10000"),
        ({"$top": "1" * 5000}, "$top", 0, "maximum of 10000"),
        ({"$top": "-1"}, "$top", 0, "non-negative integer"),
        ({"$top": "1.5"}, "$top", 0, "non-negative integer"),
        ({"$top": "١٢"}, "$top", 0, "non-negative integer"),
        ({"$top": ""}, "$top", 0, "non-negative integer"),
        ({"$skip": "x"}, "$skip", 0, "non-negative integer"),
        ({"$skip": "9223372036854775808"}, "$skip", 0, "too large"),
        ({"$count": "1"}, "$count", 0, "true or false"),
        ({"$resultFormat": "GeoJSON"}, "$resultFormat", 0, "only dataArray"),
        ({"$format": "json"}, "$format", 0, "unknown query option $format"),
        ({"$top": "1", "$TOP": "2"}, "$top", 0, "duplicate query option $top"),
        ({"$filter": "a eq"}, "$filter", 4, "unexpected end of input"),
        ({"$expand": "Datastreams($top=x)"}, "$expand", 17, "non-negative integer"),
        ({"$filter": ""}, "$filter", 0, "expected an expression"),
    ],
)
def test_query_option_errors(params: dict[str, str], option: str, position: int, fragment: str) -> None:
    err = error(_options, params)
    assert err.option == option
    assert err.position == position
    assert fragment in err.message


def test_max_top_applies_inside_expand() -> None:
    assert parse_query_options({"$top": "50"}, Limits(max_top=50)).top == 50
    err = error(lambda p: parse_query_options(p, Limits(max_top=50)), {"$expand": "Datastreams($top=51)"})
    assert "maximum of 50" in err.message
    assert err.position == 17


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the input, only QueryError may escape.

_TOKENS = [
    "(",
    ")",
    ",",
    "/",
    "-",
    "'",
    "''",
    ";",
    "=",
    "$",
    " ",
    "eq",
    "and",
    "or",
    "not",
    "add",
    "mul",
    "name",
    "Datastreams",
    "properties",
    "@iot.id",
    "1",
    "2.5",
    "1e5",
    "true",
    "null",
    "'x'",
    "2012-12-03",
    "T07:16:23Z",
    "07:16",
    "2012-12-03T07:16:23Z",
    "duration'P1D'",
    "geography'",
    "POINT(1 2)",
    "year(",
    "substring(",
    "geo.distance(",
    "$filter=",
    "$top=",
    "$expand=",
    "$select=",
    "$orderby=",
    "desc",
    "[0]",
]
_fuzz_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(_TOKENS), max_size=25).map("".join),
)
_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_query_errors(func: object, value: object) -> None:
    try:
        func(value)  # type: ignore[operator]
    except QueryError as err:
        assert isinstance(err.position, int)
        assert err.option


@_fuzz
@given(_fuzz_text)
def test_fuzz_filter(text: str) -> None:
    _only_query_errors(parse_filter, text)


@_fuzz
@given(_fuzz_text)
def test_fuzz_orderby(text: str) -> None:
    _only_query_errors(parse_orderby, text)


@_fuzz
@given(_fuzz_text)
def test_fuzz_select(text: str) -> None:
    _only_query_errors(parse_select, text)


@_fuzz
@given(_fuzz_text)
def test_fuzz_expand(text: str) -> None:
    _only_query_errors(parse_expand, text)


@_fuzz
@given(
    st.dictionaries(
        st.sampled_from(["$filter", "$select", "$orderby", "$expand", "$top", "$skip", "$count", "$x", "y"]),
        _fuzz_text,
        max_size=4,
    )
)
def test_fuzz_query_options(params: dict[str, str]) -> None:
    _only_query_errors(_options, params)


@pytest.mark.parametrize("text, bound", [
    ("phenomenonTime lt 2026-10-21T00:00:00Z", "observations.phenomenon_time_start < "),
    ("phenomenonTime le 2026-10-21T00:00:00Z", "observations.phenomenon_time_start <= "),
    ("2026-10-21T00:00:00Z gt phenomenonTime", "observations.phenomenon_time_start < "),
    ("2026-10-21T00:00:00Z ge phenomenonTime", "observations.phenomenon_time_start <= "),
])
def test_an_interval_before_a_time_bounds_its_start_too(text: str, bound: str) -> None:
    """`phenomenonTime lt t` means the interval ends before t; its start does too, and says so in SQL, so that the
    (Datastream, phenomenonTime) index bounds a day's scan on both sides (else it read on to the Datastream's end)."""
    from sensorthings.model import OBSERVATION
    from sensorthings.query.sql import Translator
    from sensorthings.store.postgres import PostgresDialect
    from sensorthings.store.schema import TABLES

    sql = str(Translator(PostgresDialect()).where(OBSERVATION, TABLES["observations"], parse_filter(text)).compile())
    assert bound in sql and "coalesce(observations.phenomenon_time_end" in sql


def test_a_select_reads_only_the_columns_it_writes() -> None:
    """`$select=result,phenomenonTime` reads the result's and the time's columns and the id, not the parameters,
    quality or validTime of every row (a day's chart of 1,440 rows: 7 columns of 15); a selected link to one entity
    reads its key."""
    from sensorthings.model import OBSERVATION
    from sensorthings.read import readable_columns, selected_columns
    from sensorthings.store.schema import TABLES

    table = TABLES["observations"]
    names = {c.name for c in selected_columns(OBSERVATION, table, ("result", "phenomenonTime"))}
    assert names == {"id", "phenomenon_time_start", "phenomenon_time_end", "result_type", "result_number",
                     "result_string", "result_json"}
    assert {c.name for c in selected_columns(OBSERVATION, table, ("result", "Datastream", "Observations"))} == {
        "id", "result_type", "result_number", "result_string", "result_json", "datastream_id"}
    assert selected_columns(OBSERVATION, table, None) == readable_columns(table)


def test_a_chart_reads_the_series_index_only() -> None:
    """On PostgreSQL a page of Observations needing only the series index's columns and the result selects text and
    JSON results by subqueries that CASE runs for such rows only (so that the plan is an index-only scan)."""
    from sqlalchemy.dialects import postgresql

    from sensorthings.model import OBSERVATION
    from sensorthings.read import _covered, selected_columns
    from sensorthings.store.postgres import PostgresDialect
    from sensorthings.store.schema import TABLES

    table = TABLES["observations"]
    chart = selected_columns(OBSERVATION, table, ("result", "phenomenonTime"))
    sql = str(_covered(table, chart, [], PostgresDialect()).where(table.c.datastream_id == 1)
              .compile(dialect=postgresql.dialect()))
    outer = sql.split("FROM observations \n")[-1]
    assert "text_result" not in outer and "CASE WHEN (observations.result_type" in sql
    assert _covered(table, selected_columns(OBSERVATION, table, ("result", "parameters")), [], PostgresDialect()) \
        is None
    assert _covered(table, selected_columns(OBSERVATION, table, ("phenomenonTime",)), [], PostgresDialect()) is None
