"""Shared fixtures: the platform started as a real server process on a free port, for each store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# the real open data the tests use, in the repository: the demo city's files and a few more in tests/data
DEMO_DATA = ROOT / "udp" / "demo" / "data"
TEST_DATA = ROOT / "tests" / "data"
PG_URL = os.environ.get("UDP_TEST_PG")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running platform: its base URL and an HTTP client for it."""

    url: str
    store: str
    kind: str
    client: httpx.Client
    process: subprocess.Popen
    mqtt_port: int | None = None  # the embedded broker, when the server runs one
    ws_port: int | None = None

    @property
    def sta(self) -> str:
        """The SensorThings service root."""
        return f"{self.url}/v1.1"


def _pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test session, dropped afterwards."""
    import psycopg

    name = f"udp_test_{uuid.uuid4().hex[:10]}"
    admin = PG_URL
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(store: str, kind: str, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Server:
    """Start `udp serve` on a free port and wait until it answers."""
    port = free_port()
    extra = list(extra or [])
    if "--mqtt" not in extra:
        # the embedded broker on free ports: 1883 belongs to the machine's Mosquitto
        extra += ["--mqtt-port", str(free_port()), "--mqtt-ws-port", str(free_port())]
    cmd = [sys.executable, "-m", "udp.cli", "serve", "--store", store, "--port", str(port), *extra]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"udp-test-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)
    mqtt_port = int(extra[extra.index("--mqtt-port") + 1]) if "--mqtt-port" in extra else None
    ws_port = int(extra[extra.index("--mqtt-ws-port") + 1]) if "--mqtt-ws-port" in extra else None
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {Path(log.name).read_text()}")
        try:
            if client.get("/health").status_code == 200:
                return Server(url, store, kind, client, proc, mqtt_port, ws_port)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {Path(log.name).read_text()}")


def stop_server(server: Server) -> None:
    """Stop a server started by start_server."""
    server.client.close()
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


def serve_on(kind: str, tmp_path_factory: pytest.TempPathFactory, extra: list[str] | None = None) -> Iterator[Server]:
    """A platform on a fresh store of `kind` while the generator lives; PostgreSQL skips without UDP_TEST_PG."""
    if kind == "sqlite":
        db = tmp_path_factory.mktemp("sqlite") / "udp.db"
        srv = start_server(f"sqlite:///{db}", "sqlite", extra)
        try:
            yield srv
        finally:
            stop_server(srv)
        return
    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    gen = _pg_database()
    url = next(gen)
    try:
        srv = start_server(url, "postgresql", extra)
        try:
            yield srv
        finally:
            stop_server(srv)
    finally:
        gen.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform on each store: SQLite always, PostgreSQL/PostGIS when UDP_TEST_PG is set."""
    yield from serve_on(request.param, tmp_path_factory)


@pytest.fixture
def sta(server: Server) -> httpx.Client:
    """An HTTP client whose base URL is the SensorThings service root."""
    return httpx.Client(base_url=server.sta + "/", timeout=60)


def unique(prefix: str = "t") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
