"""Vector tiles kept on disk, shared by the platform's workers and kept across restarts, for the collections whose
data have a version (imports, files): a tile once made is read again for as long as its data do not change. The
seeder (`udp seed`, which `udp serve` starts) makes a collection's WebMercatorQuad tiles down to SEED_ZOOM ahead of
the first map, so that no map waits for a tile of a big layer.

A collection's tiles are in a folder named by the hash of its tiles version, the properties its tiles carry and
the tiles' format: a change of any of them is a new folder, and old folders are removed once unused. Data whose
writes are logged by place (a PostGIS table with `changes: trigger`) keep one folder, and each tile's file is
named by its region's version as well: a write makes new files for the tiles it reaches only, and the file of
the region's earlier version is removed when the new one is written. Each file is written under a temporary name
and renamed into place; an empty tile is an empty file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import morecantile

from features.shared_files import file_name, remove_unused, write_whole
from features.source import FeatureSource, SourceUnavailable
from features.styles import tile_fields
from features.tiles import TileRequest, make_tile, matrix_set, parse_tile

FORMAT = "mvt-1"  # changes when the tiles made for the same data would differ (generalisation, limits)
SEED_ZOOM = 14  # the seeder's deepest zoom: its tiles are complete, and clients draw deeper zooms from them
SEED_TMS = "WebMercatorQuad"
KEEP_S = 300.0  # an unused old folder is removed after this long


def tile_version(source: FeatureSource, req: TileRequest) -> tuple[str, str]:
    """What a kept tile is kept under: the source's tiles version and, within it, its region's version ("", ""
    when the tile is made each time)."""
    version = source.tiles_version()
    return version, source.region_version(req.crs84_bounds()) if version else ""


class TileFiles:
    """The tiles of every versioned collection under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def folder(self, source: FeatureSource, version: str) -> Path | None:
        """Where the collection's tiles of this data version are; None for data without a version."""
        if not version:
            return None
        key = f"{version}\0{sorted(tile_fields(source))}\0{source.style.properties}\0{FORMAT}"
        return self.directory / f"{file_name(source.id)}.{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def current(self, source: FeatureSource) -> Path | None:
        """The folder of the collection's data as they are now; None for what is no collection of features, has
        no version, or cannot be read now."""
        if source.item_type != "feature":
            return None
        try:
            return self.folder(source, source.tiles_version())
        except SourceUnavailable:
            return None

    @staticmethod
    def get(folder: Path, req: TileRequest, region: str = "") -> bytes | None:
        """The kept tile, None when it was not made yet."""
        try:
            return _path(folder, req, region).read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def put(folder: Path, req: TileRequest, data: bytes, region: str = "") -> None:
        """Keep a tile (another worker writing the same one at once writes the same bytes); of a region's
        version, the files of its earlier versions go."""
        path = _path(folder, req, region)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, data)
        if region:
            for old in path.parent.glob(f"{req.col}.*.mvt"):
                if old != path and old.name.count(".") == 2:  # not a file being written (its temporary name)
                    old.unlink(missing_ok=True)

    @staticmethod
    def seeded(folder: Path) -> bool:
        """Whether the seeder has made every tile of the folder's pyramid."""
        return (folder / "seeded").exists()

    def tile(self, source: FeatureSource, version: tuple[str, str], req: TileRequest) -> bytes:
        """The tile kept for this version (`tile_version`), else made and kept."""
        folder = self.folder(source, version[0])
        found = self.get(folder, req, version[1]) if folder is not None else None
        if found is None:
            found = make_tile(source, req)
            if folder is not None:
                self.put(folder, req, found, version[1])
        return found

    def seed(self, source: FeatureSource, stop: threading.Event | None = None) -> int | None:
        """Make the collection's tiles down to SEED_ZOOM where it has features (a tile's children only where it is
        not empty); the number made, None when another seeder holds it or it was seeded already."""
        version = source.tiles_version()
        folder = self.folder(source, version)
        if folder is None or self.seeded(folder) or source.bbox is None:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / "seeding.lock") as held:
            if not held or self.seeded(folder):
                return None
            made = sum(1 for _ in _pyramid(source, lambda r: self.tile(source, tile_version(source, r), r), stop))
            if stop is not None and stop.is_set():
                return made
            (folder / "seeded").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            return made

    def sweep(self, keep: set[Path]) -> None:
        """Remove the folders of data versions no longer served (after KEEP_S unused)."""
        remove_unused((p for p in self.directory.iterdir() if p.is_dir()), lambda p: p in keep, KEEP_S)


def _path(folder: Path, req: TileRequest, region: str = "") -> Path:
    """A kept tile's file."""
    return folder / req.tms_id / str(req.z) / str(req.row) / (f"{req.col}.{region}.mvt" if region else f"{req.col}.mvt")


def _pyramid(source: FeatureSource, make: Callable[[TileRequest], bytes],
             stop: threading.Event | None) -> Iterator[TileRequest]:
    """The tiles of the source's box, coarsest first, each made; the children of the non-empty ones only."""
    tms = matrix_set(SEED_TMS)
    box = source.bbox
    assert box is not None
    level = [parse_tile(SEED_TMS, str(t.z), str(t.y), str(t.x)) for t in tms.tiles(*box, zooms=[0])]
    while level:
        deeper: list[TileRequest] = []
        for req in level:
            if stop is not None and stop.is_set():
                return
            body = make(req)
            yield req
            if body and req.z < SEED_ZOOM:
                for child in tms.children(morecantile.Tile(req.col, req.row, req.z)):
                    b = tms.bounds(child)
                    if b.left <= box[2] and b.right >= box[0] and b.bottom <= box[3] and b.top >= box[1]:
                        deeper.append(parse_tile(SEED_TMS, str(child.z), str(child.y), str(child.x)))
        level = deeper


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """An exclusive lock on a file, without waiting: True when this process holds it (released on exit, or when
    the process dies)."""
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
