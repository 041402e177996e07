"""The internal Things are found through a partial index (sensorthings.access): a read without the read role never
scans every Thing, on either store; a database made before it, or before the indexes of names
(sensorthings.store.schema.NAME_INDEXES), gets them when the platform next opens it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sensorthings.access import INDEX, internal_things, visible
from sensorthings.model import DATASTREAM, OBSERVATION, THING
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from sensorthings.store.schema import NAME_INDEXES, TABLES
from tests.conftest import query_plan

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"


def _thing(name: str, internal: bool) -> dict[str, Any]:
    properties = {"udpAccess": "internal"} if internal else {"kind": "school"}
    return {"name": name, "description": "d", "properties": properties,
            "Locations": [{"name": f"at {name}", "description": "d", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [127.03, 37.5]}}],
            "Datastreams": [{
                "name": f"count {name}", "description": "d", "observationType": OM,
                "unitOfMeasurement": {"name": "count", "symbol": "{count}", "definition": "ucum"},
                "Sensor": {"name": f"sensor {name}", "description": "d", "encodingType": "text/html", "metadata": "m"},
                "ObservedProperty": {"name": "count", "definition": "c", "description": "d"},
                "Observations": [{"phenomenonTime": "2026-12-01T00:00:00Z", "result": 1}]}]}


def _plan(store: Store, statement: Any) -> str:
    """The store's query plan for a statement built here, its constants written in."""
    compiled = statement.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    return query_plan(store, str(compiled))


def _names(service: Service, path: str, sees_internal: bool) -> set[str]:
    res = service.handle(ApiRequest("GET", path, sees_internal=sees_internal, base="http://test/v1.1"))
    assert res.status == 200, res.content()
    return {e["name"] for e in res.body["value"]}


def test_reads_without_the_read_role_find_internal_things_by_the_index(store_url: str) -> None:
    store = Store.open(store_url)
    try:
        service = Service(store)
        for i in range(30):
            service.call("POST", "Things", _thing(f"public {i}", internal=False))
        service.call("POST", "Things", _thing("secret", internal=True))
        with store.engine.connect() as conn:
            ids = {r[0] for r in conn.execute(internal_things(store.dialect))}
        assert len(ids) == 1
        plan = _plan(store, internal_things(store.dialect))
        assert INDEX in plan and "SCAN things\n" not in plan + "\n" and "Seq Scan" not in plan, plan
        for entity in (THING, DATASTREAM, OBSERVATION):  # the conditions every read without the role carries
            table = TABLES[entity.table]
            plan = _plan(store, select(table.c.id).where(visible(entity, table, store.dialect)))
            assert INDEX in plan, f"{entity.name}: {plan}"
        # what it decides is unchanged: hidden without the role, shown with it
        assert "secret" not in _names(service, "Things", sees_internal=False)
        assert "secret" in _names(service, "Things", sees_internal=True)
        assert "count secret" not in _names(service, "Datastreams", sees_internal=False)
        assert len(_names(service, "Datastreams", sees_internal=True)) == 31
    finally:
        store.close()


def test_a_database_made_before_the_indexes_gets_them_when_opened(store_url: str) -> None:
    Store.open(store_url).close()
    store = Store.open(store_url)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX {INDEX}")
            for index in NAME_INDEXES:
                conn.exec_driver_sql(f"DROP INDEX {index.name}")
    finally:
        store.close()
    store = Store.open(store_url)
    try:
        plan = _plan(store, internal_things(store.dialect))
        assert INDEX in plan, plan
        for index in NAME_INDEXES:
            table = TABLES[index.table.name]  # type: ignore[union-attr]
            plan = _plan(store, select(table.c.id).where(table.c.name == "a name"))
            assert index.name in plan, plan
    finally:
        store.close()
