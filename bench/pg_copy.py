"""PostgreSQL: CreateObservations requests in-process, alternating between the store's binary COPY and the text COPY
it used before (sensorthings/store/postgres.py), in one process on one database.

    python bench/pg_copy.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--observations 300000]

A fresh database next to --pg gets 100 Things of 3 Datastreams; then the bench's CreateObservations bodies of 1,000
rows (bench/sta_http.py's, one to three Datastreams each) go through `Service.handle` one after another, every other
one written by the text COPY (JSON made text here, values formatted by the driver as text). It prints the median
wall time and process CPU per request of each way, the first 20 requests left out. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import sta_http
from harness import say
from pg_city import pg_city
from sqlalchemy import Connection

from sensorthings.service import ApiRequest
from sensorthings.store import postgres
from sensorthings.store.driver import driver
from sensorthings.store.observations import BOUND_COLUMNS, OBSERVATION_COLUMNS, driver_value

TEXT_COPY = "COPY observations (" + ", ".join(BOUND_COLUMNS) + ") FROM STDIN"


def text_bind(values: dict[str, Any]) -> list[Any]:
    """The rows as the text COPY took them: JSON columns as text."""
    return [None, *(driver_value(c, values[c]) for c in OBSERVATION_COLUMNS)]


def text_insert(conn: Connection, rows: list[list[Any]]) -> list[int]:
    """The text COPY, as the store wrote Observations in bulk before."""
    ids = conn.exec_driver_sql(
        "SELECT array_agg(nextval((SELECT pg_get_serial_sequence('observations', 'id')::regclass))) "
        "FROM generate_series(1, %s)", (len(rows),)).scalar_one()
    with driver(conn, TEXT_COPY) as db, db.cursor() as cursor, cursor.copy(TEXT_COPY) as copy:
        for id_, row in zip(ids, rows, strict=True):
            row[0] = id_
            copy.write_row(row)
    return list(ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--observations", type=int, default=300_000)
    args = ap.parse_args()
    with pg_city(args.pg, "udp_bench_copy") as (_url, store, service, streams):
        bodies = sta_http.dataarray_bodies(streams, args.observations)
        ways = {"binary COPY": (postgres.bind_observation, postgres.insert_observations),
                "text COPY": (text_bind, text_insert)}
        spent: dict[str, tuple[list[float], list[float]]] = {way: ([], []) for way in ways}
        for k, body in enumerate(bodies):
            way = list(ways)[k % 2]
            store.bind_observation, store.bulk_insert = ways[way]
            started, cpu = time.perf_counter(), time.process_time()
            res = service.handle(ApiRequest("POST", "CreateObservations", {}, body, "http://bench/v1.1"))
            if res.status != 201:
                raise SystemExit(f"CreateObservations answered {res.status}")
            if k >= 20:
                spent[way][0].append(time.perf_counter() - started)
                spent[way][1].append(time.process_time() - cpu)
        say(f"{len(bodies)} CreateObservations requests of up to 1,000 rows, alternating")
        for way, (wall, cpus) in spent.items():
            say(f"{way:12s} median per request: wall {statistics.median(wall) * 1000:6.2f} ms, "
                f"process CPU {statistics.median(cpus) * 1000:6.2f} ms")
        ratio = statistics.median(spent["binary COPY"][0]) / statistics.median(spent["text COPY"][0])
        say(f"binary / text, wall: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
