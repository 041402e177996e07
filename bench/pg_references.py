"""PostgreSQL: what the Observations' references cost a bulk write, foreign keys against the statement triggers that
replace them (sensorthings/store/references.py), alternating in one run on one database.

    python bench/pg_references.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--rounds 40]

A fresh database next to --pg gets 100 Things of 3 Datastreams and --observations Observations; then each round
writes 1,000 Observations (three Datastreams, one FeatureOfInterest: one CreateObservations request's worth) through
the store's bulk insert (COPY) in one transaction and rolls it back (the table stays the same size), first with the
foreign keys put back, then with the triggers alone; then 10 rows a round, then one. It prints the median and
quartiles of each way's time from the insert's start to the end of its statement triggers. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg
from harness import say
from pg_city import pg_city

from sensorthings.store import references
from sensorthings.store.observations import ObservationRow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--observations", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    with pg_city(args.pg, "udp_bench_refs") as (url, store, service, streams):
        for ds in streams:  # one Observation each makes the Things' FeatureOfInterest
            service.call("POST", f"Datastreams({ds})/Observations", {"result": 0})
        foi = service.call("GET", "FeaturesOfInterest")["value"][0]["@iot.id"]
        t0 = datetime(2026, 1, 1, tzinfo=UTC)

        def rows(n: int, start: int) -> list[tuple[object, ...]]:
            return [store.bind_observation(ObservationRow(
                0, float(i), datastream_id=streams[(start + i * 3 // n) % len(streams)], feature_of_interest_id=foi,
                phenomenon_time_start=t0 + timedelta(seconds=start + i)).columns()) for i in range(n)]

        for start in range(0, args.observations, 10_000):
            with store.write() as (conn, _changes):
                store.bulk_insert(conn, rows(10_000, start))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE observations")
        say(f"{args.observations:,} Observations in {len(streams)} Datastreams; {args.rounds} rounds of 1,000 rows")

        def foreign_keys(on: bool) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                for column, table in references.REFERENCES:
                    if on:
                        conn.execute(f"ALTER TABLE observations ADD CONSTRAINT observations_{column}_fkey "
                                     f"FOREIGN KEY ({column}) REFERENCES {table}(id) ON DELETE CASCADE")
                        conn.execute("ALTER TABLE observations DISABLE TRIGGER sta_references_insert")
                    else:
                        conn.execute(f"ALTER TABLE observations DROP CONSTRAINT observations_{column}_fkey")
                if not on:
                    conn.execute("ALTER TABLE observations ENABLE TRIGGER sta_references_insert")

        for size in (1_000, 10, 1):  # a CreateObservations request; a few single POSTs committed together; one
            times: dict[str, list[float]] = {"foreign keys": [], "statement triggers": []}
            for r in range(args.rounds):
                for way in times:
                    if way == "foreign keys":
                        foreign_keys(True)
                    batch = rows(size, args.observations + r * size)
                    with store.engine.connect() as conn:
                        tx = conn.begin()
                        started = time.perf_counter()
                        store.bulk_insert(conn, batch)
                        times[way].append(time.perf_counter() - started)
                        tx.rollback()
                    if way == "foreign keys":
                        foreign_keys(False)
            for way, spent in times.items():
                q = statistics.quantiles(spent, n=4)
                say(f"{size:5,} rows, {way:20s} median {statistics.median(spent) * 1000:6.2f} ms "
                    f"(quartiles {q[0] * 1000:.2f}-{q[2] * 1000:.2f})")
            ratio = statistics.median(times["statement triggers"]) / statistics.median(times["foreign keys"])
            say(f"{size:5,} rows, statement triggers / foreign keys: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
