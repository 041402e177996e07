"""CQL2 filters (text by features.cql2_text, JSON by pygeofilter) as pygeofilter trees, checked against a
collection's queryables, and evaluated over a loaded table as one vectorized mask."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
import shapely
from pygeofilter import ast, values
from pygeofilter.backends.evaluator import Evaluator, handle

from features import crs as crsmod

GEOMETRY = "geometry"  # the queryable that stands for a feature's geometry


class FilterError(ValueError):
    """A filter that cannot be parsed or does not fit the collection; the message is the reason."""


def parse_filter(text: str, lang: str) -> ast.Node:
    """A CQL2 filter in `cql2-text` or `cql2-json` as a pygeofilter tree."""
    try:
        if lang == "cql2-json":
            from pygeofilter.parsers.cql2_json import parse as parse_json

            return _well_formed(parse_json(text))
        from features.cql2_text import parse as parse_text

        return parse_text(text)
    except Exception as exc:  # CQL2SyntaxError and json errors name the position; pass the reason on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FilterError(f"invalid {lang} filter: {first}") from None


def _well_formed(node: Any) -> Any:
    """The tree itself when every node has the shape its operator needs (pygeofilter's JSON parser takes
    `{"op": "in", "args": [[], {"property": "p"}]}` as it comes); ValueError names what is wrong."""
    if isinstance(node, ast.In) and (isinstance(node.lhs, list) or not isinstance(node.sub_nodes, list)):
        raise ValueError("IN takes a value first and a list of values second")
    if isinstance(node, ast.Node):
        for child in node.get_sub_nodes():
            _well_formed(child)
    elif isinstance(node, list | tuple):
        for child in node:
            _well_formed(child)
    return node


def attributes(node: Any) -> Iterable[str]:
    """Every property name a filter refers to."""
    if isinstance(node, ast.Attribute):
        yield node.name
    elif isinstance(node, ast.Node):
        for child in node.get_sub_nodes():
            yield from attributes(child)
    elif isinstance(node, list | tuple):
        for child in node:
            yield from attributes(child)


def check_attributes(node: ast.Node, known: Iterable[str]) -> None:
    """FilterError when the filter names a property the collection does not have."""
    names = set(known) | {GEOMETRY}
    for name in attributes(node):
        if name not in names:
            raise FilterError(f"unknown property {name!r} in filter (queryables: {', '.join(sorted(names))})")


class LiteralEvaluator(Evaluator):
    """What every filter evaluator shares: literals as they are, intervals as pairs, geometry literals read in
    the filter-crs (its own axis order) and handed to `_geometry` in CRS84."""

    filter_crs: int | None = None

    @handle(values.Geometry)
    def geometry(self, node: Any) -> Any:
        return self._geometry(self.crs84(shapely.geometry.shape(node.geometry)))

    @handle(values.Envelope)
    def envelope(self, node: Any) -> Any:
        return self._geometry(self.crs84(shapely.box(node.x1, node.y1, node.x2, node.y2)))

    @handle(*values.LITERALS)
    def literal(self, node: Any) -> Any:
        return node

    @handle(values.Interval)
    def interval(self, node: Any, start: Any, end: Any) -> Any:
        return (start, end)

    def bbox_of(self, args: tuple[Any, ...]) -> Any:
        """The function `bbox(x1, y1, x2, y2)` (or its 6-number form) as `_geometry` gives a CRS84 box."""
        vals = [float(a) for a in args]
        box = shapely.box(vals[0], vals[1], vals[3], vals[4]) if len(vals) == 6 else shapely.box(*vals)
        return self._geometry(self.crs84(box))

    def crs84(self, geom: shapely.Geometry) -> shapely.Geometry:
        """A geometry literal of the filter in CRS84."""
        if self.filter_crs is None:
            return geom
        return crsmod.transform(np.array([geom], dtype=object), self.filter_crs, None)[0]

    def _geometry(self, geom: shapely.Geometry) -> Any:
        """A CRS84 geometry literal as the evaluator compares it."""
        return geom


class _TableEvaluator(LiteralEvaluator):
    """A filter tree as a boolean mask over a table's rows."""

    def __init__(self, frame: pd.DataFrame, geoms: np.ndarray, tree: shapely.STRtree,
                 filter_crs: int | None) -> None:
        self.frame = frame
        self.geoms = geoms
        self.tree = tree
        self.filter_crs = filter_crs
        self.n = len(frame)

    # -- logic -------------------------------------------------------------------------------------
    @handle(ast.Not)
    def not_(self, node: Any, sub: Any) -> Any:
        return ~self._mask(sub)

    @handle(ast.And, ast.Or)
    def combination(self, node: Any, lhs: Any, rhs: Any) -> Any:
        a, b = self._mask(lhs), self._mask(rhs)
        return a & b if node.op.value == "AND" else a | b

    # -- comparisons -------------------------------------------------------------------------------
    @handle(ast.Comparison, subclasses=True)
    def comparison(self, node: Any, lhs: Any, rhs: Any) -> Any:
        op = node.op.value
        lhs, rhs = self._coerce(lhs, rhs)
        try:
            out = {"=": lambda: lhs == rhs, "<>": lambda: lhs != rhs, "<": lambda: lhs < rhs,
                   "<=": lambda: lhs <= rhs, ">": lambda: lhs > rhs, ">=": lambda: lhs >= rhs}[op]()
        except TypeError as exc:
            raise FilterError(f"cannot compare with {op}: {exc}") from None
        return self._nulls_false(out)

    @handle(ast.Between)
    def between(self, node: Any, lhs: Any, low: Any, high: Any) -> Any:
        lhs, low = self._coerce(lhs, low)
        lhs, high = self._coerce(lhs, high)
        try:
            out = self._nulls_false((lhs >= low) & (lhs <= high))
        except TypeError as exc:
            raise FilterError(f"BETWEEN: {exc}") from None
        return ~out if node.not_ else out

    @handle(ast.Like)
    def like(self, node: Any, lhs: Any) -> Any:
        from pygeofilter.backends.native.evaluate import like_pattern_to_re  # type: ignore[attr-defined]

        regex = like_pattern_to_re(node.pattern, node.nocase, node.wildcard, node.singlechar,
                                   node.escapechar or "\\")
        series = self._series(lhs).astype("string")
        out = series.str.fullmatch(regex.pattern, flags=regex.flags).fillna(False).to_numpy(dtype=bool)
        return ~out if node.not_ else out

    @handle(ast.In)
    def in_(self, node: Any, lhs: Any, *options: Any) -> Any:
        series = self._series(lhs)
        opts = [self._coerce(series, o)[1] for o in options]
        out = series.isin(opts).to_numpy(dtype=bool)
        return ~out if node.not_ else out

    @handle(ast.IsNull)
    def null(self, node: Any, lhs: Any) -> Any:
        if isinstance(lhs, np.ndarray) and lhs.dtype == object and lhs is self.geoms:
            out = shapely.is_missing(lhs)
        else:
            out = self._series(lhs).isna().to_numpy(dtype=bool)
        return ~out if node.not_ else out

    # -- time --------------------------------------------------------------------------------------
    @handle(ast.TemporalPredicate, subclasses=True)
    def temporal(self, node: Any, lhs: Any, rhs: Any) -> Any:
        series = self._series(lhs)
        if series.dtype.kind != "M":
            raise FilterError("temporal operators need a time property")
        start, end = _interval(rhs)
        op = node.op.name
        if op == "BEFORE":
            out = series < start
        elif op == "AFTER":
            out = series > end
        elif op in ("DURING",):
            out = (series > start) & (series < end)
        elif op in ("TEQUALS", "EQUALS"):
            out = (series == start) & (series == end)
        elif op in ("INTERSECTS", "T_INTERSECTS"):
            out = (series >= start) & (series <= end)
        else:
            raise FilterError(f"temporal operator T_{op} is not supported on time instants")
        return out.fillna(False).to_numpy(dtype=bool)

    # -- space -------------------------------------------------------------------------------------
    @handle(ast.SpatialComparisonPredicate, subclasses=True)
    def spatial(self, node: Any, lhs: Any, rhs: Any) -> Any:
        if lhs is not self.geoms:
            lhs, rhs = rhs, lhs
        if lhs is not self.geoms or not isinstance(rhs, shapely.Geometry):
            raise FilterError("spatial operators compare the `geometry` property with a geometry literal")
        predicate = {"INTERSECTS": "intersects", "DISJOINT": None, "CONTAINS": "contains", "WITHIN": "within",
                     "TOUCHES": "touches", "CROSSES": "crosses", "OVERLAPS": "overlaps", "EQUALS": None}[node.op.name]
        mask = np.zeros(self.n, dtype=bool)
        if predicate is not None:
            # the R-tree answers: the feature geometry is the tree side, the literal the query side
            reverse = {"contains": "within", "within": "contains"}.get(predicate, predicate)
            mask[self.tree.query(rhs, predicate=reverse)] = True
            return mask
        if node.op.name == "DISJOINT":
            mask[self.tree.query(rhs, predicate="intersects")] = True
            return ~mask & ~shapely.is_missing(self.geoms)
        return np.asarray(shapely.equals(self.geoms, rhs), dtype=bool)

    @handle(ast.BBox)
    def bbox(self, node: Any, lhs: Any) -> Any:
        box = self.crs84(shapely.box(node.minx, node.miny, node.maxx, node.maxy))
        mask = np.zeros(self.n, dtype=bool)
        mask[self.tree.query(box, predicate="intersects")] = True
        return mask

    # -- leaves ------------------------------------------------------------------------------------
    @handle(ast.Attribute)
    def attribute(self, node: Any) -> Any:
        if node.name == GEOMETRY and GEOMETRY not in self.frame.columns:
            return self.geoms
        return self.frame[node.name]

    @handle(ast.Arithmetic, subclasses=True)
    def arithmetic(self, node: Any, lhs: Any, rhs: Any) -> Any:
        try:
            return {"+": lambda: lhs + rhs, "-": lambda: lhs - rhs, "*": lambda: lhs * rhs,
                    "/": lambda: lhs / rhs}[node.op.value]()
        except TypeError as exc:
            raise FilterError(f"arithmetic: {exc}") from None

    @handle(ast.Function)
    def function(self, node: Any, *args: Any) -> Any:
        name = node.name.lower()
        if name == "bbox" and len(args) in (4, 6):
            return self.bbox_of(args)
        if name in ("lower", "casei") and len(args) == 1:
            return self._series(args[0]).astype("string").str.lower() if isinstance(args[0], pd.Series) \
                else str(args[0]).lower()
        if name in ("upper",) and len(args) == 1:
            return self._series(args[0]).astype("string").str.upper()
        raise FilterError(f"unknown function {node.name!r} (known: casei, lower, upper, bbox)")

    # -- helpers -----------------------------------------------------------------------------------
    def _series(self, value: Any) -> pd.Series:
        if isinstance(value, pd.Series):
            return value
        raise FilterError("this operator needs a property on its left side")

    def _mask(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray) and value.dtype == bool:
            return value
        if isinstance(value, pd.Series) and value.dtype == bool:
            return value.to_numpy(dtype=bool)
        raise FilterError("AND, OR and NOT combine conditions, not values")

    def _nulls_false(self, out: Any) -> np.ndarray:
        if isinstance(out, pd.Series):
            return out.fillna(False).to_numpy(dtype=bool)
        if isinstance(out, bool | np.bool_):
            return np.full(self.n, bool(out))
        return np.asarray(out, dtype=bool)

    def _coerce(self, lhs: Any, rhs: Any) -> tuple[Any, Any]:
        """Literals to the column's type: a time column against timestamps, numbers against numbers."""
        if isinstance(lhs, pd.Series):
            return lhs, _like_column(lhs, rhs)
        if isinstance(rhs, pd.Series):
            return _like_column(rhs, lhs), rhs
        return lhs, rhs


def _like_column(series: pd.Series, value: Any) -> Any:
    kind = series.dtype.kind
    if kind == "M" and isinstance(value, date | str):
        return utc_timestamp(value)
    if kind in "iuf" and isinstance(value, str):
        raise FilterError(f"property compares numbers, got the text {value!r}")
    if kind in "OSU" and isinstance(value, int | float) and not isinstance(value, bool):
        raise FilterError(f"property holds text, got the number {value!r} (quote it)")
    return value


def utc_timestamp(value: Any) -> pd.Timestamp:
    """A CQL2 time literal (text, date or datetime) as a UTC timestamp (FilterError when it is none)."""
    if isinstance(value, datetime):
        ts = pd.Timestamp(value)
        return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    if isinstance(value, date):
        return pd.Timestamp(value).tz_localize(UTC)
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise FilterError(f"not a time: {value!r}") from None
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def _interval(value: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    if isinstance(value, tuple):
        start, end = value
        lo = pd.Timestamp.min.tz_localize(UTC) if start in (None, "..") else utc_timestamp(start)
        hi = pd.Timestamp.max.tz_localize(UTC) if end in (None, "..") else utc_timestamp(end)
        return lo, hi
    t = utc_timestamp(value)
    return t, t


def evaluate(node: ast.Node, frame: pd.DataFrame, geoms: np.ndarray, tree: shapely.STRtree,
             filter_crs: int | None) -> np.ndarray:
    """The rows a filter selects, as a boolean mask."""
    ev = _TableEvaluator(frame, geoms, tree, filter_crs)
    try:
        out = ev.evaluate(node)
    except FilterError:
        raise
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise FilterError(f"cannot evaluate the filter: {exc}") from None
    return ev._mask(out)
