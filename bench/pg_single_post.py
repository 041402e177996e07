"""PostgreSQL: one device's Observation written alone, as the group-commit writer writes a single POST, alternating
between the write that begins, inserts and commits in one pipeline (`commits=True`, what the writer does) and the
same write inside the transaction `Store.write` begins and commits (the way before), in one process on one database.

    python bench/pg_single_post.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--writes 4000]

A fresh database next to --pg gets 100 Things of 3 Datastreams; then --writes one-row writes, every other one each
way. It prints each way's round trips to the database (the messages that end one: Sync and simple Query, counted on
a libpq trace of one write) and its median wall time per write, the first 100 left out, and their ratio. Each round
trip costs what the network between the platform and its database costs: on one machine little, across hosts more.
It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from harness import say
from pg_city import pg_city

from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow

WAYS = {"begun, inserted, committed at once": True, "inside Store.write's transaction": False}


def write_one(store: Store, row: ObservationRow, at_once: bool, trace: Path | None = None) -> None:
    """One row written alone, one way; with `trace`, the driver's messages written there (the commit's too)."""
    with store.write() as (conn, changes):
        pgconn = conn.connection.driver_connection.pgconn
        out = None if trace is None else trace.open("w")
        if out is not None:
            pgconn.trace(out.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        store.write_observations(conn, [row], changes, commits=at_once)
    if out is not None:
        pgconn.untrace()
        out.close()


def round_trips(trace: Path) -> int:
    """The messages a traced write sent that each wait for the database's reply."""
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    return sum(1 for parts in sent if parts[0] == "F" and parts[2] in ("Sync", "Query"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--writes", type=int, default=4000)
    args = ap.parse_args()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with pg_city(args.pg, "udp_bench_single") as (_url, store, _service, streams), \
            tempfile.TemporaryDirectory() as tmp:
        def row(k: int) -> ObservationRow:
            return ObservationRow.of(float(k), phenomenon_time_start=t0 + timedelta(seconds=k),
                                     datastream_id=streams[k % len(streams)])

        trips = {}
        for n, (way, at_once) in enumerate(WAYS.items()):
            write_one(store, row(n), at_once)  # the streams' FeatureOfInterest made before the traced write
            trace = Path(tmp) / f"{n}.txt"
            write_one(store, row(n), at_once, trace)
            trips[way] = round_trips(trace)
        spent: dict[str, list[float]] = {way: [] for way in WAYS}
        for k in range(args.writes):
            way = list(WAYS)[k % 2]
            started = time.perf_counter()
            write_one(store, row(k), WAYS[way])
            if k >= 100:
                spent[way].append(time.perf_counter() - started)
        say(f"{args.writes:,} one-row writes, alternating")
        for way, wall in spent.items():
            say(f"{way:36s} {trips[way]} round trips, median {statistics.median(wall) * 1000:.3f} ms a write")
        first, second = (statistics.median(w) for w in spent.values())
        say(f"at once / inside the transaction: {first / second:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
