"""Retention (udp/retention.py) on a big Observations table: one round that aggregates every Datastream's history
hourly and daily and deletes what is past the rule, then a round with nothing to do, then a round an hour later.

    python bench/retention.py [--store postgresql://…/udp_bench_100m] [--keep P60D]

Run it on the database `bench/observations_100m.py --keep` leaves (1,000 Datastreams of ObservedProperty PM10, one
Observation a minute each, about 69 days): the rule `{observedProperty: PM10, keep: …}` applies to all of them.
The round changes the database (raw rows deleted, aggregates written): run it last. It prints the rows written and
deleted, and their rates. It asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import psycopg
from harness import say

from sensorthings.store.base import Store
from udp.retention import RetentionEngine, parse_retention


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/udp_bench_100m")
    ap.add_argument("--keep", default="P60D")
    args = ap.parse_args()
    with psycopg.connect(args.store) as conn:
        rows, first, last = conn.execute("SELECT count(*), min(phenomenon_time_start), max(phenomenon_time_start) "
                                         "FROM observations").fetchone()
    say(f"{rows:,} Observations from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}; rule keep {args.keep}, "
        "aggregates PT1H and P1D")
    store = Store.open(args.store)
    try:
        engine = RetentionEngine(store, parse_retention([{"observedProperty": "PM10", "keep": args.keep}]))
        now = datetime.now(UTC)
        for label, at in (("first round (the whole history)", now), ("next round (nothing due)", now),
                          ("an hour later", now + timedelta(hours=1))):
            t0 = time.perf_counter()
            done = engine.run_once(at)
            took = time.perf_counter() - t0
            say(f"{label}: {took:.1f} s; {done.read:,} raw Observations aggregated into {done.aggregated:,} in "
                f"{done.aggregating_s:.1f} s ({done.read / max(done.aggregating_s, 1e-9):,.0f}/s), {done.deleted:,} "
                f"raw Observations deleted in {done.deleting_s:.1f} s "
                f"({done.deleted / max(done.deleting_s, 1e-9):,.0f}/s)")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
