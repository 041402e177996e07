"""FlatGeobuf snapshots of the collections MapServer cannot read in place (SQLite imports, files, the live sensor
layers, indicators): every feature the OGC API shows, with a packed R-tree, written when the data change.

A snapshot's file name carries the hash of the source's data version, so that the workers of one platform share
the files (each writes to a temporary name and renames it into place) and a MapServer still reading an old
file keeps it until it is done. A source that cannot tell its version in advance (the live layers) is written
again once its snapshot is older than `UNVERSIONED_S`; those are the small ones.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import shapely

if TYPE_CHECKING:
    import geopandas as gpd

from features.shared_files import file_name, remove_unused, write_whole, written_whole
from features.source import FeatureSource, geometry_kind

WORLD = (-180.0, -90.0, 180.0, 90.0)
MAX_FEATURES = 5_000_000  # a collection bigger than this is served by the OGC API and tiles, not in a snapshot
OVERVIEW_MIN = 50_000  # a point layer with more features gets overviews for small-scale maps
OVERVIEW_CELLS = (128, 512, 2048)  # the overviews' grids: cells across the layer's longer side
UNVERSIONED_S = 5.0  # how stale a snapshot of a source without a data version may be
OVERVIEWS_EVERY_S = 60.0  # overviews of rows read in place are made again at most this often (they may lag)
KEEP_S = 120.0  # an old snapshot is removed this long after a newer one replaced it (a request may still read it)
KEY = "udp_id"  # the feature id's column, as DatabaseTable names it


@dataclass(frozen=True)
class Overview:
    """A point layer thinned to one point per cell of a grid (the first, with `point_count`), for maps whose pixels
    are no smaller than a cell: they look the same and draw from a fraction of the points."""

    cell: float  # a cell's side in degrees
    path: Path
    count: int


@dataclass(frozen=True)
class Snapshot:
    """One collection written to FlatGeobuf files."""

    path: Path | None  # None: only its overviews were written (MapServer reads the rows in place)
    kind: str  # point, line or polygon: the geometry most of its features have
    count: int
    bbox: tuple[float, float, float, float] | None
    multi: bool = False  # some of its points are multipoints
    overviews: tuple[Overview, ...] = ()
    stem: str = ""  # the start of its files' names


class Snapshots:
    """The current snapshot of each collection, in one directory shared by the platform's workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # (collection, whole) → (version, written at, snapshot)
        self._known: dict[tuple[str, bool], tuple[str, float, Snapshot]] = {}
        self._locks: dict[tuple[str, bool], threading.Lock] = {}
        self._guard = threading.Lock()

    def current(self, source: FeatureSource, whole: bool = True) -> Snapshot:
        """The snapshot of the source's data as they are now, written first when they changed; `whole` False:
        only its overviews (for rows MapServer reads in place; a source without a data version gets none)."""
        key = (source.id, whole)
        version = source.etag() if whole else source.changes_seen()
        if not whole and not version:
            return Snapshot(None, "point", 0, None)  # nothing to sweep: no stem
        known = self._known.get(key)
        if _fresh(known, version):
            return known[2]  # type: ignore[index]
        if known is not None and not whole and time.monotonic() - known[1] < OVERVIEWS_EVERY_S:
            return known[2]  # a busy live table is not read whole on every change
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one writer per collection in this worker; the others wait for its file
            known = self._known.get(key)
            if _fresh(known, version):
                return known[2]  # type: ignore[index]
            snapshot = self._write(source, version, whole)
            self._known[key] = (version, time.monotonic(), snapshot)
            remove_unused(self.directory.glob(f"{file_name(source.id)}.*"),
                          lambda p: p.name.startswith(snapshot.stem + "."), KEEP_S)
            return snapshot

    def _write(self, source: FeatureSource, version: str, whole: bool) -> Snapshot:
        tag = version or f"t{time.time_ns()}"
        digest = hashlib.sha1(f"{source.id}\0{tag}\0{whole}".encode()).hexdigest()[:16]
        stem = f"{file_name(source.id)}.{digest}"
        ready = self.directory / f"{stem}.json"
        if version and (found := _written(ready)) is not None:  # by another worker, or before a restart
            return found
        features = source.tile_features(WORLD, MAX_FEATURES)
        frame = _frame(features.ids, features.geometries, features.properties)
        kinds_named = set(frame.geom_type.tolist())
        kinds = [geometry_kind(t) for t in frame.geom_type.tolist()]
        kind = max(set(kinds), key=kinds.count) if kinds else "point"
        multi = "MultiPoint" in kinds_named
        bbox = _bounds(frame)
        path = self.directory / f"{stem}.fgb"
        if whole:
            _write_fgb(frame, path, source.id, _ogr_type(frame), reuse=bool(version))
        overviews = []
        if kind == "point" and len(frame) >= OVERVIEW_MIN and bbox is not None:
            for cells in OVERVIEW_CELLS:
                thinned = _thin(frame, bbox, cells)
                if len(thinned) > len(frame) // 2:  # no longer worth it, nor are the finer grids
                    break
                at = self.directory / f"{stem}.o{cells}.fgb"
                _write_fgb(thinned, at, source.id, _ogr_type(thinned), reuse=bool(version))
                span = max(bbox[2] - bbox[0], bbox[3] - bbox[1])
                overviews.append(Overview(span / cells, at, len(thinned)))
        snapshot = Snapshot(path if whole else None, kind, len(frame), bbox, multi, tuple(overviews), stem)
        if version:  # what was written, for the next to find without reading the data again
            write_whole(ready, orjson.dumps({
                "stem": stem, "path": str(snapshot.path) if snapshot.path else None, "kind": kind,
                "count": snapshot.count,
                "bbox": bbox, "multi": multi, "overviews": [[o.cell, str(o.path), o.count] for o in overviews]}))
        return snapshot


def _fresh(known: tuple[str, float, Snapshot] | None, version: str) -> bool:
    """Whether a snapshot made before still shows the data: of this version, or, without versions, recent."""
    if known is None:
        return False
    return known[0] == version if version else time.monotonic() - known[1] < UNVERSIONED_S


def _frame(ids: list[Any], geometries: np.ndarray, properties: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """The features as a table: the id, each property as a column (nested values as JSON text), the geometry."""
    import geopandas as gpd  # here: a worker that never answers WMS/WFS does not hold it (30 MB)

    present = np.array([g is not None for g in geometries], dtype=bool) if len(geometries) else np.array([], bool)
    table = pd.DataFrame.from_records([p for p, keep in zip(properties, present, strict=True) if keep])
    for name in table.columns:
        column = table[name]
        if column.dtype == object and column.map(lambda v: isinstance(v, dict | list)).any():
            table[name] = column.map(lambda v: None if v is None else orjson.dumps(v).decode())
    kept = [i for i, keep in zip(ids, present, strict=True) if keep]
    # ids keep their type (a filter on the GML id compares as MapServer reads it); mixed ones become text
    numbers = all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in kept)
    table.insert(0, KEY, pd.array(kept, dtype="Int64") if numbers and kept else [str(i) for i in kept])
    return gpd.GeoDataFrame(table, geometry=list(geometries[present]) if present.any() else [], crs="EPSG:4326")


def _written(ready: Path) -> Snapshot | None:
    """The snapshot a finished write recorded, None when there is none or one of its files is gone."""
    try:
        doc = orjson.loads(ready.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    snapshot = Snapshot(Path(doc["path"]) if doc["path"] else None, doc["kind"], doc["count"],
                        tuple(doc["bbox"]) if doc["bbox"] else None, doc["multi"],
                        tuple(Overview(cell, Path(p), n) for cell, p, n in doc["overviews"]), doc["stem"])
    files = [snapshot.path, *(o.path for o in snapshot.overviews)]
    return snapshot if all(f is None or f.exists() for f in files) else None


def _write_fgb(frame: gpd.GeoDataFrame, path: Path, layer: str, geometry_type: str, reuse: bool) -> None:
    """A FlatGeobuf file with its R-tree, renamed into place whole; `reuse`: one already there is this one."""
    if reuse and path.exists():  # another worker wrote this version already
        return
    import pyogrio

    with written_whole(path) as partial:  # (its name ends in .fgb: GDAL writes a directory otherwise)
        pyogrio.write_dataframe(frame, partial, driver="FlatGeobuf", layer=layer, geometry_type=geometry_type,
                                SPATIAL_INDEX="YES")


def _thin(frame: gpd.GeoDataFrame, bbox: tuple[float, float, float, float], cells: int) -> gpd.GeoDataFrame:
    """The first feature of each cell of a grid of `cells` across the box's longer side, with how many it stands
    for (`point_count`)."""
    centres = shapely.centroid(frame.geometry.values)
    x, y = shapely.get_x(centres), shapely.get_y(centres)
    span = max(bbox[2] - bbox[0], bbox[3] - bbox[1]) or 1e-9
    col = np.minimum(((x - bbox[0]) / span * cells).astype(np.int64), cells)
    row = np.minimum(((y - bbox[1]) / span * cells).astype(np.int64), cells)
    _, first, counts = np.unique(col * (cells + 1) + row, return_index=True, return_counts=True)
    out = frame.iloc[first][[KEY, "geometry"]].copy()
    out["point_count"] = counts
    return out


def _ogr_type(frame: gpd.GeoDataFrame) -> str:
    """The layer's geometry type: the one its features share, else OGR's Unknown (mixed types)."""
    types = set(frame.geom_type.tolist())
    return types.pop() if len(types) == 1 else ("Point" if not types else "Unknown")


def _bounds(frame: gpd.GeoDataFrame) -> tuple[float, float, float, float] | None:
    if frame.empty:
        return None
    x0, y0, x1, y1 = (float(v) for v in frame.total_bounds)
    return (x0, y0, x1, y1)
