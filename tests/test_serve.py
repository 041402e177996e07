"""`udp serve` as a command: several workers on a fresh store, a configured public URL, /health."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_URL, ROOT, _pg_database, start_server, stop_server


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_start_on_an_empty_store(kind: str, tmp_path: Path) -> None:
    if kind == "postgresql" and not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    gen = _pg_database() if kind == "postgresql" else None
    store = next(gen) if gen else f"sqlite:///{tmp_path / 'w.db'}"
    server = start_server(store, kind, ["--workers", "2"])
    try:
        # both workers created (or found) the schema: many requests spread over both succeed
        for i in range(20):
            r = server.client.post("/v1.1/Things", json={"name": f"w{i}", "description": "d"})
            assert r.status_code == 201, r.text
        assert len(server.client.get("/v1.1/Things").json()["value"]) == 20
        health = server.client.get("/health").json()
        assert health["status"] == "ok" and health["store"]["kind"] == kind
    finally:
        stop_server(server)
        if gen:
            gen.close()


def test_public_url_and_config(tmp_path: Path) -> None:
    config = tmp_path / "city.yml"
    config.write_text("title: Test city\nstore: sqlite:///city.db\npublic_url: https://data.city.example/\n")
    server = start_server(f"sqlite:///{tmp_path / 'p.db'}", "sqlite", ["--config", str(config)])
    try:
        r = server.client.post("/v1.1/Things", json={"name": "p", "description": "d"})
        assert r.headers["location"].startswith("https://data.city.example/v1.1/Things(")
        landing = server.client.get("/").json()
        assert landing["title"] == "Test city"
        assert any(link["href"] == "https://data.city.example/v1.1" for link in landing["links"])
        html = server.client.get("/", headers={"Accept": "text/html"})
        assert "<h1>Test city</h1>" in html.text
    finally:
        stop_server(server)


def test_mqtt_port_zero_takes_a_free_one(tmp_path: Path) -> None:
    """`--mqtt-port 0`: the embedded broker on a free port that clients and the notifier are told; nothing
    published while nobody subscribes."""
    import re
    import socket

    from tests.harness import Ports, Process

    port = Ports(1)[0]
    udp = Process([sys.executable, "-m", "udp.cli", "serve", "--port", str(port), "--store",
                   f"sqlite:///{tmp_path / 'z.db'}", "--mqtt-port", "0", "--mqtt-ws-port", "0"],
                  tmp_path / "serve.log", None, "udp serve")
    try:
        udp.wait_http(f"http://127.0.0.1:{port}/health")
        broker = int(re.search(r"MQTT +mqtt://[^:]+:(\d+)", udp.tail(60)).group(1))  # type: ignore[union-attr]
        assert broker > 0
        socket.create_connection(("127.0.0.1", broker), timeout=5).close()
        mqtt = httpx.get(f"http://127.0.0.1:{port}/health").json()["mqtt"]
        assert mqtt["connected"] and mqtt["subscribed_topics"] == 0
    finally:
        udp.stop()


def test_bad_config_stops_start_up(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "bad.yml"
    config.write_text("title: x\ncolour: red\n")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "colour" in out.stderr


def test_health_is_json(server: object) -> None:
    r = httpx.get(f"{server.url}/health")  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.json()["store"]["ok"] is True


def test_config_validation(tmp_path: Path) -> None:
    from udp.config import ConfigError, load_config

    good = tmp_path / "good.yml"
    good.write_text("title: T\nserver:\n  threads: 2\n  response_cache_mb: 0\nstore: sqlite:///x.db\n")
    cfg = load_config(good)
    assert cfg.threads == 2 and cfg.cache_mb == 0 and cfg.store == f"sqlite:///{tmp_path / 'x.db'}"
    for text, where in [("server:\n  threads: 0\n", "server.threads"), ("server:\n  colour: 1\n", "server.colour"),
                        ("store: mysql://x\n", "store"), ("title: [1]\n", "title"),
                        ("store: ${UDP_SURELY_UNSET_VAR}\n", "UDP_SURELY_UNSET_VAR")]:
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=where.replace(".", r"\.").replace("$", r"\$")):
            load_config(bad)


def test_cors_lets_web_apps_of_other_origins_call_the_apis(server: object, tmp_path: Path) -> None:
    url = server.url  # type: ignore[attr-defined]
    origin = {"Origin": "https://dashboard.example"}
    for path in ("/v1.1/Things", "/ogcapi/collections", "/ogcapi/tileMatrixSets"):
        r = httpx.get(url + path, headers=origin)
        assert r.headers["access-control-allow-origin"] == "*", path
        assert "etag" in r.headers.get("access-control-expose-headers", "").lower() or path != "/v1.1/Things"
    # a write with credentials and a body: the browser asks first
    pre = httpx.options(url + "/v1.1/Observations", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in
                                                 pre.headers["access-control-allow-headers"].split(",")}
    # a list of origins: only those; [] turns it off
    config = tmp_path / "cors.yml"
    config.write_text("title: c\nserver:\n  cors: [https://dashboard.example]\n")
    listed = start_server(f"sqlite:///{tmp_path / 'c.db'}", "sqlite", ["--config", str(config)])
    try:
        assert httpx.get(listed.url + "/v1.1/Things", headers=origin).headers[
            "access-control-allow-origin"] == "https://dashboard.example"
        other = httpx.get(listed.url + "/v1.1/Things", headers={"Origin": "https://elsewhere.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    finally:
        stop_server(listed)


@pytest.mark.parametrize("value", ["yes", "[https://x.example/path]", "[ftp://x.example]"])
def test_bad_cors_origins_stop_start_up(value: str, tmp_path: Path) -> None:
    from udp.config import ConfigError, load_config

    config = tmp_path / "bad.yml"
    config.write_text(f"title: x\nserver:\n  cors: {value}\n")
    with pytest.raises(ConfigError, match="server.cors"):
        load_config(str(config))


_REENTERED = """
import os, signal, sys, threading
from apicommon.stopping import stop_on_signals

class Reentered(threading.Event):
    '''An Event whose set() is where a second SIGTERM arrives, while it holds its lock.'''
    def set(self):
        with self._cond:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes: Python runs a pending handler between them
                pass
            self._flag = True
            self._cond.notify_all()

stop = Reentered()
if sys.argv[1] == "plain":
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
else:
    stop_on_signals(stop)
os.kill(os.getpid(), signal.SIGTERM)
stop.wait(10)
print("stopped" if stop.is_set() else "not stopped")
"""


@pytest.mark.parametrize("handler", ["plain", "stop_on_signals"])
def test_a_second_sigterm_inside_the_first_does_not_hang_the_process(handler: str) -> None:
    """`udp seed` and the bridge stop on SIGTERM; their parent's terminate() and the parent-death signal come
    together, and a handler that sets an Event waits forever for itself when the second arrives inside the
    first's `set` (an orphaned `udp seed` was found so). The plain handler shows the hazard; the platform's does not."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", _REENTERED, handler], cwd=ROOT, capture_output=True, text=True,
                             timeout=5)
    except subprocess.TimeoutExpired:
        assert handler == "plain", "stop_on_signals hung"
        return
    assert handler != "plain", "the plain handler was expected to hang here"
    assert out.stdout.strip() == "stopped", out.stderr
