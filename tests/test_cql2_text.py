"""features.cql2_text: every CQL2 text construct against pygeofilter's cql2-json parser as the oracle,
error positions, and fuzzing (any input gives a tree or a CQL2SyntaxError, nothing else)."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pygeofilter import ast, values
from pygeofilter.parsers.cql2_json import parse as parse_json

from features.cql import FilterError, parse_filter
from features.cql2_text import MAX_DEPTH, MAX_HEIGHT, CQL2SyntaxError, parse


# -- the oracle --------------------------------------------------------------------------------------
def _standard(node: Any) -> Any:
    """The oracle's tree with LIKE's single-character wildcard as CQL2 defines it: '_' (pygeofilter says '.')."""
    if isinstance(node, ast.Like):
        node.singlechar = "_"
    if isinstance(node, ast.Node | values.Interval):
        for value in vars(node).values():
            _standard(value)
    elif isinstance(node, list):
        for value in node:
            _standard(value)
    return node


def oracle(obj: Any) -> Any:
    """What pygeofilter's cql2-json parser makes of a CQL2 JSON filter."""
    return _standard(parse_json(json.dumps(obj)))


def canon(x: Any) -> Any:
    """A tree as nested tuples of type names and values: == alone lets 1 == 1.0 == True and naive == aware slip."""
    if isinstance(x, ast.Attribute):
        return ("Attribute", x.name)
    if isinstance(x, ast.Node):
        op = getattr(x, "op", None)
        fields = tuple(sorted((k, canon(v)) for k, v in vars(x).items() if k != "op"))
        return (type(x).__name__, getattr(op, "name", None), fields)
    if isinstance(x, values.Geometry):
        return ("Geometry", json.dumps(x.geometry, sort_keys=True))
    if isinstance(x, values.Envelope | values.Interval):
        return (type(x).__name__, tuple(canon(v) for v in vars(x).values()))
    if isinstance(x, list | tuple):
        return ("list", tuple(canon(v) for v in x))
    if isinstance(x, datetime):
        return ("datetime", x.tzinfo is not None, (x.astimezone(UTC) if x.tzinfo else x).isoformat())
    if isinstance(x, date):
        return ("date", x.isoformat())
    return (type(x).__name__, x)


def same(text: str, tree: Any) -> None:
    """The text parses to `tree`, types and all."""
    got = parse(text)
    assert canon(got) == canon(tree), f"{text}\n got:  {got!r}\n want: {tree!r}"
    assert got == tree


def P(name: str) -> dict[str, str]:
    """A CQL2 JSON property."""
    return {"property": name}


def op(name: str, *args: Any) -> dict[str, Any]:
    """A CQL2 JSON operation."""
    return {"op": name, "args": list(args)}


def fn(name: str, *args: Any) -> dict[str, Any]:
    """A function call in the CQL2 JSON draft form pygeofilter 0.4 reads."""
    return {"function": {"name": name, "arguments": list(args)}}


RING = [[126.9, 37.5], [127.0, 37.5], [127.0, 37.6], [126.9, 37.6], [126.9, 37.5]]
RING_TEXT = "126.9 37.5, 127.0 37.5, 127.0 37.6, 126.9 37.6, 126.9 37.5"

# text, the same filter in the CQL2 JSON that pygeofilter 0.4 reads (its draft forms of between/in/function)
CASES: list[tuple[str, Any]] = [
    # comparisons, property names
    ("t = 1", op("=", P("t"), 1)),
    ("t <> 1", op("<>", P("t"), 1)),
    ("t < 1.5", op("<", P("t"), 1.5)),
    ("t <= -2", op("<=", P("t"), -2)),
    ("t > 1e3", op(">", P("t"), 1000.0)),
    ("t >= .5", op(">=", P("t"), 0.5)),
    ("numOfUnits >= 20 AND place = '마포구'", op("and", op(">=", P("numOfUnits"), 20), op("=", P("place"), "마포구"))),
    ("위도 > 37.5", op(">", P("위도"), 37.5)),
    ("eo:cloud_cover = 10", op("=", P("eo:cloud_cover"), 10)),
    ("properties.height.value = 3", op("=", P("properties.height.value"), 3)),
    ('"landsat:scene_id" = \'LC82030282019133LGN00\'', op("=", P("landsat:scene_id"), "LC82030282019133LGN00")),
    ('"name with space" = \'x\'', op("=", P("name with space"), "x")),
    ('"and" = 1', op("=", P("and"), 1)),
    ('"say ""hi""" = 1', op("=", P('say "hi"'), 1)),
    ("_x=1", op("=", P("_x"), 1)),
    ("date = 1", op("=", P("date"), 1)),
    ("'København'=name", op("=", "København", P("name"))),
    ("name = nameascii", op("=", P("name"), P("nameascii"))),
    ("flag = TRUE", op("=", P("flag"), True)),
    ("flag <> false", op("<>", P("flag"), False)),
    ("s = 'it''s'", op("=", P("s"), "it's")),
    ("s = 'it\\'s'", op("=", P("s"), "it's")),
    ("s = ''", op("=", P("s"), "")),
    ("s = 'a\nb'", op("=", P("s"), "a\nb")),
    # logic and precedence
    ("a = 1 OR b = 2 AND c = 3", op("or", op("=", P("a"), 1), op("and", op("=", P("b"), 2), op("=", P("c"), 3)))),
    ("(a = 1 OR b = 2) AND c = 3", op("and", op("or", op("=", P("a"), 1), op("=", P("b"), 2)), op("=", P("c"), 3))),
    ("a = 1 AND b = 2 AND c = 3", op("and", op("=", P("a"), 1), op("=", P("b"), 2), op("=", P("c"), 3))),
    ("a = 1 OR b = 2 OR c = 3", op("or", op("=", P("a"), 1), op("=", P("b"), 2), op("=", P("c"), 3))),
    ("NOT a = 1", op("not", op("=", P("a"), 1))),
    ("NOT (a = 1)", op("not", op("=", P("a"), 1))),
    ("NOT a = 1 AND b = 2", op("and", op("not", op("=", P("a"), 1)), op("=", P("b"), 2))),
    ("NOT NOT a = 1", op("not", op("not", op("=", P("a"), 1)))),
    ("NOT (a = 1 OR b = 2)", op("not", op("or", op("=", P("a"), 1), op("=", P("b"), 2)))),
    ("((((a = 1))))", op("=", P("a"), 1)),
    ("TRUE", True),
    ("false", False),
    ("TRUE AND a = 1", op("and", True, op("=", P("a"), 1))),
    # LIKE, BETWEEN, IN, IS NULL
    ("name LIKE '%합정%'", op("like", P("name"), "%합정%")),
    ("name like 'a_b\\%'", op("like", P("name"), "a_b\\%")),
    ("name NOT LIKE 'x%'", op("not", op("like", P("name"), "x%"))),
    ("'København' LIKE 'K_benhavn'", op("like", "København", "K_benhavn")),
    ("CASEI(name) LIKE 'abc%'", op("like", op("casei", P("name")), "abc%")),
    ("n BETWEEN 1 AND 10", op("between", P("n"), [1, 10])),
    ("n BETWEEN 1 AND 10 AND m = 1", op("and", op("between", P("n"), [1, 10]), op("=", P("m"), 1))),
    ("n NOT BETWEEN -1.5 AND m", op("not", op("between", P("n"), [-1.5, P("m")]))),
    ("pop_other between pop_min and pop_max", op("between", P("pop_other"), [P("pop_min"), P("pop_max")])),
    ("n IN (1, 2, 3)", op("in", P("n"), [1, 2, 3])),
    ("n IN ('a')", op("in", P("n"), ["a"])),
    ("n NOT IN ('a', 'b')", op("not", op("in", P("n"), ["a", "b"]))),
    ("CASEI(road) IN (CASEI('Οδος'), CASEI('Straße'))",
     op("in", op("casei", P("road")), [op("casei", "Οδος"), op("casei", "Straße")])),
    ("n IS NULL", op("isNull", P("n"))),
    ("n IS NOT NULL", op("not", op("isNull", P("n")))),
    ("n is not null or m is null", op("or", op("not", op("isNull", P("n"))), op("isNull", P("m")))),
    # arithmetic
    ("a + 1 > 2", op(">", op("+", P("a"), 1), 2)),
    ("a - b * c / 2 = 0", op("=", op("-", P("a"), op("/", op("*", P("b"), P("c")), 2)), 0)),
    ("(a - b) * c = 0", op("=", op("*", op("-", P("a"), P("b")), P("c")), 0)),
    ("a - b - c = 0", op("=", op("-", op("-", P("a"), P("b")), P("c")), 0)),
    ("-a < 0", op("<", op("*", -1, P("a")), 0)),
    ("a = - 5", op("=", P("a"), -5)),
    ("a = --5", op("=", P("a"), 5)),
    ("a = +5", op("=", P("a"), 5)),
    ("a - -1 = 0", op("=", op("-", P("a"), -1), 0)),
    ("a = 1 - 1", op("=", P("a"), op("-", 1, 1))),
    ("a % 3 = 1", op("=", fn("%", P("a"), 3), 1)),
    ("a div 2 = 3", op("=", fn("div", P("a"), 2), 3)),
    ("a DIV 2 = 3", op("=", fn("div", P("a"), 2), 3)),
    ("a ^ 2 = 4", op("=", fn("^", P("a"), 2), 4)),
    ("a ^ 2 ^ 3 = 4", op("=", fn("^", P("a"), fn("^", 2, 3)), 4)),
    ("2 * a ^ 2 = 8", op("=", op("*", 2, fn("^", P("a"), 2)), 8)),
    ("value = - foo * 2.0 + \"bar\" / 6.1234 - \"x\" ^ 2.0",
     op("=", P("value"), op("-", op("+", op("*", op("*", -1, P("foo")), 2.0), op("/", P("bar"), 6.1234)),
                            fn("^", P("x"), 2.0)))),
    # dates and times
    ("d = DATE('2020-01-31')", op("=", P("d"), {"date": "2020-01-31"})),
    ("t > TIMESTAMP('2012-06-05T00:00:00Z')", op(">", P("t"), {"timestamp": "2012-06-05T00:00:00Z"})),
    ("t > timestamp('2012-06-05T00:00:00.25Z')", op(">", P("t"), {"timestamp": "2012-06-05T00:00:00.25Z"})),
    ("t = TIMESTAMP('2012-06-05T09:00:00+09:00')", op("=", P("t"), {"timestamp": "2012-06-05T09:00:00+09:00"})),
    ("T_AFTER(t, TIMESTAMP('2012-06-05T00:00:00Z'))", op("t_after", P("t"), {"timestamp": "2012-06-05T00:00:00Z"})),
    ("T_BEFORE(t, DATE('2012-06-05'))", op("t_before", P("t"), {"date": "2012-06-05"})),
    ("T_DURING(t, INTERVAL('2020-01-01', '..'))", op("t_during", P("t"), {"interval": ["2020-01-01", ".."]})),
    ("T_DURING(t, INTERVAL('..', '2020-01-01T00:00:00Z'))",
     op("t_during", P("t"), {"interval": ["..", "2020-01-01T00:00:00Z"]})),
    ("T_CONTAINS(INTERVAL('2020-01-01','2020-12-31'), t)",
     op("t_contains", {"interval": ["2020-01-01", "2020-12-31"]}, P("t"))),
    ("T_EQUALS(t, INTERVAL('..', '..'))", op("t_equals", P("t"), {"interval": ["..", ".."]})),
    ("t_meets(t, DATE('2020-01-01'))", op("t_meets", P("t"), {"date": "2020-01-01"})),
    ("T_METBY(t, DATE('2020-01-01'))", op("t_metby", P("t"), {"date": "2020-01-01"})),
    ("T_OVERLAPS(t, DATE('2020-01-01'))", op("t_overlaps", P("t"), {"date": "2020-01-01"})),
    ("T_OVERLAPPEDBY(t, DATE('2020-01-01'))", op("t_overlappedby", P("t"), {"date": "2020-01-01"})),
    # CQL2's STARTS/FINISHES are pygeofilter's BEGINS/ENDS (its cql2-json reads the draft names)
    ("T_STARTS(t, DATE('2020-01-01'))", op("t_begins", P("t"), {"date": "2020-01-01"})),
    ("T_STARTEDBY(t, DATE('2020-01-01'))", op("t_begunby", P("t"), {"date": "2020-01-01"})),
    ("T_FINISHES(t, DATE('2020-01-01'))", op("t_ends", P("t"), {"date": "2020-01-01"})),
    ("T_FINISHEDBY(t, DATE('2020-01-01'))", op("t_endedby", P("t"), {"date": "2020-01-01"})),
    ("d BETWEEN DATE('2020-01-01') AND DATE('2020-12-31')",
     op("between", P("d"), [{"date": "2020-01-01"}, {"date": "2020-12-31"}])),
    # geometries
    ("S_INTERSECTS(geometry, POINT(126.9 37.5))",
     op("s_intersects", P("geometry"), {"type": "Point", "coordinates": [126.9, 37.5]})),
    (f"S_INTERSECTS(geometry, POLYGON(({RING_TEXT})))",
     op("s_intersects", P("geometry"), {"type": "Polygon", "coordinates": [RING]})),
    (f"S_WITHIN(geometry, polygon(({RING_TEXT}), (1 1, 2 1, 2 2, 1 1)))",
     op("s_within", P("geometry"), {"type": "Polygon", "coordinates": [RING, [[1, 1], [2, 1], [2, 2], [1, 1]]]})),
    ("S_EQUALS(POINT Z(1 2 3), geom)", op("s_equals", {"type": "Point", "coordinates": [1, 2, 3]}, P("geom"))),
    ("S_DISJOINT(geometry, LINESTRING(0 40, 10 50))",
     op("s_disjoint", P("geometry"), {"type": "LineString", "coordinates": [[0, 40], [10, 50]]})),
    ("S_TOUCHES(geometry, LINESTRING Z(0 0 0, 1 1 1))",
     op("s_touches", P("geometry"), {"type": "LineString", "coordinates": [[0, 0, 0], [1, 1, 1]]})),
    ("S_OVERLAPS(geometry, MULTIPOINT((0 0), (1 -1)))",
     op("s_overlaps", P("geometry"), {"type": "MultiPoint", "coordinates": [[0, 0], [1, -1]]})),
    ("S_OVERLAPS(geometry, MULTIPOINT(0 0, 1 -1))",
     op("s_overlaps", P("geometry"), {"type": "MultiPoint", "coordinates": [[0, 0], [1, -1]]})),
    ("S_CROSSES(geometry, MULTILINESTRING((0 0, 1 1), (2 2, 3 3, 4 4)))",
     op("s_crosses", P("geometry"),
        {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3], [4, 4]]]})),
    (f"S_CONTAINS(MULTIPOLYGON((({RING_TEXT})), ((0 0, 1 0, 1 1, 0 0))), geometry)",
     op("s_contains", {"type": "MultiPolygon", "coordinates": [[RING], [[[0, 0], [1, 0], [1, 1], [0, 0]]]]},
        P("geometry"))),
    ("POINT(0 0) IS NULL", op("isNull", {"type": "Point", "coordinates": [0, 0]})),
    # functions, CASEI, ACCENTI, arrays
    ("CASEI(name) = CASEI('Straße')", op("=", op("casei", P("name")), op("casei", "Straße"))),
    ("casei(name) = 'x'", op("=", op("casei", P("name")), "x")),
    ("ACCENTI(name) = ACCENTI('débárquér')", op("=", fn("accenti", P("name")), fn("accenti", "débárquér"))),
    ("length(geometry) > 100", op(">", fn("length", P("geometry")), 100)),
    ("Foo(geometry, 1, 'x') = TRUE", op("=", fn("Foo", P("geometry"), 1, "x"), True)),
    ("bool_fn()", fn("bool_fn")),
    ("f(a = 1, (1, 'x'))", fn("f", op("=", P("a"), 1), [1, "x"])),
    ("A_CONTAINS(tags, ('foo', 'bar'))", op("a_contains", P("tags"), ["foo", "bar"])),
    ("A_EQUALS(('a', TRUE, 1.0, 8), tags)", op("a_equals", ["a", True, 1.0, 8], P("tags"))),
    ("A_OVERLAPS(tags, ())", op("a_overlaps", P("tags"), [])),
    ("A_CONTAINEDBY(tags, ((1, 2), 3))", op("a_containedby", P("tags"), [[1, 2], 3])),
    ("A_CONTAINS(tags, ('one'))", op("a_contains", P("tags"), ["one"])),
]


@pytest.mark.parametrize(("text", "cql2_json"), CASES, ids=[c[0][:60] for c in CASES])
def test_same_tree_as_cql2_json(text: str, cql2_json: Any) -> None:
    same(text, oracle(cql2_json))


KEYWORDS = re.compile(r"\b(AND|OR|NOT|LIKE|BETWEEN|IN|IS|NULL|TRUE|FALSE|DIV|CASEI|ACCENTI|DATE|TIMESTAMP|INTERVAL|"
                      r"BBOX|POINT|LINESTRING|POLYGON|MULTIPOINT|MULTILINESTRING|MULTIPOLYGON|GEOMETRYCOLLECTION|"
                      r"Z|[STA]_[A-Z]+)\b(?=[^']*(?:'[^']*'[^']*)*$)", re.IGNORECASE)


def _names(tree: Any) -> set[str]:
    """The property names in a tree."""
    if isinstance(tree, ast.Attribute):
        return {tree.name}
    if isinstance(tree, ast.Node | values.Interval):
        return set().union(*(_names(v) for v in vars(tree).values()))
    if isinstance(tree, list):
        return set().union(*(_names(v) for v in tree))
    return set()


@pytest.mark.parametrize("text", [c[0] for c in CASES if not any(KEYWORDS.fullmatch(n) for n in _names(parse(c[0])))])
def test_keywords_are_case_insensitive(text: str) -> None:
    lower = KEYWORDS.sub(lambda m: m.group().lower(), text)
    upper = KEYWORDS.sub(lambda m: m.group().upper(), text)
    assert canon(parse(lower)) == canon(parse(upper)) == canon(parse(text))


def test_keywords_in_mixed_case() -> None:
    same("nOt a = 1 aNd b Is NoT nUlL oR c bEtWeEn 1 AnD 2",
         oracle(op("or", op("and", op("not", op("=", P("a"), 1)), op("not", op("isNull", P("b")))),
                   op("between", P("c"), [1, 2]))))
    same("s_Intersects(g, pOiNt z(1 2 3))",
         oracle(op("s_intersects", P("g"), {"type": "Point", "coordinates": [1, 2, 3]})))


def test_names_stay_as_written() -> None:
    assert parse("Name = 1") == ast.Equal(ast.Attribute("Name"), 1)
    assert parse("MyFn(x) = 1").lhs.name == "MyFn"  # type: ignore[union-attr]
    # a keyword with a non-ASCII look-alike is a name: upper() of Turkish 'ın' would be IN
    assert parse("ın = 1") == ast.Equal(ast.Attribute("ın"), 1)
    with pytest.raises(CQL2SyntaxError):
        parse("x ın (1)")


def test_backslashes() -> None:
    """The BNF's quote escapes are '' and \\'; other backslashes are characters of the text."""
    assert parse("s = 'a\\'b'").rhs == "a'b"  # type: ignore[union-attr]
    assert parse("s = 'C:\\dir'").rhs == "C:\\dir"  # type: ignore[union-attr]
    assert parse("s LIKE '100\\%'").pattern == "100\\%"  # type: ignore[union-attr]
    # a doubled backslash stays doubled (LIKE's escaped backslash), so a pattern can end in one
    assert parse("s LIKE 'a\\\\'").pattern == "a\\\\"  # type: ignore[union-attr]
    with pytest.raises(CQL2SyntaxError, match=r"this text has no closing quote .* at position 4$"):
        parse("s = 'a\\'")


def test_values_are_python_values() -> None:
    tree = parse("t = TIMESTAMP('2012-06-05T10:20:30.5Z') AND d = DATE('2012-06-05') AND n = 5 AND f = 5.0")
    t, d, n, f = tree.lhs.lhs.lhs.rhs, tree.lhs.lhs.rhs.rhs, tree.lhs.rhs.rhs, tree.rhs.rhs  # type: ignore[union-attr]
    assert t == datetime(2012, 6, 5, 10, 20, 30, 500000, tzinfo=UTC) and t.tzinfo is not None
    assert type(d) is date and d == date(2012, 6, 5)
    assert type(n) is int and type(f) is float
    assert parse("t = TIMESTAMP('2012-06-05T09:00:00+09:00')").rhs == datetime(2012, 6, 5, tzinfo=UTC)  # type: ignore
    offset = parse("t = TIMESTAMP('2012-06-05T09:00:00-02:30')").rhs.tzinfo  # type: ignore[union-attr]
    assert offset == timezone(-timedelta(hours=2, minutes=30))
    # without a zone CQL2's UTC is meant: the value is aware, not naive
    assert parse("t = TIMESTAMP('2012-06-05T00:00:00')").rhs == datetime(2012, 6, 5, tzinfo=UTC)  # type: ignore


def test_interval_of_properties() -> None:
    tree = parse("T_INTERSECTS(INTERVAL(starts_at, ends_at), INTERVAL('2005-01-10', '2010-02-10'))")
    assert tree.lhs == values.Interval(ast.Attribute("starts_at"), ast.Attribute("ends_at"))  # type: ignore
    assert tree.rhs == values.Interval(date(2005, 1, 10), date(2010, 2, 10))  # type: ignore[union-attr]
    tree = parse("T_DURING(t, INTERVAL(DATE('2020-01-01'), now()))")
    assert tree.rhs == values.Interval(date(2020, 1, 1), ast.Function("now", []))  # type: ignore[union-attr]


# -- where the oracle is wrong, the standard wins ----------------------------------------------------
def test_like_single_character_wildcard_is_underscore() -> None:
    like = parse("name LIKE 'a_b'")
    assert (like.wildcard, like.singlechar, like.escapechar) == ("%", "_", "\\")  # type: ignore[union-attr]
    assert parse_json(json.dumps(op("like", P("name"), "a_b"))).singlechar == "."  # pygeofilter's


def test_bbox_is_west_south_east_north() -> None:
    env = parse("S_INTERSECTS(geometry, BBOX(126.9, 37.5, 127.1, 37.6))").rhs  # type: ignore[union-attr]
    assert (env.x1, env.x2, env.y1, env.y2) == (126.9, 127.1, 37.5, 37.6)  # x1..x2 west..east, y1..y2 south..north
    # pygeofilter's cql2-json passes the four numbers in their written order into x1, x2, y1, y2
    wrong = parse_json(json.dumps(op("s_intersects", P("geometry"), {"bbox": [126.9, 37.5, 127.1, 37.6]}))).rhs
    assert (wrong.x1, wrong.x2, wrong.y1, wrong.y2) == (126.9, 37.5, 127.1, 37.6)
    # 3D: west, south, min height, east, north, max height
    env = parse("S_INTERSECTS(geometry, BBOX(-180, -90, 0, 180, 90, 100))").rhs  # type: ignore[union-attr]
    assert (env.x1, env.x2, env.y1, env.y2) == (-180, 180, -90, 90)
    assert parse("S_INTERSECTS(geometry, ENVELOPE(1, 2, 3, 4))") == parse("S_INTERSECTS(geometry, BBOX(1, 2, 3, 4))")
    # the antimeridian case keeps west > east as written
    assert parse("S_INTERSECTS(BBOX(150, -90, -150, 90), geom)").lhs.x1 == 150  # type: ignore[union-attr]


def test_legacy_bbox_predicate() -> None:
    # pygeofilter's own cql2-text parser read BBOX(geometry, minx, miny, maxx, maxy[, crs]) as ast.BBox
    assert parse("BBOX(geometry, 1, 2, 3, 4)") == ast.BBox(ast.Attribute("geometry"), 1, 2, 3, 4, None)
    assert parse("BBOX(geometry, 1, 2, 3, 4, 'EPSG:4326')").crs == "EPSG:4326"  # type: ignore[union-attr]


def test_t_intersects_is_overlaps_marked_intersects() -> None:
    text = parse("T_INTERSECTS(t, INTERVAL('2020-01-01', '2020-12-31'))")
    json_tree = oracle(op("t_intersects", P("t"), {"interval": ["2020-01-01", "2020-12-31"]}))
    assert type(text) is type(json_tree) is ast.TimeOverlaps and text == json_tree
    assert text.op.name == "INTERSECTS"  # what features.cql / features.cql_sta test for
    assert parse("T_OVERLAPS(t, DATE('2020-01-01'))").op.name == "TOVERLAPS"  # type: ignore[union-attr]
    assert ast.TimeOverlaps.op.name == "TOVERLAPS"  # the class itself is untouched


def test_t_disjoint() -> None:  # pygeofilter's cql2-json has no t_disjoint
    same("T_DISJOINT(t, DATE('2020-01-01'))", ast.TimeDisjoint(ast.Attribute("t"), date(2020, 1, 1)))


def test_geometry_collection() -> None:  # pygeofilter's cql2-json takes only geometries with coordinates
    same("S_INTERSECTS(geometry, GEOMETRYCOLLECTION(POINT(1 2), LINESTRING Z(0 0 0, 1 1 1)))",
         ast.GeometryIntersects(ast.Attribute("geometry"), values.Geometry({
             "type": "GeometryCollection", "geometries": [
                 {"type": "Point", "coordinates": [1, 2]},
                 {"type": "LineString", "coordinates": [[0, 0, 0], [1, 1, 1]]}]})))


def test_geometry_empty() -> None:
    assert parse("S_INTERSECTS(g, POINT EMPTY)").rhs.geometry == {"type": "Point", "coordinates": []}  # type: ignore
    assert parse("S_INTERSECTS(g, GEOMETRYCOLLECTION EMPTY)").rhs.geometry == {  # type: ignore[union-attr]
        "type": "GeometryCollection", "geometries": []}


def test_evaluated_over_a_table() -> None:
    """The trees run through features.cql's evaluator (LIKE's '_', BBOX order, T_INTERSECTS, NOT IN)."""
    import numpy as np
    import pandas as pd
    import shapely

    from features.cql import evaluate

    frame = pd.DataFrame({"name": ["a_b", "axb", "Abc"], "n": [1, 5, 10],
                          "t": pd.to_datetime(["2020-01-01", "2020-06-01", "2021-01-01"], utc=True)})
    geoms = np.array([shapely.Point(0, 0), shapely.Point(5, 5), shapely.Point(20, 1)], dtype=object)
    tree = shapely.STRtree(geoms)

    def rows(text: str) -> list[int]:
        return list(np.flatnonzero(evaluate(parse(text), frame, geoms, tree, None)))

    assert rows("name LIKE 'a_b'") == [0, 1]
    assert rows("name LIKE 'a.b'") == []
    assert rows("CASEI(name) LIKE CASEI('ABC')") == [2]
    assert rows("S_INTERSECTS(geometry, BBOX(4, 0, 25, 2))") == [2]
    assert rows("T_INTERSECTS(t, INTERVAL('2020-01-01', '2020-06-01'))") == [0, 1]
    assert rows("T_AFTER(t, DATE('2020-03-01')) AND n NOT IN (10)") == [1]
    assert rows("-n < -4 AND n IS NOT NULL") == [1, 2]


# -- the standard's kinds of example (OGC 21-065 annex) ----------------------------------------------
STANDARD_STYLE = [
    "\"landsat:scene_id\" = 'LC82030282019133LGN00'",
    "eo:cloud_cover BETWEEN 0.1 AND 0.2 AND \"landsat:wrs_row\" = 28 AND \"landsat:wrs_path\" = 203",
    "floors > 5 AND material = 'brick' OR swimming_pool = true",
    "(floors > 5 AND material = 'brick') OR swimming_pool = true",
    "NOT \"name\" LIKE 'foo%'",
    "beamMode = 'ScanSAR Narrow' AND swathDirection = 'ascending' AND polarization = 'HH+VV+HV+VH' AND "
    "S_INTERSECTS(footprint, POLYGON((-77.117938 38.93686, -77.040604 39.995648, -76.910536 38.892912, "
    "-77.039359 38.791753, -77.047906 38.841462, -77.034183 38.840655, -77.033142 38.857490, "
    "-77.117938 38.93686)))",
    "updated >= DATE('1970-01-01')",
    "T_INTERSECTS(event_time, INTERVAL('1969-07-16T05:32:00Z', '1969-07-24T16:50:35Z'))",
    "T_DURING(INTERVAL(touchdown, liftOff), INTERVAL('1969-07-16T13:32:00Z', '1969-07-24T16:50:35Z'))",
    "S_WITHIN(road, Buffer(geometry, 10, 'm'))",
    "S_INTERSECTS(geometry, GEOMETRYCOLLECTION(POINT(-1 -1), LINESTRING(0 0, 1 1), POLYGON((0 0, 1 0, 1 1, 0 0))))",
    "S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90)) AND T_AFTER(updated, TIMESTAMP('2010-02-10T05:29:20.073225Z'))",
    "\"value\" = - foo * 2.0 + \"bar\" / 6.1234 - \"x\" ^ 2.0",
    "vehicle_height > (bridge_clearance - 1)",
    "CASEI(geophys:SURVEY_NAME) LIKE CASEI('%calcutta%')",
    "ACCENTI(etat_vol) = ACCENTI('débárquér')",
    "A_CONTAINS(layer:ids, ('layers-ca', 'layers-us'))",
    "A_OVERLAPS(layer:ids, ('a', 'b')) AND A_CONTAINEDBY(('x'), layer:ids)",
    "\"id\" IN ('fa7e1920-9107-422d-a3db-c468cbc5d6df', 'da7e1920-9107-422d-a3db-c468cbc5d6df')",
    "\"id\" NOT IN ('fa7e1920-9107-422d-a3db-c468cbc5d6df')",
    "height IS NULL OR NOT height = 0",
    "Foo(geometry) = TRUE",
    "S_CROSSES(road, POLYGON((43.7286 -79.2986, 43.7311 -79.2996, 43.7323 -79.2972, 43.7326 -79.2971, "
    "43.7286 -79.2986)))",
    "S_EQUALS(POLYGON((-0.341 37.53, -0.341 37.39, -0.167 37.39, -0.167 37.53, -0.341 37.53)), geometry)",
    "T_BEFORE(built, DATE('2015-01-01')) AND T_AFTER(built, DATE('2012-06-05'))",
    "T_STARTS(INTERVAL(starts_at, ends_at), INTERVAL('1991-10-07T08:21:06.393262Z', '2010-02-10T05:29:20.073225Z'))",
    "T_FINISHEDBY(INTERVAL(starts_at, ends_at), INTERVAL('1991-10-07T08:21:06.393262Z', '..'))",
    "t_after(date('2022-04-16'), \"date\")",
    "S_INTERSECTS(BBOX(0, 40, 10, 50), geom)",
    "'København' NOT LIKE 'K_benhavn' OR 1038288 <> pop_other",
    "start <> end",
    "dürchsatz <> 0.4",
    "S_INTERSECTS(geom, POLYGON Z((1 2 3, 4 5 6, 7 8 9, 1 2 3)))",
]


@pytest.mark.parametrize("text", STANDARD_STYLE)
def test_standard_style_examples_parse(text: str) -> None:
    tree = parse(text)
    assert isinstance(tree, ast.Node)


def test_standard_style_examples_match_the_oracle() -> None:
    same("eo:cloud_cover BETWEEN 0.1 AND 0.2 AND \"landsat:wrs_row\" = 28",
         oracle(op("and", op("between", P("eo:cloud_cover"), [0.1, 0.2]), op("=", P("landsat:wrs_row"), 28))))
    same("floors > 5 AND material = 'brick' OR swimming_pool = true",
         oracle(op("or", op("and", op(">", P("floors"), 5), op("=", P("material"), "brick")),
                   op("=", P("swimming_pool"), True))))
    same("vehicle_height > (bridge_clearance - 1)",
         oracle(op(">", P("vehicle_height"), op("-", P("bridge_clearance"), 1))))
    same("T_DURING(event_time, INTERVAL('1969-07-16T05:32:00Z', '1969-07-24T16:50:35Z'))",
         oracle(op("t_during", P("event_time"), {"interval": ["1969-07-16T05:32:00Z", "1969-07-24T16:50:35Z"]})))


# -- errors --------------------------------------------------------------------------------------------
def at(text: str, fragment: str, nth: int = 0) -> int:
    """The 0-based position of the nth occurrence of fragment in text."""
    return [m.start() for m in re.finditer(re.escape(fragment), text)][nth]


ERRORS: list[tuple[str, str, str]] = [
    # text, the fragment the position points at, a part of the reason
    ("numOfUnits >", ">", "expected a value after '>' but the filter ended"),
    ("numOfUnits >= ", ">=", "expected a value after '>=' but the filter ended"),
    ("numOfUnits", "numOfUnits", "expected a comparison (=, <>, <, <=, >, >=, LIKE, BETWEEN, IN or IS NULL) "
                                 "after 'numOfUnits' but the filter ended"),
    ("a = 1 AND", "AND", "expected a value after 'AND' but the filter ended"),
    ("a = 1 AND flag", "flag", "after 'flag' but the filter ended"),
    ("flag AND a = 1", "AND", "expected a comparison"),
    ("NOT flag", "flag", "expected a comparison"),
    ("a = 1 b = 2", "b", "expected AND, OR or the end of the filter after '1' but found 'b'"),
    ("a == 1", "=", "expected a value after '=' but found '='"),
    ("a = )", ")", "expected a value after '=' but found ')'"),
    ("a = 'x", "'", "no closing quote"),
    ("\"a = 1", "\"", "no closing '\"'"),
    ("\"\" = 1", "\"", "cannot be empty"),
    ("a # 1", "#", "unexpected character '#'"),
    ("a != 1", "!", "'!=' is not CQL2, write '<>'"),
    ("A_CONTAINS(tags, ['a'])", "[", "arrays are written in parentheses"),
    ("a = NULL", "NULL", "x IS NULL"),
    ("x IS NUL", "NUL", "expected NULL after 'IS' but found 'NUL'"),
    ("x IN ()", ")", "expected a value after '(' but found ')'"),
    ("x IN 1", "1", "expected '(' and a list of values after 'IN' but found '1'"),
    ("x IN (1, 2", "2", "expected ',' or ')' after '2' but the filter ended"),
    ("x BETWEEN 1 OR 2", "OR", "expected AND after '1' but found 'OR'"),
    ("x BETWEEN 'a' AND 'b'", "'a'", "the low end of BETWEEN must be"),
    ("name LIKE 5", "5", "expected a quoted pattern such as '%text%' after 'LIKE' but found '5'"),
    ("name LIKE other", "other", "expected a quoted pattern"),
    ("5 LIKE 'a'", "5", "the left side of LIKE must be a text, property or function, not a number"),
    ("name LIKE ACCENTI('a')", "ACCENTI", "ACCENTI(...) around a LIKE pattern is not supported"),
    ("(a = 1", "1", "expected ')' after '1' but the filter ended"),
    ("a = (1 2)", "2", "expected ')' after '1' but found '2'"),
    ("(a = 1) + 1 = 2", "(", "the left side of '+' must be a number, property or function, not a condition"),
    ("'a' + 1 = 2", "'a'", "the left side of '+' must be a number, property or function, not a text"),
    ("a = POINT(1 2)", "POINT", "the right side of '=' must be"),
    ("S_INTERSECTS(geometry)", "S_INTERSECTS", "S_INTERSECTS takes 2 arguments, not 1"),
    ("S_INTERSECTS(geometry, 'POINT(1 2)')", "'POINT", "the second argument of S_INTERSECTS must be a geometry"),
    ("T_AFTER(t, '2020-01-01')", "'2020", "the second argument of T_AFTER must be a date, timestamp, interval"),
    ("A_CONTAINS(tags, 'a')", "'a'", "the second argument of A_CONTAINS must be an array"),
    ("t T_AFTER TIMESTAMP('2012-06-05T00:00:00Z')", "T_AFTER", "T_AFTER is written as a function: T_AFTER(a, b)"),
    ("d = DATE('2021-02-30')", "'2021", "'2021-02-30' is not a calendar date"),
    ("d = DATE('2021-2-3')", "'2021", "DATE takes a date written as '2020-01-31'"),
    ("d = DATE(2021)", "2021", "expected a quoted date"),
    ("t = TIMESTAMP('2021-01-01')", "'2021", "TIMESTAMP takes a timestamp written as '2020-01-31T12:00:00Z'"),
    ("t = TIMESTAMP('2021-01-01T25:00:00Z')", "'2021", "is not a valid timestamp"),
    ("t = TIMESTAMP('2021-01-01T10:00:00+24:00')", "'2021", "'+24:00' is not a time zone offset"),
    ("T_DURING(t, INTERVAL('2020-01-01'))", ")", "expected ',' and the end of the interval"),
    ("T_DURING(t, INTERVAL('2020', '..'))", "'2020'", "an interval's ends are dates"),
    ("T_DURING(t, INTERVAL(1, '..'))", "1", "an end of INTERVAL must be"),
    ("S_INTERSECTS(g, POINT(1))", ")", "expected a coordinate (a number) after '1' but found ')'"),
    ("S_INTERSECTS(g, POINT(1 2 3 4))", "4", "expected ')' after '3' but found '4'"),
    ("S_INTERSECTS(g, POINT Z(1 2))", "1", "expected 3 coordinates in this point"),
    ("S_INTERSECTS(g, LINESTRING(0 0, 1 1 1))", "1 1 1", "expected 2 coordinates in this point"),
    ("S_INTERSECTS(g, LINESTRING(0 0))", "(0", "a LINESTRING needs at least 2 points, not 1"),
    ("S_INTERSECTS(g, POLYGON((0 0, 1 1, 0 0)))", "(0", "a polygon ring needs at least 4 points, not 3"),
    ("S_INTERSECTS(g, POLYGON(0 0, 1 1, 1 0, 0 0))", "0", "expected '(' after '(' but found '0'"),
    ("S_INTERSECTS(g, GEOMETRYCOLLECTION(1 2))", "1", "expected a WKT geometry such as POINT(1 2)"),
    ("S_INTERSECTS(g, BBOX(1, 2, 3))", "BBOX", "BBOX takes 4 or 6 numbers"),
    ("S_INTERSECTS(g, POINT(1 2)", ")", "expected ',' or ')' after ')' but the filter ended"),
    ("CASEI(1) = 'a'", "1", "the argument of CASEI must be a text, property or function, not a number"),
    ("f(a, ) = 1", ")", "expected a value after ',' but found ')'"),
    ("x = 1 AND AND y = 2", "AND", "expected a value after 'AND' but found 'AND'"),
    ("x = " + "9" * 5000, "9", "this number has too many digits"),
    ("x = 1e999", "1", "this number is too large"),
    ("x = -a = 1", "=", "expected AND, OR or the end of the filter after 'a' but found '='"),
]


@pytest.mark.parametrize(("text", "fragment", "reason"), ERRORS, ids=[e[0][:50] for e in ERRORS])
def test_error_names_position_and_reason(text: str, fragment: str, reason: str) -> None:
    nth = 1 if (text, fragment) in {("x = 1 AND AND y = 2", "AND"), ("a == 1", "="),
                                    ("x = -a = 1", "=")} else 0
    with pytest.raises(CQL2SyntaxError) as caught:
        parse(text)
    assert reason in str(caught.value)
    assert caught.value.position == at(text, fragment, nth), str(caught.value)
    assert str(caught.value).endswith(f" at position {caught.value.position}")


def test_the_briefs_message() -> None:
    with pytest.raises(CQL2SyntaxError, match=r"^expected a value after '>' but the filter ended at position 6$"):
        parse("price >")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty(text: str) -> None:
    with pytest.raises(CQL2SyntaxError, match="^the filter is empty at position 0$"):
        parse(text)


def test_not_text() -> None:
    with pytest.raises(CQL2SyntaxError, match="a filter is text"):
        parse(b"a = 1")  # type: ignore[arg-type]


def test_depth_limits() -> None:
    ok = "(" * MAX_DEPTH + "a = 1" + ")" * MAX_DEPTH
    assert parse(ok) == ast.Equal(ast.Attribute("a"), 1)
    deep = "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(CQL2SyntaxError, match=f"nests more than {MAX_DEPTH} levels deep at position {MAX_DEPTH}$"):
        parse(deep)
    with pytest.raises(CQL2SyntaxError, match="nests more than"):
        parse("f(" * 5000 + ")" * 5000)
    with pytest.raises(CQL2SyntaxError, match="nests more than"):
        parse("S_INTERSECTS(g, " + "GEOMETRYCOLLECTION(" * 100 + "POINT(1 2)" + ")" * 101)
    many = " OR ".join(f"n = {i}" for i in range(MAX_HEIGHT - 2))
    assert isinstance(parse(many), ast.Or)
    too_many = " OR ".join(f"n = {i}" for i in range(MAX_HEIGHT + 50))
    with pytest.raises(CQL2SyntaxError, match=r"nests more than \d+ operators deep here \(a long OR of values is"):
        parse(too_many)
    # NOT and minus chains are loops, not recursion
    assert isinstance(parse("NOT " * 100 + "a = 1"), ast.Not)
    assert parse("a = " + "-" * 10000 + "1") == ast.Equal(ast.Attribute("a"), 1)


def test_parse_filter_uses_this_parser() -> None:
    assert parse_filter("t = 1", "cql2-text") == ast.Equal(ast.Attribute("t"), 1)
    assert parse_filter("T_AFTER(t, TIMESTAMP('2012-06-05T00:00:00Z'))", "cql2-text") == ast.TimeAfter(
        ast.Attribute("t"), datetime(2012, 6, 5, tzinfo=UTC))
    with pytest.raises(FilterError, match=r"^invalid cql2-text filter: expected a value after '>' "
                                          r"but the filter ended at position 11$"):
        parse_filter("numOfUnits >", "cql2-text")


# -- fuzzing -------------------------------------------------------------------------------------------
VALID = [c[0] for c in CASES] + STANDARD_STYLE


def parses_or_refuses(text: str) -> None:
    """Any text gives a tree or a CQL2SyntaxError pointing inside it; nothing else may escape."""
    try:
        tree = parse(text)
    except CQL2SyntaxError as exc:
        assert 0 <= exc.position < max(len(text), 1), (text, str(exc))
        assert str(exc).endswith(f" at position {exc.position}")
        return
    assert isinstance(tree, ast.Node | bool), (text, tree)


@settings(max_examples=1500, deadline=None)
@given(st.text())
def test_fuzz_any_text(text: str) -> None:
    parses_or_refuses(text)


PIECES = ["(", ")", "'", "''", '"', ",", " ", "-", "+", "*", "/", "%", "^", "=", "<", ">", "<>", "..", ".", ":",
          "\\", "0", "1.5", "1e", "9" * 30, "E-", " AND ", " OR ", " NOT ", "NOT ", " IS NULL", " IN (", " LIKE ",
          " BETWEEN ", "DIV", "TRUE", "NULL", "POINT(", "POINT Z(", " EMPTY", "POLYGON((", "BBOX(", "ENVELOPE(",
          "INTERVAL(", "DATE(", "TIMESTAMP(", "'2020-01-01'", "'..'", "CASEI(", "ACCENTI(", "S_INTERSECTS(",
          "T_AFTER(", "A_CONTAINS(", "GEOMETRYCOLLECTION(", "위", "ı", "\u0301", "\x00", "\u2028", "f("]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid filter with a few characters or pieces inserted, deleted, replaced or duplicated."""
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "cut"]))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=3))
        if action == "insert":
            text = text[:i] + piece + text[i:]
        elif action == "delete":
            text = text[:i] + text[j:]
        elif action == "replace":
            text = text[:i] + piece + text[j:]
        elif action == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_filters(text: str) -> None:
    parses_or_refuses(text)


def test_every_prefix_and_every_deletion() -> None:
    for text in VALID:
        for i in range(len(text)):
            parses_or_refuses(text[:i])
            parses_or_refuses(text[:i] + text[i + 1:])


# generated filters with a known CQL2 JSON twin: text and JSON must give the same tree
NAMES = st.sampled_from(["t", "위도", "numOfUnits", "a.b", "eo:cloud", "_x", '"with space"', '"or"', "Ümlaut"])
NUMBERS = st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False, width=64)
# no backslash: before a quote it is the BNF's other quote escape (see test_backslashes)
TEXTS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\\"), max_size=12)


def _name(text: str) -> tuple[str, Any]:
    return text, P(text[1:-1] if text.startswith('"') else text)


def _literal(value: Any) -> tuple[str, Any]:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'", value
    return repr(value), value


@st.composite
def predicates(draw: st.DrawFn) -> tuple[str, Any]:
    name, prop = _name(draw(NAMES))
    kind = draw(st.sampled_from(["cmp", "like", "between", "in", "null", "spatial", "temporal"]))
    if kind == "cmp":
        symbol = draw(st.sampled_from(["=", "<>", "<", "<=", ">", ">="]))
        text, value = _literal(draw(NUMBERS | TEXTS))
        return f"{name} {symbol} {text}", op(symbol, prop, value)
    if kind == "like":
        text, value = _literal(draw(TEXTS))
        return f"{name} LIKE {text}", op("like", prop, value)
    if kind == "between":
        (lo, low), (hi, high) = _literal(draw(NUMBERS)), _literal(draw(NUMBERS))
        return f"{name} BETWEEN {lo} AND {hi}", op("between", prop, [low, high])
    if kind == "in":
        items = [_literal(v) for v in draw(st.lists(NUMBERS | TEXTS, min_size=1, max_size=4))]
        return f"{name} IN ({', '.join(t for t, _ in items)})", op("in", prop, [v for _, v in items])
    if kind == "null":
        return f"{name} IS NULL", op("isNull", prop)
    if kind == "spatial":
        x, y = draw(NUMBERS), draw(NUMBERS)
        return f"S_INTERSECTS({name}, POINT({x!r} {y!r}))", op("s_intersects", prop,
                                                                {"type": "Point", "coordinates": [x, y]})
    day = draw(st.dates(min_value=date(1, 1, 1)))
    return f"T_BEFORE({name}, DATE('{day.isoformat()}'))", op("t_before", prop, {"date": day.isoformat()})


def _combine(children: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    def join(word: str) -> st.SearchStrategy[tuple[str, Any]]:
        return st.lists(children, min_size=2, max_size=3).map(
            lambda parts: (f" {word} ".join(f"({t})" for t, _ in parts), op(word.lower(), *(j for _, j in parts))))
    negated = children.map(lambda part: (f"NOT ({part[0]})", op("not", part[1])))
    return join("AND") | join("OR") | negated


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(predicates(), _combine, max_leaves=8))
def test_generated_filters_match_the_oracle(pair: tuple[str, Any]) -> None:
    text, cql2_json = pair
    same(text, oracle(cql2_json))
