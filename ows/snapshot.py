"""FlatGeobuf snapshots of the collections MapServer cannot read in place (SQLite imports, files, the live sensor
layers, indicators): every feature the OGC API shows, with a packed R-tree, written when the data change.

A snapshot's file name carries the hash of the source's data version, so that the workers of one platform share
the files (each writes to a temporary name and renames it into place) and a MapServer still reading an old
file keeps it until it is done. A source that cannot tell its version in advance (the live layers) is written
again once its snapshot is older than `UNVERSIONED_S`; those are the small ones.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import orjson
import pandas as pd
import pyogrio

from features.source import FeatureSource, geometry_kind

WORLD = (-180.0, -90.0, 180.0, 90.0)
MAX_FEATURES = 5_000_000  # a collection bigger than this is served by the OGC API and tiles, not in a snapshot
UNVERSIONED_S = 5.0  # how stale a snapshot of a source without a data version may be
KEEP_S = 120.0  # an old snapshot is removed this long after a newer one replaced it (a request may still read it)
KEY = "udp_id"  # the feature id's column, as DatabaseTable names it


@dataclass(frozen=True)
class Snapshot:
    """One collection written to a FlatGeobuf file."""

    path: Path
    kind: str  # point, line or polygon: the geometry most of its features have
    count: int
    bbox: tuple[float, float, float, float] | None
    multi: bool = False  # some of its points are multipoints


class Snapshots:
    """The current snapshot of each collection, in one directory shared by the platform's workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, tuple[str, float, Snapshot]] = {}  # collection → (version, written at, snapshot)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def current(self, source: FeatureSource) -> Snapshot:
        """The snapshot of the source's data as they are now, written first when they changed."""
        version = source.etag()
        now = time.monotonic()
        known = self._known.get(source.id)
        if known is not None and (known[0] == version if version else now - known[1] < UNVERSIONED_S):
            return known[2]
        with self._guard:
            lock = self._locks.setdefault(source.id, threading.Lock())
        with lock:  # one writer per collection in this worker; the others wait for its file
            known = self._known.get(source.id)
            if known is not None and (known[0] == version if version else time.monotonic() - known[1] < UNVERSIONED_S):
                return known[2]
            snapshot = self._write(source, version)
            self._known[source.id] = (version, time.monotonic(), snapshot)
            self._sweep(source.id, snapshot.path)
            return snapshot

    def _write(self, source: FeatureSource, version: str) -> Snapshot:
        features = source.tile_features(WORLD, MAX_FEATURES)
        frame = _frame(features.ids, features.geometries, features.properties)
        kinds_named = set(frame.geom_type.tolist())
        kinds = [geometry_kind(t) for t in frame.geom_type.tolist()]
        kind = max(set(kinds), key=kinds.count) if kinds else "point"
        tag = version or f"t{time.time_ns()}"
        digest = hashlib.sha1(f"{source.id}\0{tag}".encode()).hexdigest()[:16]
        path = self.directory / f"{_safe(source.id)}.{digest}.fgb"
        multi = "MultiPoint" in kinds_named
        if version and path.exists():  # another worker wrote this version already
            return Snapshot(path, kind, len(frame), _bounds(frame), multi)
        # GDAL writes a directory, not a file, for a name not ending in .fgb
        partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.part.fgb")
        pyogrio.write_dataframe(frame, partial, driver="FlatGeobuf", layer=source.id,
                                geometry_type=_ogr_type(frame, kind), SPATIAL_INDEX="YES")
        os.replace(partial, path)
        return Snapshot(path, kind, len(frame), _bounds(frame), multi)

    def _sweep(self, collection: str, keep: Path) -> None:
        """Remove the collection's older snapshots once no request can still be reading them."""
        cutoff = time.time() - KEEP_S
        for old in self.directory.glob(f"{_safe(collection)}.*.fgb"):
            try:
                if old != keep and old.stat().st_mtime < cutoff:  # a partial one so old is a writer's that died
                    old.unlink()
            except FileNotFoundError:  # another worker swept it
                pass


def _frame(ids: list[Any], geometries: np.ndarray, properties: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """The features as a table: the id, each property as a column (nested values as JSON text), the geometry."""
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


def _ogr_type(frame: gpd.GeoDataFrame, kind: str) -> str:
    """The layer's geometry type: the one its features share, else OGR's Unknown (mixed types)."""
    types = set(frame.geom_type.tolist())
    return types.pop() if len(types) == 1 else ("Point" if not types else "Unknown")


def _bounds(frame: gpd.GeoDataFrame) -> tuple[float, float, float, float] | None:
    if frame.empty:
        return None
    x0, y0, x1, y1 = (float(v) for v in frame.total_bounds)
    return (x0, y0, x1, y1)


def _safe(collection: str) -> str:
    """A collection id as a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in collection)
