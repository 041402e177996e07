"""The catalogue's search index (`python bench/catalogue.py`): building features.record_index.RecordIndex from N
synthetic records and answering `q`, `bbox` and CQL2 searches, against a baseline in the same run: a plain Python
scan of the same records for the same words (what the catalogue would cost without an index).

Why the index is in memory and rebuilt rather than kept in the store (FTS5 on SQLite, tsvector on PostgreSQL): a
city's catalogue has one record per dataset, ObservedProperty and service — hundreds — and is computed from the
sources anyway (extents follow the data). The figures say whether rebuilding it every few seconds and searching it
per request stays small next to a request's other costs at 10× and 100× that size.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features.metadata import THEMES, Theme  # noqa: E402
from features.record import DATASET, Record  # noqa: E402
from features.record_index import RecordIndex  # noqa: E402
from features.records_query import parse_records  # noqa: E402

WORDS = ("tree park bench parking bike station air quality noise traffic counter pedestrian school hospital "
         "district boundary water level river flood heat energy charger bus stop tram subway waste litter").split()


def records(n: int, seed: int = 7) -> list[Record]:
    """N records of random words, themes, boxes around Hamburg and periods in 2020–2025."""
    rnd = random.Random(seed)
    codes = list(THEMES)
    out = []
    for i in range(n):
        x, y = 9.7 + rnd.random() * 0.6, 53.4 + rnd.random() * 0.3
        start = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=rnd.randrange(1500))
        out.append(Record(f"r{i}", DATASET, "collection", " ".join(rnd.sample(WORDS, 3)).title(),
                          " ".join(rnd.choices(WORDS, k=25)), tuple(rnd.sample(WORDS, 3)),
                          (Theme(rnd.choice(codes)),), bbox=(x, y, x + 0.05, y + 0.05), start=start,
                          end=start + timedelta(days=rnd.randrange(400))))
    return out


def searching(index: RecordIndex, params: dict[str, str], repeat: int) -> float:
    """The median milliseconds of one search."""
    query = parse_records(params)
    return timed(lambda: index.search(query), repeat)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median milliseconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print("size   build ms   q ms   scan ms (baseline)   q/scan   bbox+datetime ms   CQL2 ms")
    for n in (int(v) for v in args.sizes.split(",")):
        recs = records(n)
        build = timed(lambda recs=recs: RecordIndex(recs, "v"), max(3, args.repeat // 5))
        index = RecordIndex(recs, "v")

        def scan(recs: list[Record] = recs) -> list[Record]:
            terms = ("air quality", "flood")
            return [r for r in recs if any(t in f"{r.title} {r.description} {' '.join(r.keywords)}".lower()
                                           for t in terms)][:100]

        q_ms = searching(index, {"q": "air quality,flood", "limit": "100"}, args.repeat)
        scan_ms = timed(scan, args.repeat)
        spatial = searching(index, {"bbox": "9.9,53.5,10.0,53.6", "datetime": "2022-01-01T00:00:00Z/..",
                                    "limit": "100"}, args.repeat)
        cql = searching(index, {"filter": "title LIKE 'Tree%' AND themes = 'ENVI'", "limit": "100"}, args.repeat)
        print(f"{n:>6} {build:>9.1f} {q_ms:>6.2f} {scan_ms:>9.2f} {q_ms / scan_ms:>17.2f} {spatial:>17.2f} "
              f"{cql:>9.2f}")


if __name__ == "__main__":
    main()
