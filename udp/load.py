"""The departmental files brought into the store: `udp load`, the start of `udp serve`, and the watcher that
imports a changed file again while the platform serves (the switch to it is atomic: provider_plugins/imports.py).

An import runs in a process of its own when its files are big, so that the serving process neither holds the
GIL for the length of it nor keeps the memory a large read leaves behind.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from features.spec import CollectionSpec
from provider_plugins.imports import fingerprint, import_sources, stale
from provider_plugins.table import SourceError
from sensorthings.store.base import Store
from sensorthings.store.leadership import exclusive

log = logging.getLogger("udp.load")

IN_PROCESS_BYTES = 20 * 1024 * 1024  # files up to this size in all are imported in the calling process
WATCH_S = 2.0
MEMORY = ("sqlite://", "sqlite:///:memory:")  # how often the watcher looks at the files


def _size(spec: CollectionSpec) -> int:
    path = Path(spec.source)
    files = path.parent.glob(path.stem + ".*") if path.suffix.lower() == ".shp" else [path]
    return sum(f.stat().st_size for f in files if f.exists())


def _bars() -> Callable[[str, int, int], None]:
    """A progress bar per collection on a terminal (nothing elsewhere)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(cid: str, done: int, total: int) -> None:
        bar = bars.get(cid)
        if bar is None:
            bar = bars[cid] = tqdm(total=total, desc=f"importing {cid}", unit=" features", file=sys.stderr,
                                   mininterval=0.5, disable=not sys.stderr.isatty() or total < 50_000)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


def import_files(store_url: str, specs: list[CollectionSpec], show: bool = True) -> list[str]:
    """Import the given file sources into the store here; the collection ids imported."""
    store = Store.open(store_url)  # no statement timeout: an import is no client's query
    try:
        return [done.collection for done in import_sources(store, specs, _bars() if show else None)]
    finally:
        store.close()


def bring_in(store: Store, collections: Mapping[str, CollectionSpec], show: bool = True) -> list[str]:
    """Import every file source whose import is missing or stale, in a process of its own when they are big
    (SourceError names the collection that failed); the collection ids imported."""
    todo = stale(store, collections.values())
    if not todo:
        return []
    if store.url in MEMORY:  # nobody else can reach it: here, through the store itself
        return [done.collection for done in import_sources(store, todo, _bars() if show else None)]
    if sum(_size(s) for s in todo) <= IN_PROCESS_BYTES:
        return import_files(store.url, todo, show)
    return import_elsewhere(store.url, todo, show)


def import_elsewhere(store_url: str, specs: list[CollectionSpec], show: bool) -> list[str]:
    """`import_files` in a spawned process of its own (the serving process keeps neither the GIL nor the memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(import_files, store_url, specs, show).result()


class Watcher:
    """Imports a file source again whenever its file changes, while the platform serves."""

    def __init__(self, store_url: str, collections: Mapping[str, CollectionSpec], every: float = WATCH_S) -> None:
        self.store_url, self.every = store_url, every
        self.files = {cid: spec for cid, spec in collections.items() if not spec.is_postgis}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-source-watcher", daemon=True)

    def start(self) -> Watcher:
        """Begin watching (nothing to do without file sources)."""
        if self.files:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current look."""
        self._stop.set()

    def _run(self) -> None:
        store = Store.open(self.store_url)
        failed: dict[str, str] = {}  # collection → the fingerprint whose import failed: not again until it changes
        try:
            while not self._stop.wait(self.every):
                todo = []
                try:
                    todo = [s for s in stale(store, self.files.values()) if failed.get(s.id) != fingerprint(s)]
                    if not todo:
                        continue
                    with exclusive(self.store_url, "imports"):  # not while a node starting imports
                        done = import_elsewhere(self.store_url, todo, False)
                    log.warning("re-imported %s", ", ".join(done))
                except SourceError as exc:  # a file half-written, or broken: the last import goes on serving
                    log.warning("re-import failed, the last import is served: %s", exc)
                    failed.update({s.id: fingerprint(s) for s in todo})
                except Exception:
                    log.exception("re-import failed, the last import is served")
                    failed.update({s.id: fingerprint(s) for s in todo})
        finally:
            store.close()
