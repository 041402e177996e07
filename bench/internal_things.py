"""Reads without the read role over a city-size register of Things: what hiding the internal Things costs a request
(sensorthings/access.py), with the partial index of internal Things and without it, against the read role's
requests (no condition at all) in the same run.

    python bench/internal_things.py [--things 50000] [--stores sqlite,pg] [--pg postgresql://…/postgres]

Each store gets 100 Things with a Location and 3 Datastreams of 24 Observations each through the API, then
--things more Things (one in a thousand internal) inserted in bulk, as a department's register brought in. Each read
is answered --requests times in-process by a service without a response cache (every answer computed): as the read
role, without it (the index there), then without it again after the index is dropped (what every release before it
did). Prints the median ms a request and each one's ratio to the read role's. It asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import create_pg, say
from sqlalchemy import insert

from sensorthings.access import INDEX
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from sensorthings.store.schema import TABLES

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
READS = [
    ("Things?$top=100", "Things", {"$top": "100"}),
    ("a Datastream's newest 200", "Datastreams(1)/Observations", {"$top": "200", "$orderby": "phenomenonTime desc"}),
    ("Observations newest 100", "Observations", {"$top": "100", "$orderby": "phenomenonTime desc"}),
    ("Things+Locations+Datastreams+newest Observation", "Things",
     {"$expand": "Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"}),
]


def thing(i: int) -> dict[str, Any]:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    return {
        "name": f"station {i}", "description": "an air-quality station",
        "Locations": [{"name": f"at {i}", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [127.0 + i / 1000, 37.5]}}],
        "Datastreams": [{
            "name": f"{p} {i}", "description": "d", "observationType": OM,
            "unitOfMeasurement": {"name": "microgram per cubic metre", "symbol": "ug/m3", "definition": "ucum"},
            "Sensor": {"name": f"sensor {i}", "description": "d", "encodingType": "text/html", "metadata": "m"},
            "ObservedProperty": {"name": p, "definition": p, "description": p},
            "Observations": [{"phenomenonTime": (t0 + timedelta(hours=h)).isoformat(), "result": h}
                             for h in range(24)]} for p in ("PM10", "PM2.5", "NO2")]}


def load(store: Store, things: int) -> None:
    service = Service(store)
    for i in range(100):
        service.call("POST", "Things", thing(i))
    rows = [{"name": f"school {i}", "description": "a school of the register",
             "properties": {"udpAccess": "internal"} if i % 1000 == 0 else {"kind": "school", "pupils": i % 900}}
            for i in range(things)]
    with store.write() as (conn, _changes):
        for start in range(0, len(rows), 5000):
            conn.execute(insert(TABLES["things"]), rows[start:start + 5000])
    if store.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def time_reads(service: Service, sees_internal: bool, requests: int) -> list[float]:
    out = []
    for _name, path, params in READS:
        req = ApiRequest("GET", path, params, sees_internal=sees_internal, base="http://bench/v1.1")
        assert service.handle(req).status == 200
        took = []
        for _ in range(requests):
            began = time.perf_counter()
            service.handle(req)
            took.append(time.perf_counter() - began)
        out.append(statistics.median(took) * 1000)
    return out


def bench(url: str, things: int, requests: int) -> None:
    store = Store.open(url)
    try:
        began = time.perf_counter()
        load(store, things)
        say(f"  loaded {things + 100:,} Things in {time.perf_counter() - began:.1f}s")
        service = Service(store)
        role = time_reads(service, True, requests)
        indexed = time_reads(service, False, requests)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX {INDEX}")
        scanned = time_reads(service, False, max(3, requests // 10))
        say(f"  {'read':<50} {'read role':>10} {'without, index':>16} {'without, no index':>19}")
        for (name, _p, _q), a, b, c in zip(READS, role, indexed, scanned, strict=True):
            say(f"  {name:<50} {a:>8.2f}ms {b:>8.2f}ms {b / a:>5.2f}x {c:>10.2f}ms {c / a:>6.1f}x")
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--things", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=50, help="requests a read, each way")
    ap.add_argument("--stores", default="sqlite,pg")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    for kind in args.stores.split(","):
        say(f"{kind}: {args.things:,} Things besides 100 stations, reads answered in-process without a cache (median)")
        if kind == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="udp_bench_"))
            try:
                bench(f"sqlite:///{folder / 'udp.db'}", args.things, args.requests)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            db = create_pg(args.pg, "udp_bench_internal")
            try:
                bench(db.url, args.things, args.requests)
            finally:
                db.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
