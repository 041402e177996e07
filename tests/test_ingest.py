"""One writer per process (group commit): concurrent single POSTs share transactions and a 201 means committed;
a refused request among them fails alone; a QoS 1 publish on the standard topic is acknowledged only once its
Observation is committed (embedded broker) and stored once through Mosquitto; deep inserts carry thousands of
Observations in one request, all or nothing. Real `udp serve` on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest

from tests.conftest import Server, serve_on
from tests.harness import wait_until
from tests.test_bridge import MQTT_URL, publisher, wait_for
from tests.test_observation_writes import measurement_stream
from tests.test_sta_api import OM, UNIT
from udp.config import ConfigError, load_config


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_on(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def mosquitto_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not MQTT_URL:
        pytest.skip("UDP_TEST_MQTT is not set: external broker tests skipped")
    yield from serve_on("sqlite", tmp_path_factory, ["--mqtt", MQTT_URL])


def ingest_stats(server: Server) -> dict[str, int]:
    return httpx.get(server.url + "/health", timeout=30).json()["ingest"]


def count(sta: httpx.Client, path: str) -> int:
    return sta.get(path, params={"$count": "true", "$top": "0"}).json()["@iot.count"]


def test_concurrent_posts_share_commits_and_a_201_means_committed(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    ds = measurement_stream(sta, f"group {uuid.uuid4().hex[:6]}")
    before = ingest_stats(platform)
    reader = platform.http("/v1.1/")  # another connection: what a 201 promises, anyone can read at once

    def post(i: int) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        with platform.http("/v1.1/") as client:
            bad = i % 10 == 3  # a string for an OM_Measurement: refused, alone
            r = client.post(f"Datastreams({ds})/Observations",
                            json={"result": "warm" if bad else i, "phenomenonTime": f"2020-01-01T00:{i // 60:02}:"
                                                                                    f"{i % 60:02}Z"})
            if r.status_code != 201:
                return r.status_code, r.json(), None
            got = reader.get(r.headers["Location"])
            return r.status_code, r.json(), got.json() if got.status_code == 200 else None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, range(200)))
    refused = [body for status, body, _ in results if status == 400]
    assert len(refused) == 20 and all("wrong result type" in b["message"] for b in refused)
    created = [(body, got) for status, body, got in results if status == 201]
    assert len(created) == 180
    for body, got in created:
        assert got == body  # readable as soon as the 201 came, and answered as a GET answers
    assert count(sta, f"Datastreams({ds})/Observations") == 180
    assert ingest_stats(platform)["written"] - before["written"] == 180
    if platform.kind == "sqlite":  # the writes woke the worker's checkpointing thread (sqlite_checkpoints)
        wait_until(lambda: ingest_stats(platform)["checkpoints"] > before["checkpoints"], 10, "a checkpoint")
    else:
        assert "checkpoints" not in before


@contextmanager
def write_lock(server: Server, ds: int) -> Iterator[None]:
    """The store held by another writer: SQLite's write lock, or a lock on the Datastream's row that the
    writer's update of its phenomenonTime waits for."""
    if server.kind == "sqlite":
        conn = sqlite3.connect(server.store.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(server.store) as pg:
        pg.execute("SELECT id FROM datastreams WHERE id = %s FOR UPDATE", (ds,))
        yield
        pg.rollback()


def test_posts_waiting_for_a_commit_share_the_next_one(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    ds = measurement_stream(sta, f"shared {uuid.uuid4().hex[:6]}")
    before = ingest_stats(platform)

    def post(i: int) -> int:
        with platform.http("/v1.1/") as client:
            return client.post(f"Datastreams({ds})/Observations", json={"result": i}).status_code

    with ThreadPoolExecutor(12) as pool:
        with write_lock(platform, ds):
            posted = pool.map(post, range(12))
            # the first one's transaction waits for the lock; the others wait for the next commit
            wait_until(lambda: ingest_stats(platform)["submitted"] - before["submitted"] == 12, 30,
                       "twelve POSTs submitted")
        assert list(posted) == [201] * 12
    after = ingest_stats(platform)
    assert after["written"] - before["written"] == 12
    assert after["transactions"] - before["transactions"] <= 2


def test_post_to_a_missing_datastream_is_404_and_to_a_missing_link_400(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    r = sta.post("Datastreams(987654321)/Observations", json={"result": 1})
    assert r.status_code == 404 and "Datastream 987654321 does not exist" in r.json()["message"]
    r = sta.post("Observations", json={"result": 1, "Datastream": {"@iot.id": 987654321}})
    assert r.status_code == 400 and "Datastream 987654321 does not exist" in r.json()["message"]


def test_qos1_publish_is_acknowledged_once_committed(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    ds = measurement_stream(sta, f"puback {uuid.uuid4().hex[:6]}")
    device = publisher("127.0.0.1", platform.mqtt_port)  # type: ignore[arg-type]
    try:
        topic = f"v1.1/Datastreams({ds})/Observations"
        sent = [device.publish(topic, orjson.dumps({"result": i}), qos=1) for i in range(300)]
        sent.append(device.publish(topic, b"not json", qos=1))  # refused, and acknowledged all the same
        for info in sent:
            info.wait_for_publish(30)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
        # every PUBACK came after its commit: all are there now, without waiting
        assert count(sta, f"Datastreams({ds})/Observations") == 300
    finally:
        device.loop_stop()
        device.disconnect()


def test_standard_topic_through_mosquitto_stores_each_once(mosquitto_platform: Server) -> None:
    sta = mosquitto_platform.http("/v1.1/")
    ds = measurement_stream(sta, f"mosquitto {uuid.uuid4().hex[:6]}")
    broker = urlsplit(MQTT_URL)
    device = publisher(broker.hostname, broker.port or 1883)  # type: ignore[arg-type]
    try:
        topic = f"v1.1/Datastreams({ds})/Observations"
        for info in [device.publish(topic, orjson.dumps({"result": i}), qos=1) for i in range(500)]:
            info.wait_for_publish(30)
        wait_for(lambda: count(sta, f"Datastreams({ds})/Observations") >= 500)
        results = sorted(o["result"] for o in sta.get(f"Datastreams({ds})/Observations",
                                                      params={"$top": "1000", "$select": "result"}).json()["value"])
        assert results == list(range(500))
    finally:
        device.loop_stop()
        device.disconnect()


def _thing(name: str, observations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "description": "deep", "Locations": [{
        "name": name, "description": "", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [10.0, 53.5]}}],
        "Datastreams": [{"name": name, "description": "d", "observationType": OM + "OM_Measurement",
                         "unitOfMeasurement": UNIT,
                         "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                         "ObservedProperty": {"name": "pm10", "definition": "d", "description": "d"},
                         "Observations": observations}]}


def test_deep_insert_carries_thousands_of_observations_all_or_nothing(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    t0 = datetime(2022, 1, 1, tzinfo=UTC)
    hourly = [{"phenomenonTime": (t0 + timedelta(hours=h)).isoformat().replace("+00:00", "Z"), "result": h % 97}
              for h in range(2000)]
    name = f"deep {uuid.uuid4().hex[:6]}"
    r = sta.post("Things", json=_thing(name, hourly))
    assert r.status_code == 201, r.text
    ds = sta.get(f"Things({r.json()['@iot.id']})/Datastreams").json()["value"][0]
    assert count(sta, f"Datastreams({ds['@iot.id']})/Observations") == 2000
    assert ds["phenomenonTime"] == "2022-01-01T00:00:00Z/2022-03-25T07:00:00Z"
    features = sta.get(f"Datastreams({ds['@iot.id']})/Observations",
                       params={"$top": "1000", "$expand": "FeatureOfInterest($select=id)", "$select": "id"}).json()
    assert len({o["FeatureOfInterest"]["@iot.id"] for o in features["value"]}) == 1

    # one Observation that breaks the rules refuses the whole request: no Thing is left behind
    broken = f"broken {uuid.uuid4().hex[:6]}"
    r = sta.post("Things", json=_thing(broken, [*hourly[:500], {"result": "warm"}, *hourly[500:1000]]))
    assert r.status_code == 400 and "wrong result type" in r.json()["message"]
    assert sta.get("Things", params={"$filter": f"name eq '{broken}'"}).json()["value"] == []


def test_quiet_after_bulk_when_nobody_subscribed(platform: Server) -> None:
    sta = platform.http("/v1.1/")
    ds = measurement_stream(sta, f"bulk {uuid.uuid4().hex[:6]}")
    health = httpx.get(platform.url + "/health", timeout=30).json()["mqtt"]
    assert health["subscribed_topics"] == 0  # the embedded broker said so from the start
    rows = [[f"2021-01-01T{h % 24:02}:{h // 24 % 60:02}:00Z", h] for h in range(5000)]
    r = sta.post("CreateObservations", json=[{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                                              "dataArray": rows}])
    assert r.status_code == 201 and "error" not in r.json()
    wait_until(lambda: httpx.get(platform.url + "/health", timeout=30).json()["mqtt"]["pending"] == 0, 30,
               "nothing left to notify")
    # nothing was published for topics nobody listens to
    assert httpx.get(platform.url + "/health", timeout=30).json()["mqtt"]["published"] == health["published"]


def test_notify_qos_is_checked(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("mqtt: {notify_qos: 0}\n")
    assert load_config(str(tmp_path / "config.yml")).mqtt_notify_qos == 0
    (tmp_path / "config.yml").write_text("mqtt: {notify_qos: 3}\n")
    with pytest.raises(ConfigError, match="mqtt.notify_qos"):
        load_config(str(tmp_path / "config.yml"))
