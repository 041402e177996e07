"""Failed sign-ins throttled through a running platform: per client address (X-Forwarded-For from a trusted
proxy names it) and per user name, 429 with Retry-After on both APIs, the known address of a user that keeps
signing in, and the embedded MQTT broker refusing CONNECT after too many wrong passwords."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Server, start_server, stop_server
from udp.auth import LOOPBACK, client_address, hash_password

LOCKOUT_S = 600  # longer than the test: no lock ends while it runs


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("throttle")
    config = tmp / "config.yml"
    config.write_text(f"""title: Guarded city
auth:
  max_failures: 3
  lockout_s: {LOCKOUT_S}
  users:
    - name: viewer
      password: "{hash_password('viewer-password', iterations=1000)}"
      roles: [read]
    - name: ingest
      password: "{hash_password('ingest-password', iterations=1000)}"
      roles: [write]
    - name: device
      password: "{hash_password('device-password', iterations=1000)}"
      roles: [write]
""", encoding="utf-8")
    srv = start_server(f"sqlite:///{tmp / 'udp.db'}", "sqlite", ["--config", str(config)])
    yield srv
    stop_server(srv)


def get(server: Server, client: str, user: str, password: str, path: str = "/v1.1") -> httpx.Response:
    """A signed-in GET as if from `client` (the test's loopback peer is a trusted proxy by default)."""
    return server.client.get(path, auth=(user, password), headers={"X-Forwarded-For": client})


def assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["retry-after"]) <= LOCKOUT_S
    assert "too many failed sign-ins" in response.json()["message"]


def test_wrong_passwords_lock_the_client_and_the_user_name(guarded: Server) -> None:
    office, attacker, newcomer, other = "10.1.0.1", "10.9.0.1", "10.9.0.2", "10.9.0.3"
    assert get(guarded, office, "viewer", "viewer-password").status_code == 200  # the office signs in first
    for _ in range(3):
        assert get(guarded, attacker, "viewer", "guess").status_code == 401
    assert_locked(get(guarded, attacker, "viewer", "guess"))
    # the lock holds for the right password too: a right guess must not show through it
    assert_locked(get(guarded, attacker, "viewer", "viewer-password"))
    assert_locked(get(guarded, attacker, "ingest", "ingest-password"))  # the address, for every name
    assert_locked(get(guarded, attacker, "viewer", "guess", "/ogcapi/collections"))  # on both APIs
    # the name is locked against addresses that never signed in as it
    assert_locked(get(guarded, newcomer, "viewer", "viewer-password"))
    # ... not against the office, where it signed in before: someone else's guesses do not lock it out
    assert get(guarded, office, "viewer", "viewer-password").status_code == 200
    assert get(guarded, office, "viewer", "viewer-password", "/ogcapi/collections").status_code == 200
    # other names and reading without signing in go on
    assert get(guarded, other, "ingest", "ingest-password").status_code == 200
    assert guarded.client.get("/v1.1", headers={"X-Forwarded-For": attacker}).status_code == 200


def test_unknown_user_names_count_for_the_address(guarded: Server) -> None:
    client = "10.9.1.1"
    for i in range(3):
        assert get(guarded, client, f"nobody-{i}", "guess").status_code == 401
    assert_locked(get(guarded, client, "device", "device-password"))
    assert get(guarded, "10.9.1.2", "device", "device-password").status_code == 200  # names are not counted


def test_failures_below_the_limit_do_not_lock(guarded: Server) -> None:
    client = "10.9.2.1"
    for _ in range(2):
        assert get(guarded, client, "ingest", "typo").status_code == 401
    # ingest's name has two failures from here: the right password still signs in, and often
    for _ in range(20):
        assert get(guarded, client, "ingest", "ingest-password").status_code == 200


def test_client_address_honours_forwarded_for_only_from_trusted_proxies() -> None:
    def scope(peer: str, forwarded: str | None = None) -> dict:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return {"client": (peer, 5000), "headers": headers}

    assert client_address(scope("203.0.113.7", "10.0.0.1"), LOOPBACK) == "203.0.113.7"  # not a proxy: itself
    assert client_address(scope("127.0.0.1", "10.0.0.1"), LOOPBACK) == "10.0.0.1"
    # a client's own X-Forwarded-For is ahead of what the proxy appended: the proxy's word counts
    assert client_address(scope("127.0.0.1", "1.2.3.4, 10.0.0.1"), LOOPBACK) == "10.0.0.1"
    assert client_address(scope("127.0.0.1"), LOOPBACK) == "127.0.0.1"


def _connect(server: Server, user: str | None, password: str | None = None) -> bool:
    """Whether the embedded broker accepts a CONNECT with these credentials (None: without)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
    if user is not None:
        client.username_pw_set(user, password)
    answers: list[bool] = []
    client.on_connect = lambda c, u, f, reason, p: answers.append(not reason.is_failure)
    client.connect("127.0.0.1", server.mqtt_port)  # type: ignore[arg-type]
    client.loop_start()
    deadline = time.time() + 10
    while not answers and time.time() < deadline:
        time.sleep(0.02)
    client.loop_stop()
    client.disconnect()
    assert answers, "the broker did not answer the CONNECT"
    return answers[0]


def test_mqtt_connect_is_refused_after_too_many_wrong_passwords(guarded: Server) -> None:
    assert _connect(guarded, "device", "device-password")
    for _ in range(3):
        assert not _connect(guarded, "ingest", "guess")
    # the address is locked: even the right password (verified a moment ago) is refused now
    assert not _connect(guarded, "device", "device-password")
    assert _connect(guarded, None)  # subscribing without signing in stays open to everyone
