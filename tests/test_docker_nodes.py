"""docker/compose.yml's `nodes` profile: a second platform node and a streaming replica of the database. The
file checked as data, then run as compose would run it: the primary's first-start script and the replica's
entrypoint (docker/postgres/) on private PostgreSQL clusters, both platform nodes from the image's command with
the environment compose gives them, and Mosquitto from docker/mosquitto/mosquitto.conf."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest

from tests.harness import _ROOT, PG_BIN, PrivatePostgres, Process, free_port, private_postgres_missing, tail, wait_until
from tests.test_bridge import add_thing
from tests.test_docker import DOCKER, compose, interpolate, mosquitto_from_conf, run_platform, service_env

__all__ = ["compose", "mosquitto_from_conf"]  # fixtures of test_docker, used here

NODES_ENV = {"POSTGRES_PASSWORD": "udp-pw", "REPLICATION_PASSWORD": "repl-pw", "UDP_MQTT_SHARED": "true",
             "UDP_STORE_REPLICAS": "postgresql://udp:udp-pw@postgis-replica:5432/udp"}


def test_nodes_profile_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {n for n, s in services.items() if s.get("profiles") == ["nodes"]} == {"postgis-replica", "platform-b"}
    a, b = services["platform"], services["platform-b"]
    # node b is node a but for its name, its published port and waiting for the replica
    same = {k for k in a if k not in ("environment", "ports", "depends_on")}
    assert {k: b[k] for k in same} == {k: a[k] for k in same}
    env_a, env_b = service_env(a, NODES_ENV), service_env(b, NODES_ENV)
    assert (env_a.pop("UDP_NODE"), env_b.pop("UDP_NODE")) == ("a", "b") and env_a == env_b
    assert b["depends_on"]["postgis-replica"] == {"condition": "service_healthy"}
    assert any(p.endswith(":8081:8080") for p in b["ports"])
    # one node by default: no replica, no shared subscriptions
    single = service_env(a, {"POSTGRES_PASSWORD": "x"})
    assert single["UDP_STORE_REPLICAS"] == "" and single["UDP_MQTT_SHARED"] == "false"
    replica = services["postgis-replica"]
    assert replica["image"] == services["postgis"]["image"] and replica["user"] == "postgres"
    assert replica["entrypoint"] == ["/bin/sh", "/udp/replica.sh"]
    assert "./postgres/replica.sh:/udp/replica.sh:ro" in replica["volumes"]
    assert "./postgres/replication.sh:/docker-entrypoint-initdb.d/20-replication.sh:ro" in \
        services["postgis"]["volumes"]
    assert any(v.startswith("pgdata-replica:") for v in replica["volumes"]) and "pgdata-replica" in compose["volumes"]
    assert service_env(services["postgis"], NODES_ENV)["REPLICATION_PASSWORD"] == "repl-pw"


def as_postgres(*cmd: str, env: dict[str, str]) -> list[str]:
    """A command run as the postgres user when the tests run as root (PostgreSQL refuses root), with `env`."""
    env_args = ["env", *(f"{k}={v}" for k, v in env.items())]
    return ["runuser", "-u", "postgres", "--", *env_args, *cmd] if _ROOT else [*env_args, *cmd]


@pytest.fixture
def primary_with_replica(compose: dict[str, Any]) -> Iterator[tuple[PrivatePostgres, int]]:
    """A private primary as the postgis service's first start leaves it (the udp role and database, PostGIS, then
    docker/postgres/replication.sh), and a replica made and run by docker/postgres/replica.sh; (primary, replica
    port)."""
    missing = private_postgres_missing()
    if missing:
        pytest.skip(missing)
    primary = PrivatePostgres()
    proc = None
    replica_dir = Path(tempfile.mkdtemp(prefix="udp-replica-"))
    try:
        # the image's pg_hba lets replication in from localhost only: drop initdb's lines, so that the replica gets
        # in by the script's line (scram-sha-256, the replicator's password) or not at all
        hba = primary.data / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE ROLE udp LOGIN PASSWORD 'udp-pw'")
            conn.execute("CREATE DATABASE udp OWNER udp")
        with psycopg.connect(primary.url("udp"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION postgis")
        path = f"{PG_BIN}:{os.environ['PATH']}"
        script = service_env(compose["services"]["postgis"], NODES_ENV)
        out = subprocess.run(as_postgres("sh", str(DOCKER / "postgres" / "replication.sh"), env={
            "PATH": path, "PGDATA": str(primary.data), "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres",
            "REPLICATION_PASSWORD": script["REPLICATION_PASSWORD"], "PGHOST": str(primary.dir),
            "PGPORT": str(primary.port)}), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "host replication replicator all scram-sha-256" in hba.read_text()
        if _ROOT:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(replica_dir, pw.pw_uid, pw.pw_gid)
        service = compose["services"]["postgis-replica"]
        env = service_env(service, NODES_ENV)
        assert env["PRIMARY_HOST"] == "postgis"
        port = free_port()
        args = [interpolate(a, {}) for a in service["command"]]
        proc = Process(as_postgres("sh", str(DOCKER / "postgres" / "replica.sh"), *args, "-p", str(port), "-k",
                                   str(replica_dir), "-c", "listen_addresses=127.0.0.1", env={
                                       "PATH": path, "PGDATA": str(replica_dir / "data"), "PRIMARY_HOST": "127.0.0.1",
                                       "PRIMARY_PORT": str(primary.port),
                                       "REPLICATION_PASSWORD": env["REPLICATION_PASSWORD"]}),
                       replica_dir / "replica.log", name="replica")
        proc.wait_port(port, 60)
        # compose starts node b once the replica's healthcheck passes: run it here against the replica
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        line = f"PATH={PG_BIN}:$PATH " + interpolate(check[1], {}).replace("-h 127.0.0.1",
                                                                          f"-h 127.0.0.1 -p {port}")
        wait_until(lambda: subprocess.run(["sh", "-c", line], capture_output=True).returncode == 0, 60,
                   f"the replica's healthcheck\n{tail(replica_dir / 'replica.log')}")
        yield primary, port
    finally:
        if proc is not None:
            proc.stop(20)
        primary.close()
        shutil.rmtree(replica_dir, ignore_errors=True)


def test_nodes_profile_runs_as_compose_runs_it(compose: dict[str, Any], mosquitto_from_conf: tuple[int, int, Path],
                                               primary_with_replica: tuple[PrivatePostgres, int]) -> None:
    primary, replica_port = primary_with_replica
    mqtt_port, _ws_port, _broker_log = mosquitto_from_conf
    replica_url = f"postgresql://udp:udp-pw@127.0.0.1:{replica_port}/udp"
    with psycopg.connect(replica_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    # compose's network names → the servers here
    hosts = {"@postgis:5432/": f"@127.0.0.1:{primary.port}/", "@postgis-replica:5432/": f"@127.0.0.1:{replica_port}/",
             "mqtt://mosquitto:1883": f"mqtt://127.0.0.1:{mqtt_port}"}
    nodes = []
    try:
        for name in ("platform", "platform-b"):
            service = compose["services"][name]
            env = service_env(service, NODES_ENV)
            for theirs, ours in hosts.items():
                env = {k: v.replace(theirs, ours) for k, v in env.items()}
            nodes.append(run_platform(service, env | {"UDP_WORKERS": "1"}))
        for proc, url, _log in nodes:
            proc.wait_http(f"{url}/health", 90)
        (_, a, _), (_, b, _) = nodes
        health = [httpx.get(f"{u}/health", timeout=10).json() for u in (a, b)]
        assert [h["node"]["name"] for h in health] == ["a", "b"]
        assert health[0]["node"]["singletons"] == health[1]["node"]["singletons"]
        assert all(len(h["store"]["replicas"]) == 1 for h in health)
        # a Thing made on node a is read on node b (from the replica, once it has replayed the write)
        sensor = uuid.uuid4().hex[:6]
        add_thing(httpx.Client(base_url=f"{a}/v1.1/", timeout=30), f"counter {sensor}", [f"pedestrians {sensor} total"])
        found = httpx.get(f"{b}/v1.1/Datastreams", params={"$filter": f"name eq 'pedestrians {sensor} total'"},
                          timeout=30).json()["value"]
        assert len(found) == 1
        ds = found[0]["@iot.id"]
        # device messages through the shared subscription: each stored once, whichever node took it
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{sensor}")
        device.connect("127.0.0.1", mqtt_port)
        device.loop_start()
        try:
            for i in range(40):
                device.publish(f"city/pedestrians/{sensor}/count",
                               orjson.dumps({"count": i, "time": f"2026-05-01T09:{i:02d}:00Z"}), qos=1)\
                    .wait_for_publish(10)
        finally:
            device.loop_stop()
            device.disconnect()

        def stored() -> int:
            with psycopg.connect(primary.url("udp")) as conn:
                return conn.execute("SELECT count(*) FROM observations WHERE datastream_id = %s", (ds,)).fetchone()[0]

        wait_until(lambda: stored() >= 40, 30, "the 40 device messages stored")
        time.sleep(1)
        assert stored() == 40
        counted = httpx.get(f"{b}/v1.1/Datastreams({ds})/Observations", params={"$count": "true", "$top": "0"},
                            timeout=30).json()["@iot.count"]
        assert counted == 40
        served = [httpx.get(f"{u}/health", timeout=10).json()["store"]["replicas"][0] for u in (a, b)]
        assert all(r["up"] for r in served), served
    except BaseException:
        for proc, _url, log in nodes:
            print(f"--- {proc.name} ---\n{tail(log, 60)}")
        raise
    finally:
        for proc, _url, log in nodes:
            proc.stop(20)
            log.unlink(missing_ok=True)


@pytest.mark.parametrize(("given", "taken"), [(True, True), ("true", True), (" TRUE ", True), ("false", False),
                                              (False, False), ("yes", None), (1, None)])
def test_mqtt_shared_from_the_environment(given: object, taken: bool | None, tmp_path: Path) -> None:
    """`shared: ${UDP_MQTT_SHARED}` (docker/config.yml) gives text: true or false, any case; anything else refused."""
    import yaml

    from udp.config import ConfigError, load_config

    (tmp_path / "config.yml").write_text(yaml.safe_dump({"mqtt": {"url": "mqtt://b:1883", "shared": given}}))
    if taken is None:
        with pytest.raises(ConfigError, match="mqtt.shared: true or false"):
            load_config(tmp_path / "config.yml")
    else:
        assert load_config(tmp_path / "config.yml").mqtt_shared is taken
