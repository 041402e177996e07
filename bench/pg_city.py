"""A throw-away PostgreSQL store with the benches' city in it: 100 Things of 3 Datastreams each, written through the
service, for the in-process benches of the store's writes (bench/pg_references.py, bench/pg_copy.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from sensorthings.service import Service
from sensorthings.store.base import Store

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
UNIT = {"name": "degree Celsius", "symbol": "degC", "definition": "http://unitsofmeasure.org/ucum.html#para-30"}


def stream(n: int) -> dict[str, object]:
    """A Datastream of measurements, with its Sensor and ObservedProperty."""
    return {"name": f"s{n}", "description": "d", "observationType": OM, "unitOfMeasurement": UNIT,
            "Sensor": {"name": f"sensor {n}", "description": "d", "encodingType": "text/html", "metadata": "m"},
            "ObservedProperty": {"name": "temperature", "definition": "t", "description": "d"}}


@contextmanager
def pg_city(admin: str, prefix: str) -> Iterator[tuple[str, Store, Service, list[int]]]:
    """A new database next to `admin`'s with the city in it: its URL, the store, a service and the Datastreams'
    ids, while the context lasts; the database is dropped after."""
    name = f"{prefix}_{int(time.time())}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rpartition('/')[0]}/{name}"
    store = Store.open(url)
    try:
        service = Service(store)
        for t in range(100):
            service.call("POST", "Things", {
                "name": f"t{t}", "description": "d", "Datastreams": [stream(3 * t + k) for k in range(3)],
                "Locations": [{"name": f"l{t}", "description": "d", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [10 + t / 100, 53]}}]})
        streams = [d["@iot.id"] for d in service.call("GET", "Datastreams", **{"$top": "1000"})["value"]]
        yield url, store, service, streams
    finally:
        store.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
