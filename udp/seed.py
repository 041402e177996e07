"""`udp seed`: the process `udp serve` starts beside its workers to make the vector tiles of the big collections
ahead of the first map (features/tile_files.py), and again after a re-import. It runs at a low priority, on the
tiles' shared directory, and stops when the platform stops."""

from __future__ import annotations

import logging
import os
import threading
import urllib.request

from features.request import ItemsQuery
from features.source import FeatureSource, SourceUnavailable
from features.tile_files import TileFiles
from sensorthings.store.base import Store
from udp.config import Config
from udp.sources import load_sources

log = logging.getLogger(__name__)
SEED_MIN = 50_000  # a collection with fewer features makes its tiles fast enough when asked
EVERY_S = 10.0  # how often the seeder looks for new data versions
STARTED_S = 5.0  # after the platform first answers: its other workers are starting


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def big(source: FeatureSource) -> bool:
    """Whether a collection is worth seeding: a versioned collection of features with SEED_MIN or more."""
    if source.item_type != "feature" or not source.tiles_version():
        return False
    return source.search(ItemsQuery(limit=0, hits=True)).number_matched >= SEED_MIN


def seed_once(sources: dict[str, FeatureSource], files: TileFiles, stop: threading.Event | None = None) -> list[str]:
    """Seed every big collection whose current data are not seeded yet; the ids seeded now."""
    done = []
    keep = set()
    for cid, source in sources.items():
        folder = files.current(source)
        if folder is not None:
            keep.add(folder)
        try:
            if folder is None or files.seeded(folder) or not big(source):
                continue
            made = files.seed(source, stop)
        except SourceUnavailable as exc:
            log.warning("seeding %s: %s", cid, exc)
            continue
        if made is not None:
            log.info("seeded %s: %d tiles", cid, made)
            done.append(cid)
        if stop is not None and stop.is_set():
            break
    files.sweep(keep)
    return done


def run(config: Config, stop: threading.Event, after: str | None = None) -> None:
    """Seed until stopped, looking for new data versions every EVERY_S; with `after`, once that URL answers
    (the workers reading their sources at start-up come first) and a little more."""
    try:
        os.nice(10)  # the workers' requests first
    except OSError:
        pass
    if after:
        while not stop.is_set() and not _answers(after):
            stop.wait(1.0)
        stop.wait(STARTED_S)
    store = Store.open(config.store)
    try:
        sources = load_sources(config.collections, store, config.indicators, config.statement_timeout_s)
        files = TileFiles(config.cache_directory() / "tiles")
        while not stop.is_set():
            seed_once(sources, files, stop)
            stop.wait(EVERY_S)
    finally:
        store.close()
