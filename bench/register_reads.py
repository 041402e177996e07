"""Reads over a city-size register of Things, each against a baseline in the same run: hiding the internal Things
(sensorthings/access.py) against the read role's reads, which carry no condition, and against the same reads with the
partial index of internal Things dropped; a Thing found by name with its index and with it dropped; the Things in an
area against the Locations in the same area (the spatial index's own answer), the Locations near a point against
them too, the 10 nearest a point against the first 10, and the area's Datastreams (through the Things) against a
plain page of Datastreams.

    python bench/register_reads.py [--things 50000] [--stores sqlite,pg] [--pg postgresql://…/postgres]

Each store gets 100 stations (a Location and 3 Datastreams of 24 Observations each) through the API, then --things
Things of a register, each at a Location of its own spread over Seoul with a Datastream (one in a thousand internal),
inserted in bulk as a department's register brought in. Each read is answered --requests times in-process by a
service without a response cache (every answer computed). Prints the median ms a request and the ratio to its
baseline. It asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import create_pg, say
from shapely.geometry import Point
from sqlalchemy import func, insert, select

from sensorthings.access import INDEX
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from sensorthings.store.schema import TABLES

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
EXPANDED = {"$expand": "Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"}
# about 1 % of the register's spread: 126.8-127.2 E, 37.4-37.7 N
AREA = "geography'POLYGON((126.95 37.55, 126.99 37.55, 126.99 37.58, 126.95 37.58, 126.95 37.55))'"


def station(i: int) -> dict[str, Any]:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    return {
        "name": f"station {i}", "description": "an air-quality station",
        "Locations": [{"name": f"station {i}", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [127.0 + i / 1000, 37.5]}}],
        "Datastreams": [{
            "name": f"{p} {i}", "description": "d", "observationType": OM,
            "unitOfMeasurement": {"name": "microgram per cubic metre", "symbol": "ug/m3", "definition": "ucum"},
            "Sensor": {"name": f"sensor {i}", "description": "d", "encodingType": "text/html", "metadata": "m"},
            "ObservedProperty": {"name": p, "definition": p, "description": p},
            "Observations": [{"phenomenonTime": (t0 + timedelta(hours=h)).isoformat(), "result": h}
                             for h in range(24)]} for p in ("PM10", "PM2.5", "NO2")]}


def load(store: Store, things: int) -> None:
    """The stations through the API; the register in bulk, each Thing at a Location of its own."""
    service = Service(store)
    for i in range(100):
        service.call("POST", "Things", station(i))
    rnd = random.Random(7)
    with store.write() as (conn, _changes):
        first_thing = conn.execute(select(func.max(TABLES["things"].c.id))).scalar_one() + 1
        first_location = conn.execute(select(func.max(TABLES["locations"].c.id))).scalar_one() + 1
        for start in range(0, things, 5000):
            ids = range(start, min(start + 5000, things))
            points = [(126.8 + rnd.random() * 0.4, 37.4 + rnd.random() * 0.3) for _ in ids]
            conn.execute(insert(TABLES["things"]), [
                {"id": first_thing + i, "name": f"school {i}", "description": "a school of the register",
                 "properties": {"udpAccess": "internal"} if i % 1000 == 0 else {"kind": "school"}} for i in ids])
            conn.execute(insert(TABLES["locations"]), [
                {"id": first_location + i, "name": f"school {i}", "description": "d",
                 "encoding_type": "application/geo+json", "location": {"type": "Point", "coordinates": list(p)},
                 "geom": Point(p).wkb} for i, p in zip(ids, points, strict=True)])
            conn.execute(insert(TABLES["thing_locations"]), [
                {"thing_id": first_thing + i, "location_id": first_location + i} for i in ids])
            conn.execute(insert(TABLES["datastreams"]), [
                {"name": f"pupils {i}", "description": "d", "observation_type": OM, "thing_id": first_thing + i,
                 "sensor_id": 1, "observed_property_id": 1,
                 "unit_of_measurement": {"name": "count", "symbol": "{pupil}", "definition": "ucum"}} for i in ids])
    if store.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def median_ms(service: Service, path: str, params: dict[str, str], sees_internal: bool, requests: int) -> float:
    req = ApiRequest("GET", path, params, sees_internal=sees_internal, base="http://bench/v1.1")
    res = service.handle(req)
    assert res.status == 200, res.content()[:300]
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        service.handle(req)
        took.append(time.perf_counter() - began)
    return statistics.median(took) * 1000


def drop(store: Store, index: str) -> Callable[[], None]:
    def run() -> None:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX {index}")
    return run


def bench(url: str, things: int, requests: int) -> None:
    store = Store.open(url)
    try:
        began = time.perf_counter()
        load(store, things)
        say(f"  loaded {things + 100:,} Things in {time.perf_counter() - began:.1f}s")
        service = Service(store)

        def ms(path: str, params: dict[str, str], role: bool = False, n: int = requests) -> float:
            return median_ms(service, path, params, role, n)

        name = {"$filter": f"name eq 'school {things // 2 + 1}'"}
        few = max(3, requests // 10)
        rows = [
            ("Things?$top=100", ms("Things", {"$top": "100"}), ms("Things", {"$top": "100"}, True), "read role"),
            ("the expanded Things", ms("Things", EXPANDED), ms("Things", EXPANDED, True), "read role"),
            ("the Things in an area (~1 %)", ms("Things", {"$filter": f"st_within(Locations/location, {AREA})"}),
             ms("Locations", {"$filter": f"st_within(location, {AREA})"}), "its Locations"),
        ]
        near = "geo.distance(location, geography'POINT(126.97 37.565)') lt 0.005"
        rows.append(("the Locations near a point (`geo.distance … lt`)", ms("Locations", {"$filter": near}),
                     ms("Locations", {"$filter": f"st_within(location, {AREA})"}), "an area's"))
        rows.append(("the 10 Locations nearest a point", ms("Locations", {
            "$orderby": "geo.distance(location, geography'POINT(126.97 37.565)')", "$top": "10"}),
                     ms("Locations", {"$top": "10"}), "the first 10"))
        rows.append(("the Datastreams in that area (through their Things)",
                     ms("Datastreams", {"$filter": f"st_within(Thing/Locations/location, {AREA})"}, n=few),
                     ms("Datastreams", {"$top": "100"}), "a page of them"))
        found = ms("Things", name)
        drop(store, "things_name")()
        rows.append(("a Thing by name", found, ms("Things", name, n=few), "no name index"))
        drop(store, INDEX)()
        rows.append(("Things?$top=100, no index of internal Things", ms("Things", {"$top": "100"}, n=few), rows[0][2],
                     "read role"))
        rows.append(("the expanded Things, no index of internal Things", ms("Things", EXPANDED, n=few), rows[1][2],
                     "read role"))
        say(f"  {'read (without the read role)':<52} {'ms':>8}  {'baseline':>8}  {'ratio':>6}  baseline")
        for label, a, b, what in rows:
            say(f"  {label:<52} {a:>8.2f}  {b:>8.2f}  {a / b:>5.2f}x  {what}")
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--things", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=50, help="requests a read")
    ap.add_argument("--stores", default="sqlite,pg")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    for kind in args.stores.split(","):
        say(f"{kind}: {args.things:,} Things besides 100 stations, in-process without a cache (median)")
        if kind == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="udp_bench_"))
            try:
                bench(f"sqlite:///{folder / 'udp.db'}", args.things, args.requests)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            db = create_pg(args.pg, "udp_bench_register")
            try:
                bench(db.url, args.things, args.requests)
            finally:
                db.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
