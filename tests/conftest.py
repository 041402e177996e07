"""Shared fixtures: the platform on each store, as a real `udp serve` process or in-process (tests/harness.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings

from tests.harness import (  # noqa: F401  (re-exported: the tests import these from here)
    PG_URL,
    ROOT,
    Server,
    create_pg,
    free_port,
    pg_database,
    start_in_process,
    start_server,
    stop_server,
    wait_until,
)

# the real open data the tests use, in the repository: the demo city's files and a few more in tests/data
DEMO_DATA = ROOT / "udp" / "demo" / "data"
TEST_DATA = ROOT / "tests" / "data"


# CI (`.ci/run` sets UDP_CI) draws the same examples on every run, so that a submission fails for what it changed;
# elsewhere every run explores new inputs, which is how the fuzz tests keep finding what to fix
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("UDP_CI"):
    settings.load_profile("ci")

_pg_database = pg_database  # the name the tests know: a fresh PostgreSQL database while the generator lives


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    """A fresh PostgreSQL database for a module's tests (a department's, beside the platform's store)."""
    pg = _pg_database()
    try:
        yield next(pg)
    finally:
        pg.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store of each kind for one test: a SQLite file, a PostgreSQL database (skipped without UDP_TEST_PG)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'udp.db'}"
        return
    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    yield from _pg_database()


def _on_store(kind: str, tmp_path_factory: pytest.TempPathFactory,
              start: Callable[[str, str], Server]) -> Iterator[Server]:
    """A platform made by `start(store URL, kind)` on a fresh store of `kind` while the generator lives;
    PostgreSQL skips without UDP_TEST_PG."""
    if kind == "sqlite":
        db = tmp_path_factory.mktemp("sqlite") / "udp.db"
        srv = start(f"sqlite:///{db}", "sqlite")
        try:
            yield srv
        finally:
            stop_server(srv)
        return
    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    db = create_pg(PG_URL)
    try:
        srv = start(db.url, "postgresql")
        try:
            yield srv
        finally:
            stop_server(srv)
    finally:
        db.drop()


def serve_on(kind: str, tmp_path_factory: pytest.TempPathFactory, extra: list[str] | None = None) -> Iterator[Server]:
    """`udp serve` on a fresh store of `kind` while the generator lives; PostgreSQL skips without UDP_TEST_PG."""
    yield from _on_store(kind, tmp_path_factory, lambda store, k: start_server(store, k, extra))


def in_process_on(kind: str, tmp_path_factory: pytest.TempPathFactory, config: Path | None = None) -> Iterator[Server]:
    """The platform in-process (HTTP only) on a fresh store of `kind` while the generator lives."""
    yield from _on_store(kind, tmp_path_factory, lambda store, k: start_in_process(store, k, config))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform on each store: SQLite always, PostgreSQL/PostGIS when UDP_TEST_PG is set."""
    yield from serve_on(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform in-process on each store, for modules that only speak HTTP (module-scoped: one at a time)."""
    yield from in_process_on(request.param, tmp_path_factory)


@pytest.fixture
def sta(server: Server) -> httpx.Client:
    """An HTTP client whose base URL is the SensorThings service root."""
    return server.http("/v1.1/")


def query_plan(store: Any, sql: str, params: Any = None) -> str:
    """The store's plan for a statement, as text (PostgreSQL told to avoid a scan where it can: on a handful of rows a
    scan is its cheaper plan, and the question a test asks is whether an index can serve)."""
    with store.engine.connect() as conn:
        if store.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
        return "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))


def unique(prefix: str = "t") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def serve_config_file(tmp: Path) -> Iterator[Server]:
    """`udp serve` of the config.yml in `tmp` on a fresh SQLite store there, while the generator lives."""
    server = start_server(f"sqlite:///{tmp / 'udp.db'}", "sqlite", ["--config", str(tmp / "config.yml")])
    try:
        yield server
    finally:
        stop_server(server)


def serve_config(tmp: Path, doc: dict[str, Any]) -> Server:
    """`udp serve` of the config.yml `doc` written into `tmp`, on a fresh SQLite store there."""
    import yaml

    (tmp / "config.yml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return start_server(f"sqlite:///{tmp / 'udp.db'}", "sqlite", ["--config", str(tmp / "config.yml")])


def add_station(client: Any, thing: str, stream: str, lon: float, lat: float) -> int:
    """A Thing at a place with one temperature Datastream, posted through the SensorThings API; the
    Datastream's id."""
    body = {"name": thing, "description": "d",
            "Locations": [{"name": "l", "description": "l", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [lon, lat]}}],
            "Datastreams": [{"name": stream, "description": "t",
                             "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                             "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "x"},
                             "ObservedProperty": {"name": "temperature", "definition": "x", "description": "x"},
                             "Sensor": {"name": "s", "description": "s", "encodingType": "text/plain",
                                        "metadata": "m"}}]}
    assert client.post("/v1.1/Things", json=body).status_code == 201
    found = client.get("/v1.1/Datastreams", params={"$filter": f"name eq '{stream}'"}).json()["value"]
    return found[0]["@iot.id"]
