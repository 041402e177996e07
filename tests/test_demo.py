"""`udp demo`: the demo city starts, every collection, Thing and live stream answers."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.harness import Udp


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    cache = tmp_path_factory.mktemp("demo-cache")
    demo = Udp("demo", "--speed", "120", log=cache / "demo.log", env={"XDG_CACHE_HOME": str(cache)})
    try:
        demo.wait(120)
        yield {"url": demo.url, "mqtt_port": demo.mqtt_port, "log": demo.log_path,
               "cold_s": time.perf_counter() - demo.started}
    finally:
        demo.stop(20)


def test_demo_serves_the_city(demo: dict) -> None:
    url = demo["url"]
    text = Path(demo["log"]).read_text()
    for line in ("landing page", "SensorThings", "OGC API", "cockpit", "MQTT"):
        assert line in text, text
    collections = httpx.get(f"{url}/ogcapi/collections").json()["collections"]
    files = [c["id"] for c in collections if c["id"] not in ("things", "locations", "features_of_interest",
                                                             "latest_values")]
    assert len(files) >= 8
    for c in collections:
        r = httpx.get(f"{url}/ogcapi/collections/{c['id']}/items", params={"limit": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["numberMatched"] > 0, c["id"]
    things = httpx.get(f"{url}/v1.1/Things", params={"$count": "true", "$top": "0"}).json()["@iot.count"]
    assert things >= 200
    districts = httpx.get(f"{url}/ogcapi/collections/districts/items", params={"limit": 100}).json()
    assert districts["numberMatched"] == 25
    lon, lat = districts["features"][0]["geometry"]["coordinates"][0][0]
    assert 126.7 < lon < 127.3 and 37.4 < lat < 37.8  # reprojected from EPSG:5174
    air = httpx.get(f"{url}/v1.1/Datastreams", params={"$filter": "ObservedProperty/name eq 'PM10'",
                                                       "$expand": "Observations($top=1)"}).json()["value"]
    assert len(air) == 25 and all(ds["Observations"] for ds in air)
    # citizens' feedback: a few answered examples, each placed in its district, the unmoderated one hidden
    feedback = httpx.get(f"{url}/ogcapi/collections/feedback/items", timeout=30).json()["features"]
    answered = [f["properties"] for f in feedback if f["properties"]["status"] == "answered"]
    assert len(feedback) == 4 and len(answered) == 2
    assert all(p["response"] and p["department"] and p["area"] for p in answered)


def test_demo_is_live(demo: dict) -> None:
    got: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-watcher")
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, orjson.loads(msg.payload)))
    client.on_connect = lambda c, *_: c.subscribe("v1.1/Observations", 1)
    client.connect("127.0.0.1", demo["mqtt_port"])
    client.loop_start()
    try:
        topic, note = got.get(timeout=30)
        assert topic == "v1.1/Observations" and isinstance(note["result"], int | float)
    finally:
        client.loop_stop()
    latest = httpx.get(f"{demo['url']}/ogcapi/collections/latest_values/items",
                       params={"filter": "name LIKE 'pedestrians%'", "limit": 1000}).json()
    assert any(f["properties"]["result"] is not None for f in latest["features"])
