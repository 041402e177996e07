"""Reads sent to a PostgreSQL streaming replica (`store: {url, replicas}`, sensorthings/store/replicas.py), on a
private primary and a replica made by pg_basebackup: a client reads its own writes at once, a replica whose
replay is paused (lagging) or that is stopped gives its reads to the primary, and takes them again when back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import start_server, stop_server
from tests.harness import PrivatePostgres
from tests.test_faults import needs_servers

pytestmark = needs_servers


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    primary = PrivatePostgres()
    try:
        replica = PrivatePostgres(primary)
        try:
            yield primary, replica
        finally:
            replica.close()
    finally:
        primary.close()


def _replicas(api: httpx.Client) -> dict:
    store = api.get("/health").json()["store"]
    return {"reads": store["replicas"][0]["reads"], "up": store["replicas"][0]["up"],
            "primary": store["primary_reads"]}


def _sql(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def test_reads_go_to_the_replica_and_see_the_writes_before_them(cluster: tuple[PrivatePostgres, PrivatePostgres],
                                                                 tmp_path: Path) -> None:
    primary, replica = cluster
    (tmp_path / "config.yml").write_text(yaml.safe_dump({
        "title": "Replicas", "store": {"url": primary.url(), "replicas": [replica.url()]}}))
    srv = start_server(primary.url(), "postgresql", ["--config", str(tmp_path / "config.yml"), "--workers", "1"])
    try:
        api = srv.http()
        before = _replicas(api)
        # each write read back at once, through the replica: never a 404
        for k in range(30):
            made = api.post("/v1.1/Things", json={"name": f"r{k}", "description": "d"})
            assert made.status_code == 201
            assert api.get(made.headers["location"]).status_code == 200
            assert api.get("/v1.1/Things", params={"$filter": f"name eq 'r{k}'"}).json()["value"]
        after = _replicas(api)
        assert after["up"] and after["reads"] >= before["reads"] + 60
        # the replica's replay paused: it lags, and the reads it cannot answer fresh go to the primary
        _sql(replica.url(), "SELECT pg_wal_replay_pause()")
        try:
            made = api.post("/v1.1/Things", json={"name": "while paused", "description": "d"})
            assert api.get(made.headers["location"]).status_code == 200
            assert _replicas(api)["primary"] > after["primary"]
        finally:
            _sql(replica.url(), "SELECT pg_wal_replay_resume()")
        # the replica stopped: reads go to the primary; back, it takes them again
        replica.stop()
        try:
            for k in range(3):
                made = api.post("/v1.1/Things", json={"name": f"down {k}", "description": "d"})
                assert api.get(made.headers["location"]).status_code == 200
            assert not _replicas(api)["up"]
        finally:
            replica.start()
        time.sleep(5.5)  # sensorthings.store.replicas.DOWN_S
        back = _replicas(api)["reads"]
        assert api.get("/v1.1/Things", params={"$top": 1}).status_code == 200
        assert _replicas(api)["reads"] > back
    finally:
        stop_server(srv)


def test_replicas_need_a_postgresql_store(tmp_path: Path) -> None:
    from udp.config import ConfigError, load_config

    (tmp_path / "config.yml").write_text(yaml.safe_dump({"store": {"url": "sqlite:///x.db",
                                                                   "replicas": ["postgresql://r/db"]}}))
    with pytest.raises(ConfigError, match="store.replicas"):
        load_config(tmp_path / "config.yml")
    # from the environment (${UDP_STORE_REPLICAS}, docker/config.yml): URLs apart, "" for none
    for given, taken in (("postgresql://r/db  postgresql://s/db", ("postgresql://r/db", "postgresql://s/db")),
                         ("", ())):
        (tmp_path / "config.yml").write_text(yaml.safe_dump({"store": {"url": "postgresql://p/db",
                                                                       "replicas": given}}))
        assert load_config(tmp_path / "config.yml").store_replicas == taken
    for bad in ("mysql://r/db", 42):
        (tmp_path / "config.yml").write_text(yaml.safe_dump({"store": {"url": "postgresql://p/db",
                                                                       "replicas": bad}}))
        with pytest.raises(ConfigError, match="store.replicas: a list"):
            load_config(tmp_path / "config.yml")
