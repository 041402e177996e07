"""Access control through a running platform: users from config.yml (a hash and a ${VAR} secret), roles,
Basic and Bearer (a real OpenID Connect issuer serving its keys over HTTP, tokens signed with RSA), the
embedded MQTT broker's logins and publishing rights, and the warning when the platform runs open."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ROOT, Server, free_port, start_server, stop_server, wait_until
from tests.harness import Udp
from udp.auth import Principal, hash_password, verify_password

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CountObservation"


class Issuer:
    """An OpenID Connect issuer on a free port: discovery document, JWKS, and tokens it signs. A subclass serves
    more (an authorization code flow) by its own `handler`."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/realms/city"
        self.jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The requests it answers: the discovery document and the keys."""
        documents = {"/realms/city/.well-known/openid-configuration":
                     {"issuer": self.url, "jwks_uri": f"{self.url}/protocol/openid-connect/certs"},
                     "/realms/city/protocol/openid-connect/certs": {"keys": [self.jwk]}}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                doc = documents.get(self.path)
                body = json.dumps(doc).encode()
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def token(self, roles: list[str], audience: str = "udp", expires: float = 300, issuer: str | None = None,
              user: tuple[str, str] = ("u1", "planner")) -> str:
        """A signed access token for `user` (subject, preferred_username) with `roles`."""
        claims = {"iss": issuer or self.url, "aud": audience, "sub": user[0], "preferred_username": user[1],
                  "exp": int(time.time() + expires), "iat": int(time.time()), "realm_access": {"roles": roles}}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    iss = Issuer()
    yield iss
    iss.server.shutdown()


@pytest.fixture(scope="module")
def secured(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("auth")
    config = tmp / "config.yml"
    config.write_text(f"""title: Secured city
auth:
  users:
    - name: ingest
      password: ${{UDP_TEST_INGEST_PASSWORD}}
      roles: [write]
    - name: viewer
      password: "{hash_password('viewer-password', iterations=1000)}"
      roles: [read]
  oidc:
    issuer: {issuer.url}
    audience: udp
bridge:
  - topic: city/{{sensor}}/count
    datastream: "counter {{sensor}}"
    result: $.count
""", encoding="utf-8")
    srv = start_server(f"sqlite:///{tmp / 'udp.db'}", "sqlite", ["--config", str(config)],
                       env={"UDP_TEST_INGEST_PASSWORD": "ingest-secret"})
    yield srv
    stop_server(srv)


def thing(name: str) -> dict[str, Any]:
    return {"name": name, "description": "counter", "Locations": [{
        "name": name, "description": "", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [10.0, 53.55]}}],
        "Datastreams": [{"name": f"counter {name}", "description": "d", "observationType": OM,
                         "unitOfMeasurement": {"name": "count", "symbol": "{count}", "definition": "ucum"},
                         "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                         "ObservedProperty": {"name": "count", "definition": "d", "description": "d"}}]}


def test_password_hashes() -> None:
    stored = hash_password("correct horse", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$") and "correct horse" not in stored
    assert verify_password(stored, "correct horse") and not verify_password(stored, "wrong horse")
    assert verify_password("plain-from-env", "plain-from-env") and not verify_password("plain-from-env", "x")
    assert not verify_password("pbkdf2_sha256$broken", "x")
    assert Principal("a", frozenset({"admin"})).can("write") and not Principal("b", frozenset({"read"})).can("write")


def test_writes_take_the_write_role(secured: Server) -> None:
    sta = httpx.Client(base_url=secured.sta + "/", timeout=30)
    name = uuid.uuid4().hex[:8]
    anonymous = sta.post("Things", json=thing(name))
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["www-authenticate"]
    assert "Bearer" in anonymous.headers["www-authenticate"]
    reader = sta.post("Things", json=thing(name), auth=("viewer", "viewer-password"))
    assert reader.status_code == 403 and "viewer may not write" in reader.json()["message"]
    made = sta.post("Things", json=thing(name), auth=("ingest", "ingest-secret"))
    assert made.status_code == 201
    assert sta.get("Things", params={"$filter": f"name eq '{name}'"}).json()["value"]  # reading is public
    assert sta.get("Things", auth=("ingest", "wrong")).status_code == 401  # wrong credentials fail even reads
    batch = {"requests": [{"id": "1", "method": "post", "url": "Things", "body": thing(name + "b")}]}
    assert sta.post("$batch", json=batch).status_code == 401
    assert sta.post("$batch", json=batch, auth=("ingest", "ingest-secret")).status_code == 200
    link = made.headers["location"]
    assert sta.patch(link, json={"description": "x"}).status_code == 401
    assert sta.delete(link, auth=("viewer", "viewer-password")).status_code == 403
    assert sta.patch(link, json={"description": "x"}, auth=("ingest", "ingest-secret")).status_code == 200


def test_bearer_tokens_of_the_oidc_issuer(secured: Server, issuer: Issuer) -> None:
    sta = httpx.Client(base_url=secured.sta + "/", timeout=30)

    def post(token: str) -> httpx.Response:
        return sta.post("Things", json=thing(uuid.uuid4().hex[:8]), headers={"Authorization": f"Bearer {token}"})

    assert post(issuer.token(["write"])).status_code == 201
    assert post(issuer.token(["read"])).status_code == 403
    expired = post(issuer.token(["write"], expires=-60))
    assert expired.status_code == 401 and "expired" in expired.json()["message"].lower()
    assert post(issuer.token(["write"], audience="another-app")).status_code == 401
    assert post(issuer.token(["write"], issuer="http://evil.example/realms/city")).status_code == 401
    assert post("not.a.token").status_code == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": issuer.url, "aud": "udp", "exp": int(time.time()) + 60,
                         "realm_access": {"roles": ["admin"]}}, other, algorithm="RS256", headers={"kid": "k1"})
    assert post(forged).status_code == 401


def test_mqtt_publishing_takes_the_write_role(secured: Server) -> None:
    sta = httpx.Client(base_url=secured.sta + "/", timeout=30)
    name = uuid.uuid4().hex[:8]
    assert sta.post("Things", json=thing(name), auth=("ingest", "ingest-secret")).status_code == 201

    def publish(value: int, user: str | None = None, password: str | None = None) -> int:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
        if user:
            client.username_pw_set(user, password)
        answered: queue.Queue = queue.Queue()  # the CONNACK's verdict, accepted or refused
        client.on_connect = lambda _c, _u, _f, reason, _p: answered.put(not reason.is_failure)
        code = client.connect("127.0.0.1", secured.mqtt_port)  # type: ignore[arg-type]
        client.loop_start()
        connected = answered.get(timeout=10)
        if connected:
            client.publish(f"city/{name}/count", orjson.dumps({"count": value}), qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        return code if connected else -1

    publish(1)  # anonymous: may connect, may not publish
    publish(2, "viewer", "viewer-password")  # a reader may not publish either
    assert publish(3, "ingest", "wrong") == -1  # a wrong password is refused at login
    publish(4, "ingest", "ingest-secret")
    wait_until(lambda: sta.get("Observations", params={"$filter": f"Datastream/name eq 'counter {name}'"}).json()[
        "value"], 10, "the bridge to store the allowed message")
    time.sleep(1)
    results = [o["result"] for o in sta.get("Observations", params={
        "$filter": f"Datastream/name eq 'counter {name}'"}).json()["value"]]
    assert results == [4]


def _serve_briefly(config: Path) -> str:
    """What `udp serve --config` prints until it answers."""
    udp = Udp("serve", "--config", str(config), "--store", f"sqlite:///{config.parent / 'u.db'}",
              log=config.parent / "serve.log")
    try:
        udp.wait(60)
    finally:
        udp.stop(30)
    return udp.log_path.read_text()


def test_open_platform_warns(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("title: Open city\n", encoding="utf-8")
    assert "WARNING: no `auth:`" in _serve_briefly(tmp_path / "config.yml")


@pytest.mark.parametrize(("body", "message"), [
    ("auth: {}\n", "declare `users` or `oidc`"),
    ("auth:\n  users:\n    - name: a\n      password: short\n      roles: [write]\n", "at least 8 characters"),
    ("auth:\n  users:\n    - name: a\n      password: long-enough\n      roles: [owner]\n", "roles: a list of"),
    ("auth:\n  oidc: {audience: udp}\n", "auth.oidc.issuer"),
    ("auth:\n  oidc: {issuer: https://id.example.org}\n  max_failures: 0\n", "auth.max_failures: must be a whole"),
    ("auth:\n  oidc: {issuer: https://id.example.org}\n  lockout_s: soon\n", "auth.lockout_s: must be a whole"),
    ("auth:\n  oidc: {issuer: https://id.example.org}\n  trusted_proxies: [proxy.local]\n",
     "auth.trusted_proxies[0]: 'proxy.local' is not an address"),
])
def test_bad_auth_configs(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "config.yml").write_text(body, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "check", "--config", str(tmp_path / "config.yml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1 and message in out.stderr, out.stderr
