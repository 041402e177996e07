"""SensorThings at 100 million Observations on PostgreSQL: the reads a dashboard makes and the ingest, on a full
table beside the same on an empty one, in one run.

    python bench/observations_100m.py [--rows 100000000] [--datastreams 1000] [--keep] [--pg postgresql://…]

It makes (or, with --keep, reuses) the database `udp_bench_100m` on --pg: the platform's schema, --datastreams
Datastreams (one Thing each), and --rows Observations spread evenly over them, one a minute per Datastream back
from now (1,000 Datastreams × 100,000 minutes ≈ 69 days). The rows are generated in the database
(`INSERT … SELECT generate_series`, in chunks, with the secondary indexes and the change-version triggers off and
made again afterwards: how a city would bulk-load an archive), then ANALYZEd. A second, empty database
`udp_bench_100m_empty` gets the same Datastreams.

Then against `udp serve --workers 2` on each database (the response cache off, so that every request is
computed), with --requests requests each, each for another Datastream:
- a Datastream's newest 100 Observations (`Datastreams(n)/Observations?$top=100&$orderby=phenomenonTime desc`);
- a day's chart (`…/Observations?$filter=phenomenonTime ge … and phenomenonTime lt …&$top=1440&$select=result,
  phenomenonTime&$orderby=phenomenonTime asc`);
- the STA bench's nested `$expand` (`Things?$expand=Locations,Datastreams($expand=Observations($top=1;
  $orderby=phenomenonTime desc))`, 100 Things a page);
- ingest: --ingest-seconds of single `POST /v1.1/Observations` from --ingest-clients threads.
It prints p50 and p95 in ms and the ingest rate, full beside empty. It asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from harness import Udp, say

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sqlalchemy.dialects import postgresql  # noqa: E402
from sqlalchemy.schema import CreateIndex  # noqa: E402

from sensorthings.store.schema import TABLES  # noqa: E402

CHUNK = 5_000_000  # rows per INSERT … SELECT
SECONDARY = ("observations_datastream_time", "observations_multi_datastream_time", "observations_foi",
             "observations_time")


def database(admin: str, name: str, fresh: bool) -> str:
    """The database `name` next to --pg's (made new when `fresh` or missing); its URL."""
    with psycopg.connect(admin, autocommit=True) as conn:
        there = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if there and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            there = None
        if not there:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin.rpartition('/')[0]}/{name}"


def datastreams(url: str, n: int) -> list[int]:
    """The platform's schema and n Things with a Location and one Datastream each (made once); their ids."""
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(url)
    try:
        service = Service(store)
        have = service.call("GET", "Datastreams", **{"$count": "true", "$top": "0"})["@iot.count"]
        for k in range(have, n):
            service.call("POST", "Things", {
                "name": f"station {k}", "description": "bench",
                "Locations": [{"name": f"l{k}", "description": "d", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [126.9 + k % 100 / 1000,
                                                                             37.5 + k // 100 / 1000]}}],
                "Datastreams": [{"name": f"pm10 {k}", "description": "d", "observationType":
                                 "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                                 "unitOfMeasurement": {"name": "ug/m3", "symbol": "ug/m3", "definition": "u"},
                                 "Sensor": {"name": "s", "description": "d", "encodingType": "text/plain",
                                            "metadata": "m"},
                                 "ObservedProperty": {"name": "PM10", "definition": "pm10", "description": "d"}}]})
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM datastreams ORDER BY id").fetchall()]


def fill(url: str, streams: list[int], rows: int, end: datetime) -> None:
    """`rows` Observations, one a minute per Datastream up to `end`, unless they are there already."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'observations'").fetchone()[0]
        if have >= rows * 0.99:
            say(f"  {have:,} Observations there already (planner's count)")
            return
        conn.execute("TRUNCATE observations")
        conn.execute("ALTER TABLE observations DISABLE TRIGGER USER")  # the change versions: raised once below
        for name in SECONDARY:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute("SET maintenance_work_mem = '2GB'")
        per = rows // len(streams)
        lo, hi = min(streams), max(streams)
        # one FeatureOfInterest for all: the reads measured here do not go through it
        foi = conn.execute("INSERT INTO features_of_interest (name, description, encoding_type, feature) "
                           "VALUES ('bench', 'd', 'application/geo+json', "
                           "'{\"type\": \"Point\", \"coordinates\": [126.9, 37.5]}') RETURNING id").fetchone()[0]
        t0 = time.perf_counter()
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            # row g: Datastream lo + g % count, minute g / count back from the end
            conn.execute(
                "INSERT INTO observations (phenomenon_time_start, result_time, result_type, result_number, "
                "datastream_id, feature_of_interest_id) "
                "SELECT %s::timestamptz - make_interval(mins => (g / %s)::int), "
                "%s::timestamptz - make_interval(mins => (g / %s)::int), 2, (g %% 997) / 10.0, "
                "%s + g %% %s, %s FROM generate_series(%s::bigint, %s::bigint) g",
                (end, len(streams), end, len(streams), lo, hi - lo + 1, foi, done, done + n - 1))
            done += n
            rate = done / (time.perf_counter() - t0)
            say(f"  {done:,} of {rows:,} rows ({rate:,.0f} rows/s; {per:,} per Datastream)")
        say(f"  rows in {time.perf_counter() - t0:.0f}s; indexes ...")
        t1 = time.perf_counter()
        for index in TABLES["observations"].indexes:  # as the platform's schema makes them
            if index.name in SECONDARY:
                conn.execute(str(CreateIndex(index).compile(dialect=postgresql.dialect())))
        conn.execute("ALTER TABLE observations ENABLE TRIGGER USER")
        conn.execute("UPDATE datastreams SET phenomenon_time_start = %s, phenomenon_time_end = %s",
                     (end - timedelta(minutes=per), end))  # the widening the triggers would have done
        # VACUUM marks the pages all-visible, as autovacuum does after inserts: index-only scans need it
        conn.execute("VACUUM ANALYZE observations")
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('observations'))").fetchone()[0]
        say(f"  indexes and ANALYZE in {time.perf_counter() - t1:.0f}s; observations with indexes: {size}")


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    """ms of each GET (each must be 200)."""
    out = []
    for path in paths:
        t = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
    return out


def ingest(base: str, streams: list[int], seconds: float, clients: int) -> float:
    """Single POSTed Observations stored per second."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def post(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.perf_counter() < stop:
                ds = streams[(k * 7919 + counts[k]) % len(streams)]
                r = c.post("Observations", json={"result": 1.5, "Datastream": {"@iot.id": ds}})
                if r.status_code == 201:
                    counts[k] += 1

    threads = [threading.Thread(target=post, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts) / (time.perf_counter() - t)


def measure(name: str, url: str, streams: list[int], end: datetime, args: argparse.Namespace,
            work: Path) -> dict[str, str]:
    config = work / f"{name}.yml"
    config.write_text("title: 100M bench\nserver: {response_cache_mb: 0}\n")
    udp = Udp("serve", "--config", str(config), "--store", url, "--workers", "2", "--no-seed", "--log-level",
              "warning", log=work / f"{name}.log")
    try:
        udp.wait(600)
        rnd = random.Random(7)
        picks = [rnd.choice(streams) for _ in range(args.requests)]
        newest = [f"/Datastreams({d})/Observations?$top=100&$orderby=phenomenonTime desc" for d in picks]
        days = [(end - timedelta(days=rnd.randint(1, 60))).replace(hour=0, minute=0, second=0, microsecond=0)
                for _ in picks]
        z = "%Y-%m-%dT%H:%M:%SZ"
        chart = [f"/Datastreams({d})/Observations?$filter=phenomenonTime ge {day.strftime(z)} and phenomenonTime "
                 f"lt {(day + timedelta(days=1)).strftime(z)}&$top=1440&$select=result,phenomenonTime"
                 f"&$orderby=phenomenonTime asc" for d, day in zip(picks, days, strict=True)]
        pages = max(1, len(streams) // 100)
        expand = [f"/Things?$top=100&$skip={100 * (k % pages)}&$expand=Locations,Datastreams($expand=Observations("
                  f"$top=1;$orderby=phenomenonTime desc))" for k in range(max(10, args.requests // 10))]
        out: dict[str, str] = {}
        with httpx.Client(base_url=f"{udp.url}/v1.1", timeout=120) as client:
            timed(client, newest[:5] + chart[:5] + expand[:2])  # connections and first statements
            for key, paths in (("newest 100", newest), ("a day's chart", chart), ("nested $expand", expand)):
                ms = timed(client, paths)
                ms.sort()
                out[key] = f"{statistics.median(ms):.1f} / {ms[int(len(ms) * 0.95) - 1]:.1f}"
                say(f"  {name}: {key}: p50 {statistics.median(ms):.1f} ms, p95 {ms[int(len(ms) * 0.95) - 1]:.1f} ms")
        rate = ingest(f"{udp.url}/v1.1/", streams, args.ingest_seconds, args.ingest_clients)
        out["ingest"] = f"{rate:,.0f} obs/s"
        say(f"  {name}: ingest {rate:,.0f} single POSTs stored/s ({args.ingest_clients} clients)")
        return out
    finally:
        udp.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--datastreams", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--ingest-seconds", type=float, default=10)
    ap.add_argument("--ingest-clients", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the full database")
    ap.add_argument("--work", default="/tmp/udp-bench-100m")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    full = database(args.pg, "udp_bench_100m", fresh=False)
    say(f"full: {full}")
    streams = datastreams(full, args.datastreams)
    fill(full, streams, args.rows, end)
    with psycopg.connect(full) as conn:
        end = conn.execute("SELECT max(phenomenon_time_start) FROM observations").fetchone()[0] or end
    empty = database(args.pg, "udp_bench_100m_empty", fresh=True)
    empty_streams = datastreams(empty, args.datastreams)
    rows = {"full": measure("full", full, streams, end, args, work),
            "empty": measure("empty", empty, empty_streams, end, args, work)}
    say(f"\n== {args.rows:,} Observations over {len(streams):,} Datastreams, PostgreSQL, udp serve --workers 2, "
        f"no response cache; p50 / p95 ms of {args.requests} requests ==")
    say(f"{'measure':<16}{'full':>24}{'empty':>24}")
    for key in rows["full"]:
        say(f"{key:<16}{rows['full'][key]:>24}{rows['empty'][key]:>24}")
    if not args.keep:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "udp_bench_100m" WITH (FORCE)')
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "udp_bench_100m_empty" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
