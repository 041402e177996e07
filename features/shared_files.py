"""Files the platform's processes share in a directory (kept tiles, WMS snapshots and mapfiles): each written
whole under a temporary name and renamed into place, so that a reader meets the old file or the new one, never
half of one; and collection ids made into file names."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def file_name(text: str) -> str:
    """A collection id (or any text) as a file name: letters, digits, `-` and `_`; anything else `_`."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (with its suffix: GDAL chooses a format by it) to write, renamed to `path`
    when the block ends without an error, removed when it fails."""
    partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.part{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def write_whole(path: Path, data: bytes | str) -> None:
    """Write a file whole (another process writing the same file at once writes the same content)."""
    with written_whole(path) as partial:
        if isinstance(data, str):
            partial.write_text(data, encoding="utf-8")
        else:
            partial.write_bytes(data)


def remove_unused(paths: Iterable[Path], kept: Callable[[Path], bool], unused_s: float) -> None:
    """Remove the files and folders `kept` does not keep once untouched for `unused_s` (a request of another
    worker may still read a newer one's predecessor; one left half-written by a process that died goes too)."""
    cutoff = time.time() - unused_s
    for old in paths:
        with contextlib.suppress(FileNotFoundError):
            if not kept(old) and old.stat().st_mtime < cutoff:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
