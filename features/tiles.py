"""Vector tiles (OGC API Tiles, MVT): the tile matrix sets offered, a tile request parsed from its path, and the
features of a tile generalised by zoom and encoded as one MVT layer.

The grids are morecantile's (OGC Two Dimensional Tile Matrix Set 2.0). Features come from the source in CRS84
(`FeatureSource.tile_features`), are put in the tile's pixel grid (4,096 a side, 64 of buffer) and clipped to it.
Below `COMPLETE_ZOOM` points that share a cell of `POINT_CELL` pixels are one point with their `point_count`,
lines and polygons are simplified to a pixel, and a tile over `MAX_TILE_BYTES` is made coarser until it fits;
from `COMPLETE_ZOOM` on a tile holds every feature inside it, exactly placed on the grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

import mapbox_vector_tile
import morecantile
import numpy as np
import orjson
import shapely
from mapbox_vector_tile.encoder import on_invalid_geometry_make_valid
from pyproj import Transformer

from features.source import FeatureSource, TileFeatures

log = logging.getLogger(__name__)

MVT = "application/vnd.mapbox-vector-tile"
TMS_IDS = ("WebMercatorQuad", "WorldCRS84Quad")
EXTENT, BUFFER = 4096, 64
COMPLETE_ZOOM = 14  # from here on a tile holds every feature inside it
POINT_CELL = 16  # pixels: below COMPLETE_ZOOM the points in one such cell are one point with their count
MAX_TILE_BYTES = 512 * 1024  # a generalised tile is made coarser until it fits
MAX_FEATURES = 200_000  # read for one tile at most; a tile that met more is drawn from these and logged
MAX_ZOOM = 22

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/dataset-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/collections-selection",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/oas30",
]


class TileNotFound(Exception):
    """A tile matrix set, zoom, row or column outside what is offered (404)."""


@cache
def matrix_set(tms_id: str) -> morecantile.TileMatrixSet:
    """An offered tile matrix set by id (TileNotFound otherwise)."""
    if tms_id not in TMS_IDS:
        raise TileNotFound(f"no tile matrix set {tms_id!r} (offered: {', '.join(TMS_IDS)})")
    return morecantile.tms.get(tms_id)


@cache
def _to_grid_crs(tms_id: str) -> Transformer | None:
    """CRS84 to the matrix set's CRS as x, y (None: CRS84 itself)."""
    tms = matrix_set(tms_id)
    if tms_id == "WorldCRS84Quad":
        return None
    return Transformer.from_crs("OGC:CRS84", tms.crs._pyproj_crs, always_xy=True)


@dataclass(frozen=True)
class TileRequest:
    """One tile: its matrix set, zoom (tile matrix), row and column, all within the matrix."""

    tms_id: str
    z: int
    row: int
    col: int

    @property
    def tile(self) -> morecantile.Tile:
        """morecantile's tile (x is the column, y the row)."""
        return morecantile.Tile(self.col, self.row, self.z)

    def grid_bounds(self) -> tuple[float, float, float, float]:
        """The tile in its matrix set's CRS, as x, y (left, bottom, right, top)."""
        b = matrix_set(self.tms_id).xy_bounds(self.tile)
        return b.left, b.bottom, b.right, b.top

    def crs84_bounds(self, buffer: float = BUFFER / EXTENT) -> tuple[float, float, float, float]:
        """The tile in CRS84 with `buffer` (a share of its side) around it, cut at the world's edge."""
        b = matrix_set(self.tms_id).bounds(self.tile)
        dx, dy = (b.right - b.left) * buffer, (b.top - b.bottom) * buffer
        return (max(-180.0, b.left - dx), max(-90.0, b.bottom - dy), min(180.0, b.right + dx),
                min(90.0, b.top + dy))


def parse_tile(tms_id: str, z: str, row: str, col: str) -> TileRequest:
    """The tile a path names (TileNotFound for one outside the matrix set)."""
    tms = matrix_set(tms_id)
    try:
        zi, ri, ci = int(z), int(row), int(col)
    except ValueError:
        raise TileNotFound(f"tile {z}/{row}/{col}: the tile matrix, row and column are whole numbers") from None
    if not 0 <= zi <= min(MAX_ZOOM, tms.maxzoom):
        raise TileNotFound(f"tile matrix {zi}: {tms_id} offers 0 to {min(MAX_ZOOM, tms.maxzoom)}")
    m = tms.matrix(zi)
    if not (0 <= ri < m.matrixHeight and 0 <= ci < m.matrixWidth):
        raise TileNotFound(f"tile {zi}/{ri}/{ci} is outside tile matrix {zi} of {tms_id} "
                           f"({m.matrixHeight} rows, {m.matrixWidth} columns)")
    return TileRequest(tms_id, zi, ri, ci)


# -- encoding ----------------------------------------------------------------------------------------------
def encode_tile(layer: str, req: TileRequest, found: TileFeatures) -> bytes:
    """The features as one MVT layer named `layer`, generalised for the tile's zoom (b"" when none is inside)."""
    geoms = _to_pixels(req, found.geometries)
    keep = ~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)
    if not keep.any():
        return b""
    ids = [found.ids[i] for i in np.flatnonzero(keep)]
    props = [found.properties[i] for i in np.flatnonzero(keep)]
    geoms = geoms[keep]
    if req.z >= COMPLETE_ZOOM:
        return _encode(layer, ids, geoms, props)
    cell, tolerance = POINT_CELL, 1.0
    while True:
        tile = _encode(layer, *_generalised(ids, geoms, props, cell, tolerance))
        if len(tile) <= MAX_TILE_BYTES or cell >= EXTENT:
            return tile
        cell, tolerance = cell * 2, tolerance * 2


def make_tile(source: FeatureSource, req: TileRequest) -> bytes:
    """A collection's layer of a tile: made by the source's database where it can (generalised ones coarser until
    under MAX_TILE_BYTES), else from its features encoded here."""
    complete = req.z >= COMPLETE_ZOOM
    cell = None if complete else POINT_CELL
    chosen = source.style.properties
    while True:
        native = source.vector_tile(source.id, req.tms_id, req.z, req.row, req.col, BUFFER, cell, chosen)
        if native is None:
            break
        if cell is None or len(native) <= MAX_TILE_BYTES or cell >= EXTENT:
            return native
        cell *= 2
    found = source.tile_features(req.crs84_bounds(), MAX_FEATURES, None if complete else EXTENT // POINT_CELL)
    if not found.complete:
        log.warning("tile %s/%d/%d/%d of %r: more than %d features met it, the first %d are drawn", req.tms_id,
                    req.z, req.row, req.col, source.id, MAX_FEATURES, MAX_FEATURES)
    if chosen is not None:  # the layer's attributes as config.yml chose them (and a cluster's count)
        keep = {*chosen, "point_count"}
        found.properties = [{k: v for k, v in p.items() if k in keep} for p in found.properties]
    return encode_tile(source.id, req, found)


def _to_pixels(req: TileRequest, geoms: np.ndarray) -> np.ndarray:
    """CRS84 geometries in the tile's pixel grid (y down), clipped to the tile and its buffer."""
    left, bottom, right, top = req.grid_bounds()
    transformer = _to_grid_crs(req.tms_id)
    sx, sy = EXTENT / (right - left), EXTENT / (top - bottom)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = coords[:, 0], coords[:, 1]
        if transformer is not None:
            x, y = transformer.transform(x, y)
        return np.column_stack([(np.asarray(x) - left) * sx, (top - np.asarray(y)) * sy])

    out = shapely.transform(geoms, project)
    return shapely.clip_by_rect(out, -BUFFER, -BUFFER, EXTENT + BUFFER, EXTENT + BUFFER)


def _generalised(ids: list[Any], geoms: np.ndarray, props: list[dict[str, Any]], cell: int,
                 tolerance: float) -> tuple[list[Any], np.ndarray, list[dict[str, Any]]]:
    """Points in one cell as one (the first, with `point_count`: how many it stands for); lines and polygons
    simplified to `tolerance`, and those smaller than it as points, counted like them."""
    tiny = shapely.get_type_id(geoms) != 0
    if tiny.any():
        lo = shapely.bounds(geoms)
        tiny &= (lo[:, 2] - lo[:, 0] < tolerance * 2) & (lo[:, 3] - lo[:, 1] < tolerance * 2)
        geoms = geoms.copy()
        geoms[tiny] = shapely.centroid(geoms[tiny])
    points = shapely.get_type_id(geoms) == 0
    out_ids: list[Any] = []
    out_geoms: list[Any] = []
    out_props: list[dict[str, Any]] = []
    if points.any():
        where = np.flatnonzero(points)
        xy = shapely.get_coordinates(geoms[where])
        cells = np.floor(xy / cell).astype(np.int64)
        _, first, inverse = np.unique(cells, axis=0, return_index=True, return_inverse=True)
        weights = np.array([props[k].get("point_count", 1) for k in where.tolist()], dtype=np.int64)
        counts = np.bincount(inverse.ravel(), weights=weights, minlength=len(first)).astype(np.int64)
        for i, n in zip(first.tolist(), counts.tolist(), strict=True):
            k = int(where[i])
            out_ids.append(ids[k])
            out_geoms.append(geoms[k])
            out_props.append(props[k] if n == 1 else {**props[k], "point_count": n})
    if (~points).any():
        where = np.flatnonzero(~points)
        simple = shapely.simplify(geoms[where], tolerance, preserve_topology=True)
        for k, g in zip(where.tolist(), simple, strict=True):
            if not shapely.is_empty(g):
                out_ids.append(ids[k])
                out_geoms.append(g)
                out_props.append(props[k])
    return out_ids, np.array(out_geoms, dtype=object), out_props


def _encode(layer: str, ids: list[Any], geoms: np.ndarray, props: list[dict[str, Any]]) -> bytes:
    features = []
    for fid, geom, p in zip(ids, geoms, props, strict=True):
        attrs = {k: v for k, v in ((k, _attribute(v)) for k, v in p.items()) if v is not None}
        feature: dict[str, Any] = {"geometry": geom, "properties": attrs}
        if isinstance(fid, int) and not isinstance(fid, bool) and fid >= 0:
            feature["id"] = fid  # MVT ids are unsigned integers; others are kept as the `id` attribute
        else:
            attrs.setdefault("id", str(fid))
        features.append(feature)
    if not features:
        return b""
    options = {"extents": EXTENT, "y_coord_down": True, "on_invalid_geometry": on_invalid_geometry_make_valid}
    return mapbox_vector_tile.encode([{"name": layer, "features": features}], default_options=options)


def _attribute(value: Any) -> Any:
    """A property as an MVT attribute value (text, number, boolean); None is left out."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return _attribute(value.item())
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
