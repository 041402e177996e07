"""Small sources: the in-memory table (what indicators still use) against the same file imported into the SQLite
store, in-process, so that only the source's own work is timed (`python bench/small_sources.py`).

It answers whether the in-memory evaluator earns its keep for small sources: the demo's 25 districts, 467 dongs
and 1,763 CCTV sites, each asked for a page of 100, a CQL2 filter, a bbox and one feature, p50 and p99 in µs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.cql import parse_filter  # noqa: E402
from features.request import ItemsQuery  # noqa: E402
from features.source import FeatureSource  # noqa: E402
from provider_plugins.stored import StoredSource  # noqa: E402
from provider_plugins.table import TableSource  # noqa: E402
from sensorthings.store.base import Store  # noqa: E402
from udp.config import load_config  # noqa: E402
from udp.load import bring_in  # noqa: E402

REPEAT = 300
FILTERS = {"districts": "code > '11100'", "dongs": "EMD_CD LIKE '1111%'", "cctv": "count >= 3"}


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """p50 and p99 in µs of `REPEAT` calls after a warm-up."""
    for _ in range(10):
        run()
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def compare(cid: str, memory: FeatureSource, stored: FeatureSource, text: str) -> None:
    """One collection's lines: a page, the filter, a bbox over a quarter of the extent, one feature."""
    bbox = stored.bbox
    assert bbox is not None
    mid = ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    queries = {
        "page": ItemsQuery(limit=100),
        "filter": ItemsQuery(limit=100, filter=parse_filter(text, "cql2-text")),
        "bbox": ItemsQuery(limit=100, bbox=(bbox[0], bbox[1], mid[0], mid[1])),
    }
    runs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for name, q in queries.items():
        a, b = memory.search(q), stored.search(q)
        assert a.number_matched == b.number_matched, (cid, name, a.number_matched, b.number_matched)
        runs[name] = (lambda q=q: memory.search(q), lambda q=q: stored.search(q))
    fid = memory.search(ItemsQuery(limit=1)).features[0].split(b'"id":', 1)[1].split(b",", 1)[0].strip(b'"').decode()
    runs["by id"] = (lambda: memory.feature(fid, ItemsQuery()), lambda: stored.feature(fid, ItemsQuery()))
    for name, (in_memory, in_store) in runs.items():
        m, s = timed(in_memory), timed(in_store)
        print(f"{cid:12} {name:10} {m[0]:10.0f} /{m[1]:9.0f} {s[0]:12.0f} /{s[1]:10.0f} {s[0] / m[0]:6.1f}")


def main() -> int:
    """Print the table."""
    config = load_config(str(ROOT / "udp" / "demo" / "config.yml"))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/small.db")
        bring_in(store, {c: config.collections[c] for c in FILTERS}, show=False)
        print(f"{'collection':12} {'query':10} {'in memory p50/p99 µs':>22} {'SQLite store p50/p99 µs':>25} "
              f"{'ratio':>6}")
        for cid, text in FILTERS.items():
            compare(cid, TableSource(config.collections[cid]), StoredSource(config.collections[cid], store), text)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
