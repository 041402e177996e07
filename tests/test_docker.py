"""docker/: the compose file parsed and checked, the platform service's command run the way compose runs it
(against the machine's PostgreSQL and a Mosquitto started from docker/mosquitto/mosquitto.conf), and the
image's build steps (docker/build-steps.sh) in step with docker/Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.conftest import PG_URL, ROOT
from tests.harness import MOSQUITTO, Mosquitto, Ports, Process, tail
from tests.test_bridge import add_thing
from tests.test_mqtt import Listener

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
BUILD_STEPS = DOCKER / "build-steps.sh"
MOSQUITTO_CONF = DOCKER / "mosquitto" / "mosquitto.conf"
STORE_TEMPLATE = "postgresql://udp:${POSTGRES_PASSWORD}@postgis:5432/udp"


# -- helpers: compose interpolation, the Dockerfile and mosquitto.conf read as data --------------------------

_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """A compose value with ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ resolved as docker compose does."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and have is not None) else arg
        if op in (":?", "?"):
            if not have:
                raise ValueError(f"{name}: {arg}")
            return have
        return have or ""

    return _INTERP.sub(sub, value)


def service_env(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """A service's `environment:` (mapping or list form), interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1].rstrip() + " "
            continue
        logical += stripped
        word, _, rest = logical.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
        logical = ""
    return stages


def script_steps(path: Path = BUILD_STEPS) -> list[str]:
    """The `# RUN` lines of docker/build-steps.sh, without the marker."""
    steps = []
    for line in path.read_text().splitlines():
        m = re.match(r"^(\S.*?)\s+# RUN$", line)
        if m:
            steps.append(m.group(1))
    return steps


def image_command() -> list[str]:
    """The image's CMD (exec form)."""
    runtime = dockerfile_stages()[-1]
    return json.loads(next(args for word, args in runtime if word == "CMD"))


def conf_directives(text: str) -> list[tuple[str, str]]:
    """mosquitto.conf as (directive, value) pairs in order; comments are not directives."""
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out.append((key, value.strip()))
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


# -- the compose file ----------------------------------------------------------------------------------------

def test_compose_has_the_three_services_with_healthchecks(compose: dict[str, Any]) -> None:
    services = {name: s for name, s in compose["services"].items() if not s.get("profiles")}
    assert set(services) == {"postgis", "mosquitto", "platform"}
    assert services["postgis"]["image"] == "postgis/postgis:15-3.4"
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    pg_check = " ".join(services["postgis"]["healthcheck"]["test"])
    assert "pg_isready" in pg_check and "-U udp" in pg_check
    assert "mosquitto_sub" in services["mosquitto"]["healthcheck"]["test"]
    for name in ("postgis", "mosquitto"):
        assert services[name]["healthcheck"]["retries"] >= 3
        assert services[name]["restart"] == "unless-stopped"
    # the platform's healthcheck is the image's (GET /health)
    health = [args for word, args in dockerfile_stages()[-1] if word == "HEALTHCHECK"]
    assert health and "/health" in health[0] and "--start-period" in health[0]
    # volumes: the database and the broker's persistence survive `docker compose down`
    assert any(v.split(":")[1] == "/var/lib/postgresql/data" for v in services["postgis"]["volumes"])
    assert any(v.split(":")[1] == "/mosquitto/data" for v in services["mosquitto"]["volumes"])
    assert {"pgdata", "mosquitto-data"} <= set(compose["volumes"])
    # the database password must be given; nothing has a default secret
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        service_env(services["postgis"], {})


def test_platform_service(compose: dict[str, Any]) -> None:
    platform = compose["services"]["platform"]
    assert platform["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert platform["depends_on"] == {"postgis": {"condition": "service_healthy"},
                                      "mosquitto": {"condition": "service_healthy"}}
    assert "command" not in platform  # the image's CMD, checked below
    assert image_command() == ["sh", "-c", "exec udp serve --host 0.0.0.0 --port 8080 --workers ${UDP_WORKERS:-4} "
                                           "--config /etc/udp/config.yml --log-level ${UDP_LOG_LEVEL:-warning}"]
    env = service_env(platform, {"POSTGRES_PASSWORD": "s3cret"})
    assert platform["environment"]["UDP_STORE"] == STORE_TEMPLATE
    assert env["UDP_STORE"] == "postgresql://udp:s3cret@postgis:5432/udp"
    assert env["UDP_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert env["UDP_PUBLIC_URL"] == "http://localhost:8080"
    assert int(env["UDP_WORKERS"]) >= 2  # several workers
    # each platform process may hold 20 connections: the database must accept them all
    pg_command = compose["services"]["postgis"]["command"]
    max_connections = int(pg_command[pg_command.index("-c") + 1].split("=")[1])
    assert (int(env["UDP_WORKERS"]) + 2) * 20 <= max_connections
    assert env["UDP_LOG_LEVEL"] == "warning"
    assert "./config.yml:/etc/udp/config.yml:ro" in platform["volumes"]
    assert any(p.endswith(":8080:8080") for p in platform["ports"])


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config` (no daemon needed) validates the file against the Compose specification."""
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed: compose.yml checked by the tests above only")
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "POSTGRES_PASSWORD": "s3cret"})
    assert out.returncode == 0, out.stderr


def test_example_config_loads_from_the_compose_environment(compose: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from udp.config import load_config

    env = service_env(compose["services"]["platform"], {"POSTGRES_PASSWORD": "s3cret"})
    values = json.dumps(yaml.safe_load((DOCKER / "config.yml").read_text()))  # comments dropped
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", values))
    assert used <= set(env), f"config.yml takes {used - set(env)} that compose does not set"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(DOCKER / "config.yml")
    assert cfg.store == env["UDP_STORE"] and cfg.mqtt_url == env["UDP_MQTT_URL"]
    assert cfg.store_replicas == () and not cfg.mqtt_shared  # one node unless docker/.env says otherwise
    assert cfg.public_url == env["UDP_PUBLIC_URL"]
    assert set(cfg.collections) == {"districts", "bike_stations"}
    assert [r.topic for r in cfg.bridge] == ["city/pedestrians/{sensor}/count", "cctv/{camera}/counts",
                                             "sdot/{serial}/pm10"]


def test_mosquitto_conf_persistence_listeners_and_queues() -> None:
    text = MOSQUITTO_CONF.read_text()
    conf = conf_directives(text)
    values = dict(conf)
    assert values["persistence"] == "true" and values["persistence_location"] == "/mosquitto/data/"
    listeners = [(value, conf[i + 1]) for i, (key, value) in enumerate(conf) if key == "listener"]
    assert listeners == [("1883", ("protocol", "mqtt")), ("9001", ("protocol", "websockets"))]
    # QoS 1 messages are never dropped for a slow subscriber, and the bridge's batches are not capped
    assert values["max_queued_messages"] == "0" and values["max_queued_bytes"] == "0"
    assert values["max_inflight_messages"] == "0"
    assert values["allow_anonymous"] in ("true", "false")
    # hooks for access control, commented until the platform has it
    assert re.search(r"^#\s*password_file ", text, re.M) and re.search(r"^#\s*acl_file ", text, re.M)
    assert values["log_dest"] == "stdout"


# -- the image -----------------------------------------------------------------------------------------------

def test_dockerfile_and_build_steps_agree() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert build[0] == ("FROM", "python:3.11-slim AS build") and runtime[0] == ("FROM", "python:3.11-slim")
    runs = [args for word, args in build if word == "RUN"]
    steps = script_steps()
    assert runs == steps, "docker/Dockerfile's build-stage RUN lines and docker/build-steps.sh's # RUN lines differ"
    assert any("pip\" install" in s and '"$SRC"' in s for s in steps)
    assert any("check_libs.py" in s for s in steps) and any("udp\" --help" in s for s in steps)
    # the same variables: the Dockerfile sets them, the script sets its own
    env = next(args for word, args in build if word == "ENV")
    assert "SRC=/src" in env and "VENV=/opt/udp" in env
    assert ("COPY", ". /src") in build
    # no Python package is installed anywhere else: the runtime stage copies the venv, adds MapServer's program
    # (WMS/WFS) from Debian and a user
    runtime_runs = [args for word, args in runtime if word == "RUN"]
    for args in runtime_runs:
        assert not re.search(r"\bpip\b", args), args
    debian = [args for args in runtime_runs if re.search(r"\bapt-get\b", args)]
    assert len(debian) == 1 and "cgi-mapserver" in debian[0] and "--no-install-recommends" in debian[0]
    assert "rm -rf /var/lib/apt/lists" in debian[0]
    assert ("COPY", "--from=build /opt/udp /opt/udp") in runtime
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any("useradd" in args for args in runtime_runs)


@pytest.mark.skipif(os.environ.get("UDP_TEST_BUILD_STEPS") != "1",
                    reason="set UDP_TEST_BUILD_STEPS=1 to run docker/build-steps.sh (a fresh venv, about a minute)")
def test_build_steps_script_runs() -> None:
    work = Path(tempfile.mkdtemp(prefix="udp-build-steps-"))
    try:
        out = subprocess.run(["sh", str(BUILD_STEPS), str(work)], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "usage: udp" in out.stdout
        assert "no system library beyond python:3.11-slim's" in out.stdout
        assert out.stdout.strip().splitlines()[-1] == str(work / "venv")
        assert not (work / "src" / ".git").exists() and not (work / "src" / "tests").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the platform service run as compose runs it -------------------------------------------------------------

@pytest.fixture
def mosquitto_from_conf() -> Iterator[tuple[int, int, Path]]:
    """docker/mosquitto/mosquitto.conf with its listeners on reserved loopback ports and its persistence in the
    broker's own directory; (mqtt port, websocket port, log)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")

    def conf(ports: list[int], data: Path) -> str:
        by_listener = {"1883": ports[0], "9001": ports[1]}
        lines = []
        for line in MOSQUITTO_CONF.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "listener":
                line = f"listener {by_listener[value.strip()]} 127.0.0.1"
            elif key == "persistence_location":
                line = f"persistence_location {data}/"
            lines.append(line)
        return "\n".join(lines) + "\n"

    broker = Mosquitto(conf, listeners=2)
    try:
        yield broker.ports[0], broker.ports[1], broker.log_path
        broker.stop()
        # persistence is on: a clean stop writes the broker's database (the platform's persistent sessions)
        assert (broker.dir / "mosquitto.db").exists(), tail(broker.log_path)
    finally:
        broker.close()


@pytest.fixture
def postgis_like_database() -> Iterator[tuple[str, str, str]]:
    """What the postgis service's first start makes: a role owning a database with PostGIS in it
    (a fresh role and database here, dropped afterwards); (role, password, database)."""
    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: the platform service needs a real PostgreSQL")
    import psycopg

    tag = uuid.uuid4().hex[:10]
    role, password, name = f"udp_docker_{tag}", uuid.uuid4().hex, f"udp_test_{tag}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    base = PG_URL.rpartition("/")[0]
    try:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")  # as the image's initdb script does
        yield role, password, name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def run_healthchecks(compose: dict[str, Any], pg_host: str, pg_port: int, role: str, database: str,
                     mqtt_port: int) -> None:
    """The postgis and mosquitto services' healthcheck commands, run against the local servers (each skipped
    when its client is not installed)."""
    services = compose["services"]
    pg_test = services["postgis"]["healthcheck"]["test"]
    assert pg_test[0] == "CMD-SHELL"
    if shutil.which("pg_isready"):
        line = interpolate(pg_test[1], {}).replace("-U udp", f"-U {role}").replace("-d udp", f"-d {database}")
        line = line.replace("-h 127.0.0.1", f"-h {pg_host} -p {pg_port}")
        out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
    mq_test = [interpolate(arg, {}) for arg in services["mosquitto"]["healthcheck"]["test"]]
    assert mq_test[0] == "CMD" and "$SYS/broker/uptime" in mq_test
    if shutil.which(mq_test[1]):
        args = mq_test[1:]
        args[args.index("-p") + 1] = str(mqtt_port)
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip(), out.stdout + out.stderr


def run_platform(service: dict[str, Any], env: dict[str, str]) -> tuple[Process, str, Path]:
    """A platform service's command as compose runs it: the image's CMD, with the volumes' container paths mapped
    back to docker/, the published port on a free one, and `udp` run by this interpreter; (process, URL, log)."""
    command = image_command()
    assert command[:2] == ["sh", "-c"]
    line = command[2]
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        line = line.replace(container, str((DOCKER / host).resolve()))
    ports = Ports(1)
    port = ports[0]
    assert "--port 8080" in line
    line = line.replace("--port 8080", f"--port {port}")
    line = line.replace("exec udp ", f"exec {shlex.quote(sys.executable)} -m udp.cli ", 1)
    log = Path(tempfile.gettempdir()) / f"udp-docker-test-{port}.log"
    return Process(["sh", "-c", line], log, env, "udp serve", ports), f"http://127.0.0.1:{port}", log


def test_platform_service_runs_as_compose_runs_it(compose: dict[str, Any], mosquitto_from_conf: tuple[int, int, Path],
                                                  postgis_like_database: tuple[str, str, str]) -> None:
    mqtt_port, ws_port, broker_log = mosquitto_from_conf
    role, password, database = postgis_like_database
    platform = compose["services"]["platform"]
    # the environment compose gives the container, from docker/.env-style values
    env = service_env(platform, {"POSTGRES_PASSWORD": password})
    # ... with the services' names resolved the way compose's network resolves them: postgis:5432 → the
    # machine's PostgreSQL (as a role owning its database, like the image's POSTGRES_USER), mosquitto:1883 →
    # the private Mosquitto
    store = urlsplit(env["UDP_STORE"])
    assert (store.username, store.hostname, store.port, store.path) == ("udp", "postgis", 5432, "/udp")
    assert store.password == password
    pg = urlsplit(PG_URL)
    env["UDP_STORE"] = f"postgresql://{role}:{quote(password)}@{pg.hostname}:{pg.port or 5432}/{database}"
    assert env["UDP_MQTT_URL"] == "mqtt://mosquitto:1883"
    env["UDP_MQTT_URL"] = f"mqtt://127.0.0.1:{mqtt_port}"
    # compose starts the platform once both healthchecks pass: run them here, pointed at the same servers
    run_healthchecks(compose, pg.hostname or "127.0.0.1", pg.port or 5432, role, database, mqtt_port)
    proc, url, log = run_platform(platform, env)
    device = None
    listener = None
    try:
        proc.wait_http(f"{url}/health", 50)
        body = httpx.get(f"{url}/health", timeout=5).json()
        assert body["store"] == {"kind": "postgresql", "ok": True}
        assert body["bridge"]["dead_letters"] == 0
        sta = httpx.Client(base_url=f"{url}/v1.1/", timeout=30)
        sensor = uuid.uuid4().hex[:6]
        add_thing(sta, f"counter {sensor}", [f"pedestrians {sensor} total"])
        ds = sta.get("Datastreams", params={"$filter": f"name eq 'pedestrians {sensor} total'"}).json()["value"][0]
        # links are written under the public URL compose sets
        assert ds["@iot.selfLink"].startswith(env["UDP_PUBLIC_URL"] + "/v1.1/")
        # a browser's view: notifications through the broker's WebSocket listener
        listener = Listener("127.0.0.1", ws_port, [f"v1.1/Datastreams({ds['@iot.id']})/Observations"],
                            transport="websockets")
        # a device publishes a count (QoS 1) to the broker; the bridge maps it into the store
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{sensor}")
        device.connect("127.0.0.1", mqtt_port)
        device.loop_start()
        device.publish(f"city/pedestrians/{sensor}/count",
                       orjson.dumps({"count": 17, "time": "2026-05-01T09:00:00Z"}), qos=1).wait_for_publish(10)
        note = listener.wait(f"v1.1/Datastreams({ds['@iot.id']})/Observations", timeout=20)
        assert note["result"] == 17 and note["phenomenonTime"].startswith("2026-05-01T09:00:00")
        import psycopg

        with psycopg.connect(env["UDP_STORE"]) as conn:
            rows = conn.execute("SELECT result_number, phenomenon_time_start FROM observations "
                                "WHERE datastream_id = %s", (ds["@iot.id"],)).fetchall()
        assert [(r[0], r[1].isoformat()) for r in rows] == [(17.0, "2026-05-01T09:00:00+00:00")]
        # the example's collections are served
        assert httpx.get(f"{url}/ogcapi/collections/districts/items", params={"limit": 1}).json()["numberMatched"] == 25
    finally:
        if device is not None:
            device.loop_stop()
            device.disconnect()
        if listener is not None:
            listener.close()
        proc.stop(20)
    assert proc.proc.returncode is not None
    log.unlink(missing_ok=True)  # kept for reading only when the test failed


@pytest.mark.skipif(not (shutil.which("mosquitto") and shutil.which("mosquitto_passwd")),
                    reason="mosquitto and mosquitto_passwd (Debian package mosquitto) are not installed")
def test_mosquitto_acl_matches_the_platform_roles(tmp_path: Path) -> None:
    """docker/mosquitto/acl with a password file: anyone reads notifications, only write users publish."""
    work = Path(tempfile.mkdtemp(prefix="udp-acl-"))
    work.chmod(0o777)  # mosquitto drops to its own user
    try:
        passwd = work / "passwd"
        for user, password in (("platform", "platform-pw"), ("ingest", "ingest-pw")):
            subprocess.run(["mosquitto_passwd", *([] if passwd.exists() else ["-c"]), "-b", str(passwd), user,
                            password], check=True, capture_output=True)
        shutil.copy(ROOT / "docker" / "mosquitto" / "acl", work / "acl")
        for f in work.iterdir():
            f.chmod(0o644)
        broker = Mosquitto(f"password_file {passwd}\nacl_file {work / 'acl'}")
        port = broker.port
        try:
            seen: list[tuple[str, bytes]] = []
            platform = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="acl-platform")
            platform.username_pw_set("platform", "platform-pw")
            platform.on_message = lambda _c, _u, m: seen.append((m.topic, m.payload))
            platform.connect("127.0.0.1", port)
            platform.subscribe("#", 1)
            platform.loop_start()
            time.sleep(0.3)
            for user, password, payload in ((None, None, b"anonymous"), ("ingest", "ingest-pw", b"writer")):
                device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-{payload.decode()}")
                if user:
                    device.username_pw_set(user, password)
                device.connect("127.0.0.1", port)
                device.loop_start()
                device.publish("city/pedestrians/1/count", payload, qos=1).wait_for_publish(5)
                device.loop_stop()
                device.disconnect()
            time.sleep(0.5)
            platform.loop_stop()
            assert [p for t, p in seen if t.startswith("city/")] == [b"writer"]
        finally:
            broker.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
