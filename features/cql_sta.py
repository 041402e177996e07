"""CQL2 (a pygeofilter tree) as a SensorThings filter tree, so that collections read from the
SensorThings store are filtered by the one translator that turns `$filter` into SQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import numpy as np
import shapely
from pygeofilter import ast, values

from features import crs as crsmod
from features.cql import GEOMETRY, FilterError
from sensorthings.query.tree import BinaryOp, Call, Expr, Literal, Path, UnaryOp

_COMPARE = {"=": "eq", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_SPATIAL = {"INTERSECTS": "st_intersects", "DISJOINT": "st_disjoint", "CONTAINS": "st_contains",
            "WITHIN": "st_within", "TOUCHES": "st_touches", "CROSSES": "st_crosses", "OVERLAPS": "st_overlaps",
            "EQUALS": "st_equals"}
_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def literal(value: Any) -> Literal:
    """A Python value as a SensorThings literal."""
    if value is None:
        return Literal(None, "null")
    if isinstance(value, bool):
        return Literal(value, "bool")
    if isinstance(value, int):
        return Literal(value, "int")
    if isinstance(value, float):
        return Literal(value, "float")
    if isinstance(value, datetime):
        return Literal(value, "datetime")
    if isinstance(value, date):
        return Literal(datetime(value.year, value.month, value.day).astimezone(), "datetime")
    if isinstance(value, str):
        return Literal(value, "string")
    raise FilterError(f"unsupported value {value!r}")


def geometry_literal(geom: shapely.Geometry, filter_crs: int | None) -> Literal:
    """A geometry (in `filter_crs`) as a CRS84 WKT literal."""
    if filter_crs is not None:
        geom = crsmod.transform(np.array([geom], dtype=object), filter_crs, None)[0]
    return Literal(geom.wkt, "geometry")


def both(a: Expr | None, b: Expr) -> Expr:
    """`a and b` (b alone when there is no a)."""
    return b if a is None else BinaryOp("and", a, b)


class Converter:
    """CQL2 → SensorThings filter for one collection: `paths` maps its properties to entity paths."""

    def __init__(self, paths: dict[str, tuple[str, ...]], geometry: tuple[str, ...], filter_crs: int | None) -> None:
        self.paths = paths
        self.geometry = geometry
        self.filter_crs = filter_crs

    def convert(self, node: Any) -> Expr:
        """The SensorThings expression of a CQL2 node (FilterError for what it cannot express)."""
        handler: Callable[[Any], Expr] | None = None
        for kind, fn in self._handlers():
            if isinstance(node, kind):
                handler = fn
                break
        if handler is None:
            raise FilterError(f"{type(node).__name__} is not supported on this collection")
        return handler(node)

    def _handlers(self) -> list[tuple[type | tuple[type, ...], Callable[[Any], Expr]]]:
        return [
            (ast.Not, lambda n: UnaryOp("not", self.convert(n.sub_node))),
            (ast.And, lambda n: BinaryOp("and", self.convert(n.lhs), self.convert(n.rhs))),
            (ast.Or, lambda n: BinaryOp("or", self.convert(n.lhs), self.convert(n.rhs))),
            (ast.Comparison, self._compare),
            (ast.Between, self._between),
            (ast.In, self._in),
            (ast.IsNull, self._null),
            (ast.Like, self._like),
            (ast.SpatialComparisonPredicate, self._spatial),
            (ast.BBox, self._bbox),
            (ast.TemporalPredicate, self._temporal),
            (ast.Arithmetic, lambda n: BinaryOp(_ARITH[n.op.value], self.convert(n.lhs), self.convert(n.rhs))),
            (ast.Attribute, self._attribute),
            (ast.Function, self._function),
            (values.Geometry, lambda n: geometry_literal(shapely.geometry.shape(n.geometry), self.filter_crs)),
            (values.Envelope, lambda n: geometry_literal(shapely.box(n.x1, n.y1, n.x2, n.y2), self.filter_crs)),
            ((bool, int, float, str, datetime, date, type(None)), literal),
        ]

    def _attribute(self, node: ast.Attribute) -> Expr:
        if node.name == GEOMETRY:
            return Path(self.geometry)
        if node.name not in self.paths:
            raise FilterError(f"unknown property {node.name!r} (queryables: {', '.join(sorted(self.paths))})")
        return Path(self.paths[node.name])

    def _compare(self, node: Any) -> Expr:
        return BinaryOp(_COMPARE[node.op.value], self.convert(node.lhs), self.convert(node.rhs))

    def _between(self, node: ast.Between) -> Expr:
        lhs = self.convert(node.lhs)
        expr: Expr = BinaryOp("and", BinaryOp("ge", lhs, self.convert(node.low)),
                              BinaryOp("le", lhs, self.convert(node.high)))
        return UnaryOp("not", expr) if node.not_ else expr

    def _in(self, node: ast.In) -> Expr:
        lhs = self.convert(node.lhs)
        expr: Expr | None = None
        for option in node.sub_nodes:
            eq = BinaryOp("eq", lhs, self.convert(option))
            expr = eq if expr is None else BinaryOp("or", expr, eq)
        if expr is None:
            raise FilterError("IN needs at least one value")
        return UnaryOp("not", expr) if node.not_ else expr

    def _null(self, node: ast.IsNull) -> Expr:
        return BinaryOp("ne" if node.not_ else "eq", self.convert(node.lhs), Literal(None, "null"))

    def _like(self, node: ast.Like) -> Expr:
        pattern, wild = node.pattern, node.wildcard
        inner = pattern.strip(wild)
        if node.singlechar in inner or wild in inner or (node.escapechar and node.escapechar in inner):
            raise FilterError("LIKE on this collection takes a text with % at its start and/or end only")
        lhs = self.convert(node.lhs)
        if node.nocase:
            lhs = Call("tolower", (lhs,))
            inner = inner.lower()
        text = Literal(inner, "string")
        if pattern.startswith(wild) and pattern.endswith(wild) and len(pattern) > 1:
            expr: Expr = Call("substringof", (text, lhs))
        elif pattern.endswith(wild):
            expr = Call("startswith", (lhs, text))
        elif pattern.startswith(wild):
            expr = Call("endswith", (lhs, text))
        else:
            expr = BinaryOp("eq", lhs, text)
        return UnaryOp("not", expr) if node.not_ else expr

    def _spatial(self, node: Any) -> Expr:
        return Call(_SPATIAL[node.op.name], (self.convert(node.lhs), self.convert(node.rhs)))

    def _bbox(self, node: ast.BBox) -> Expr:
        box = geometry_literal(shapely.box(node.minx, node.miny, node.maxx, node.maxy), self.filter_crs)
        return Call("st_intersects", (self.convert(node.lhs), box))

    def _temporal(self, node: Any) -> Expr:
        lhs = self.convert(node.lhs)
        rhs = node.rhs
        if isinstance(rhs, values.Interval):
            start, end = rhs.start, rhs.end
        else:
            start = end = rhs
        op = node.op.name
        if op == "BEFORE":
            return BinaryOp("lt", lhs, literal(start))
        if op == "AFTER":
            return BinaryOp("gt", lhs, literal(end))
        if op in ("TEQUALS", "EQUALS"):
            return BinaryOp("eq", lhs, literal(start))
        if op in ("DURING", "INTERSECTS", "T_INTERSECTS"):
            expr: Expr | None = None
            if start not in (None, ".."):
                expr = BinaryOp("ge" if op != "DURING" else "gt", lhs, literal(start))
            if end not in (None, ".."):
                expr = both(expr, BinaryOp("le" if op != "DURING" else "lt", lhs, literal(end)))
            return expr if expr is not None else BinaryOp("ne", lhs, Literal(None, "null"))
        raise FilterError(f"temporal operator T_{op} is not supported on time instants")

    def _function(self, node: ast.Function) -> Expr:
        name = node.name.lower()
        args = tuple(self.convert(a) for a in node.arguments)
        if name in ("lower", "casei") and len(args) == 1:
            return Call("tolower", args)
        if name == "upper" and len(args) == 1:
            return Call("toupper", args)
        if name == "bbox" and len(node.arguments) in (4, 6):
            v = [float(a) for a in node.arguments]
            box = shapely.box(v[0], v[1], v[3], v[4]) if len(v) == 6 else shapely.box(*v)
            return geometry_literal(box, self.filter_crs)
        raise FilterError(f"unknown function {node.name!r} (known: casei, lower, upper, bbox)")
