"""The SensorThings MQTT extension with real brokers and paho clients: notifications and create by publish."""

from __future__ import annotations

import os
import queue
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Server, start_server, stop_server, wait_until
from tests.harness import MOSQUITTO, Mosquitto
from tests.test_sta_api import create, thing_body, values

MQTT_URL = os.environ.get("UDP_TEST_MQTT")


class Listener:
    """A paho client that records what arrives on its topics."""

    def __init__(self, host: str, port: int, topics: list[str], transport: str = "tcp") -> None:
        self.messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.backlog: list[tuple[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  transport=transport)
        subscribed = queue.Queue()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, orjson.loads(m.payload)))
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self.client.connect(host, port)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, 1)
            subscribed.get(timeout=10)

    def wait(self, topic: str, timeout: float = 10, where: Any = None) -> Any:
        """The next message on `topic` (matching `where`), or fail; other messages stay for later waits."""
        for i, (got_topic, payload) in enumerate(self.backlog):
            if got_topic == topic and (where is None or where(payload)):
                return self.backlog.pop(i)[1]
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                got_topic, payload = self.messages.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if got_topic == topic and (where is None or where(payload)):
                return payload
            self.backlog.append((got_topic, payload))
        raise AssertionError(f"nothing on {topic} within {timeout} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_subscribed(url: str, topics: list[str], auth: tuple[str, str] | None = None) -> None:
    """Until the platform at `url` knows that each of `topics` has a subscriber (embedded broker only): a client's
    SUBACK says the broker routes to it, this that the platform publishes there. Other tests' subscriptions to
    other topics never count, as a count of subscribed topics did. With accounts, `auth` is an admin's."""
    def known() -> bool:
        health = httpx.get(f"{url}/health", params=[("subscribed", t) for t in topics], auth=auth).json()
        return all(health.get("mqtt", {}).get("subscribed", {}).get(t) for t in topics)

    wait_until(known, 10, f"the platform to hear of the subscriptions to {topics}", 0.05)


@pytest.fixture
def setup(server: Server) -> dict[str, Any]:
    sta = httpx.Client(base_url=server.sta + "/", timeout=30)
    doc = create(sta, "Things", thing_body(f"mq-{uuid.uuid4().hex[:6]}"))
    ds = values(sta, f"Things({doc['@iot.id']})/Datastreams")[0]
    return {"sta": sta, "thing": doc["@iot.id"], "ds": ds["@iot.id"]}


def test_server_settings_list_mqtt(server: Server) -> None:
    doc = httpx.get(server.sta).json()
    conf = doc["serverSettings"]["conformance"]
    create_cls = "http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt/observations-creation"
    assert create_cls in conf
    endpoints = doc["serverSettings"][create_cls]["endpoints"]
    assert f"mqtt://127.0.0.1:{server.mqtt_port}" in endpoints and f"ws://127.0.0.1:{server.ws_port}" in endpoints
    # the cockpit finds the WebSocket endpoint under the receive-updates class
    receive_cls = "http://www.opengis.net/spec/iot_sensing/1.1/req/receive-updates-via-mqtt/receive-updates"
    assert receive_cls in conf and doc["serverSettings"][receive_cls]["endpoints"] == endpoints


def test_notifications_for_sets_navigation_and_entities(server: Server, setup: dict) -> None:
    sta, ds, tid = setup["sta"], setup["ds"], setup["thing"]
    topics = ["v1.1/Observations", f"v1.1/Datastreams({ds})/Observations", f"v1.1/Things({tid})",
              f"v1.1/Things({tid})/name", f"v1.1/Datastreams({ds})/Observations?$select=result,phenomenonTime",
              f"v1.1/Datastreams({ds})/Observations?$filter=result gt 10"]
    listener = Listener("127.0.0.1", server.mqtt_port, topics)
    try:
        wait_subscribed(server.url, topics)
        created = create(sta, f"Datastreams({ds})/Observations",
                         {"result": 5, "phenomenonTime": "2024-06-01T00:00:00Z"})
        get = sta.get(f"Observations({created['@iot.id']})").json()
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations") == get
        assert listener.wait("v1.1/Observations", where=lambda p: p["@iot.id"] == created["@iot.id"]) == get
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations?$select=result,phenomenonTime") == {
            "result": 5, "phenomenonTime": "2024-06-01T00:00:00Z"}
        create(sta, f"Datastreams({ds})/Observations", {"result": 50})
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations?$filter=result gt 10")["result"] == 50
        assert sta.patch(f"Things({tid})", json={"name": "renamed by PATCH"}).status_code == 200
        assert listener.wait(f"v1.1/Things({tid})")["name"] == "renamed by PATCH"
        assert listener.wait(f"v1.1/Things({tid})/name") == {"name": "renamed by PATCH"}
        # every way in notifies: dataArray and $batch too
        r = sta.post("CreateObservations", json=[{"Datastream": {"@iot.id": ds}, "components": ["result"],
                                                  "dataArray": [[101], [102]]}])
        assert r.status_code == 201
        for value in (101, 102):
            listener.wait(f"v1.1/Datastreams({ds})/Observations", where=lambda p, v=value: p["result"] == v)
        sta.post("$batch", json={"requests": [{"id": "1", "method": "post", "url": f"Datastreams({ds})/Observations",
                                               "body": {"result": 103}}]})
        listener.wait(f"v1.1/Datastreams({ds})/Observations", where=lambda p: p["result"] == 103)
    finally:
        listener.close()


def test_a_bulk_write_nobody_listens_to_leaves_no_notification_work(server: Server, setup: dict) -> None:
    """Once 20,000 Observations by CreateObservations are committed, with nobody subscribed to their topics on the
    embedded broker, nothing is left to publish within a second (the notifier skips topics without subscribers and
    builds each notification from the written rows)."""
    sta, ds = setup["sta"], setup["ds"]
    unheard = [f"v1.1/Datastreams({ds})/Observations", "v1.1/Observations"]
    wait_until(lambda: not any(httpx.get(f"{server.url}/health", params={"subscribed": unheard}).json()["mqtt"]
                               ["subscribed"].values()), 10, "no subscriber left on the bulk's topics")
    rows = [[f"2025-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", i] for i in range(20_000)]
    r = sta.post("CreateObservations", json=[{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                                              "dataArray": rows}])
    assert r.status_code == 201 and len(r.json()) == 20_000
    committed = time.monotonic()
    wait_until(lambda: httpx.get(f"{server.url}/health").json()["mqtt"]["pending"] == 0, 1, "nothing pending")
    assert time.monotonic() - committed < 1


def test_websocket_subscription(server: Server, setup: dict) -> None:
    ds = setup["ds"]
    topic = f"v1.1/Datastreams({ds})/Observations"
    listener = Listener("127.0.0.1", server.ws_port, [topic], transport="websockets")
    try:
        wait_subscribed(server.url, [topic])
        create(setup["sta"], f"Datastreams({ds})/Observations", {"result": 7})
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations")["result"] == 7
    finally:
        listener.close()


def test_create_by_publish(server: Server, setup: dict) -> None:
    sta, ds = setup["sta"], setup["ds"]
    listener = Listener("127.0.0.1", server.mqtt_port, [f"v1.1/Datastreams({ds})/Observations"])
    try:
        wait_subscribed(server.url, [f"v1.1/Datastreams({ds})/Observations"])
        listener.client.publish(f"v1.1/Datastreams({ds})/Observations", orjson.dumps({"result": 21.5}), qos=1)
        body = orjson.dumps({"result": 22.5, "Datastream": {"@iot.id": ds}})
        listener.client.publish("v1.1/Observations", body, qos=1)
        listener.client.publish("v1.1/Observations", b"not json", qos=1)
        notified = {listener.wait(f"v1.1/Datastreams({ds})/Observations", where=lambda p: "@iot.id" in p)["result"]
                    for _ in range(2)}
        assert notified == {21.5, 22.5}
        stored = sorted(o["result"] for o in values(sta, f"Datastreams({ds})/Observations"))
        assert 21.5 in stored and 22.5 in stored
        # the notifications on the same topics were not taken for creates
        time.sleep(0.5)
        assert sorted(o["result"] for o in values(sta, f"Datastreams({ds})/Observations")) == stored
    finally:
        listener.close()


@pytest.fixture(scope="module")
def mosquitto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not MQTT_URL:
        pytest.skip("UDP_TEST_MQTT is not set: external broker tests skipped")
    db = tmp_path_factory.mktemp("mosq") / "udp.db"
    srv = start_server(f"sqlite:///{db}", "sqlite", ["--mqtt", MQTT_URL])
    yield srv
    stop_server(srv)


def test_external_broker(mosquitto_server: Server) -> None:
    sta = httpx.Client(base_url=mosquitto_server.sta + "/", timeout=30)
    tid = create(sta, "Things", thing_body(f"ext-{uuid.uuid4().hex[:6]}"))["@iot.id"]
    ds = values(sta, f"Things({tid})/Datastreams")[0]["@iot.id"]
    broker = urlsplit(MQTT_URL)
    listener = Listener(broker.hostname, broker.port or 1883,
                        ["v1.1/Observations", f"v1.1/Datastreams({ds})/Observations", f"v1.1/Things({tid})"])
    try:
        created = create(sta, f"Datastreams({ds})/Observations", {"result": 1})
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations")["@iot.id"] == created["@iot.id"]
        assert listener.wait("v1.1/Observations", where=lambda p: p["@iot.id"] == created["@iot.id"])
        sta.patch(f"Things({tid})", json={"description": "external"})
        assert listener.wait(f"v1.1/Things({tid})")["description"] == "external"
        # the HTTP worker's notifications went out through the bridge process's connection (sensorthings.mqtt.relay),
        # which the broker does not send them back to
        mqtt_health = httpx.get(f"{mosquitto_server.url}/health").json()["mqtt"]
        assert mqtt_health["relayed"] >= 3 and mqtt_health["dropped"] == 0
        listener.client.publish(f"v1.1/Datastreams({ds})/Observations", orjson.dumps({"result": 2}), qos=1)
        assert listener.wait(f"v1.1/Datastreams({ds})/Observations",
                             where=lambda p: p["result"] == 2 and "@iot.id" in p)
        assert 2 in [o["result"] for o in values(sta, f"Datastreams({ds})/Observations")]
    finally:
        listener.close()


@contextmanager
def creator_on_a_broker(tmp_path: Any, url: str | None = None) -> Iterator[tuple[Any, int, int]]:
    """A Creator taking creates from a Mosquitto of its own (other tests' platforms publish notifications to the same
    small ids on a shared one), over a store with one Thing (SQLite unless `url` says another): (the creator, the
    broker's port, the Thing's Datastream)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    # no queue bound: a test's paho listener behind a burst (2,000 relayed notifications) under a loaded CI machine
    # had Mosquitto drop one of its 1,000 queued messages (its default `max_queued_messages`)
    private = Mosquitto("max_queued_messages 0")
    from sensorthings.mqtt.client import BrokerAddress
    from sensorthings.mqtt.create import Creator
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(url or f"sqlite:///{tmp_path / 'creator.db'}")
    service = Service(store)
    tid = service.call("POST", "Things", thing_body(f"cr-{uuid.uuid4().hex[:6]}"))["@iot.id"]
    ds = service.call("GET", f"Things({tid})/Datastreams")["value"][0]["@iot.id"]
    creator = Creator(service, "http://udp.test/v1.1")
    creator.subscribe(BrokerAddress.parse(f"mqtt://127.0.0.1:{private.port}"), f"test-create-{uuid.uuid4().hex[:8]}")
    try:
        wait_until(lambda: creator.client.is_connected(), 10, "the creator to connect")
        time.sleep(0.5)  # its SUBACK
        yield creator, private.port, ds
    finally:
        creator.close()
        store.close()
        private.stop()


def test_an_external_broker_never_sends_the_creator_its_own_notifications(tmp_path: Any) -> None:
    """On an external broker the platform takes creates on the topics it publishes notifications to: through one
    MQTT 5 connection whose subscriptions are No Local, each create comes in once and its notifications (to
    `v1.1/Observations` and `v1.1/Datastreams(n)/Observations`, which the creator subscribes to) reach other
    clients but not the creator."""
    from sensorthings.mqtt.client import BrokerAddress
    from sensorthings.mqtt.notify import Notifier

    with creator_on_a_broker(tmp_path) as (creator, port, ds):
        store = creator.service.store
        notifier = Notifier(store, BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "http://udp.test/v1.1", "unused",
                            client=creator.client)
        store.listeners.append(notifier)
        listener = Listener("127.0.0.1", port, [f"v1.1/Datastreams({ds})/Observations"])
        topic = f"v1.1/Datastreams({ds})/Observations"
        try:
            for k in range(5):
                listener.client.publish(topic, orjson.dumps({"result": k}), qos=1)
            for k in range(5):
                listener.wait(topic, where=lambda p, k=k: p == {"result": k})
                assert listener.wait(topic, where=lambda p, k=k: p.get("result") == k and "@iot.id" in p)
            wait_until(lambda: creator.created == 5, 10, "five creates")
            time.sleep(0.5)  # anything the broker would send back has come by now
            assert creator.received == 5, "the creator heard its own notifications"
            assert notifier.published >= 10  # each to the Observations and the Datastream's set
        finally:
            listener.close()
            notifier.close()


def test_the_creator_passes_over_the_notifications_of_other_processes(tmp_path: Any) -> None:
    """On an external broker the HTTP workers' notifications (published through connections of their own, which No
    Local does not spare) come back to the creator on the creates' topics: each is acknowledged as it is read and
    never handled (`BufferedClient.passes_over`, in runs taken from what was read), and creates among them are still
    created. Mosquitto sends a client at most 20 unacknowledged messages: a notification left unacknowledged would
    hold back what follows."""
    with creator_on_a_broker(tmp_path) as (creator, port, ds):
        worker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"worker-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        worker.connect("127.0.0.1", port)
        worker.loop_start()
        topics = ["v1.1/Observations", f"v1.1/Datastreams({ds})/Observations",
                  "v1.1/FeaturesOfInterest(1)/Observations"]
        try:
            wait_until(worker.is_connected, 10, "the other process's client to connect")
            sent = []
            for k in range(3000):
                # a notification as the notifier writes it (its selfLink first), some longer than 127 bytes
                sent.append(worker.publish(topics[k % 3], orjson.dumps({
                    "@iot.selfLink": f"http://udp.test/v1.1/Observations({k})", "@iot.id": k, "result": k,
                    "parameters": {"pad": "x" * (k % 300)}}), qos=k % 2))
                if k % 600 == 599:  # a create among them
                    sent.append(worker.publish(topics[1], orjson.dumps({"result": -k}), qos=1))
            wait_until(lambda: all(info.is_published() for info in sent), 30, "the broker to take every publish")
            wait_until(lambda: creator.created == 5, 30, "the five creates among the notifications")
            # the first message of each read from the socket goes through paho (and the handler passes it over): the
            # rest of a read's run is taken without either
            wait_until(lambda: creator.received + creator.client.passed_over == 3005, 30, "every message read once")
            assert creator.client.passed_over > 1500, "notifications went to the creator's handler one by one"
            results = [o["result"] for o in creator.service.call("GET", f"Datastreams({ds})/Observations")["value"]]
            assert sorted(results) == sorted(-k for k in range(599, 3000, 600))
        finally:
            worker.loop_stop()
            worker.disconnect()


def publish_while_the_creator_stands(creator: Any, port: int, messages: list[tuple[str, bytes, int]]) -> None:
    """Publish (topic, payload, QoS) messages from a device while the creator's loop stands, so that they wait in its
    socket and its session and come in few reads; then let it read them."""
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    device.connect("127.0.0.1", port)
    device.loop_start()
    creator.client.loop_stop()
    try:
        wait_until(device.is_connected, 10, "the device to connect")
        sent = [device.publish(topic, payload, qos=qos) for topic, payload, qos in messages]
        wait_until(lambda: all(info.is_published() for info in sent), 30, "the broker to take every publish")
    finally:
        creator.client.loop_start()
        device.loop_stop()
        device.disconnect()


def test_the_creates_of_one_read_go_to_the_writer_together(tmp_path: Any) -> None:
    """Creates from an external broker are gathered per read of the socket and handed to the writer as one submission
    (`Creator.hand_on`), each written or refused on its own and all acknowledged once committed. Mosquitto sends a
    client at most 20 unacknowledged messages: a create left unacknowledged, good or bad, would hold back the rest."""
    with creator_on_a_broker(tmp_path) as (creator, port, ds):
        writer = creator.service.store.writer
        submitted = writer.submitted
        messages, good = [], 0
        for k in range(300):
            if k % 50 == 7:  # a Datastream that does not exist: refused by the writer, among the others
                messages.append(("v1.1/Datastreams(987654)/Observations", orjson.dumps({"result": k}), 1))
            elif k % 50 == 13:  # refused at once: no result
                messages.append((f"v1.1/Datastreams({ds})/Observations",
                                 orjson.dumps({"resultTime": "2026-12-07T10:00:00Z"}), 1))
            else:
                messages.append((f"v1.1/Datastreams({ds})/Observations",
                                 orjson.dumps({"result": k, "phenomenonTime": "2026-12-07T10:00:00Z"}), k % 2))
                good += 1
        publish_while_the_creator_stands(creator, port, messages)
        wait_until(lambda: creator.created == good, 30, "every good create")
        wait_until(lambda: creator.rejected == 12, 30, "the bad ones refused")
        results = [o["result"] for o in creator.service.call(
            "GET", f"Datastreams({ds})/Observations", **{"$top": "1000"})["value"]]
        assert sorted(results) == sorted(k for k in range(300) if k % 50 not in (7, 13))
        # one submission per read of the socket, not one per message
        assert writer.submitted - submitted < good / 2, (writer.submitted - submitted, good)


def test_a_create_the_database_refuses_does_not_hold_back_those_read_with_it(tmp_path: Any, store_url: str) -> None:
    """A create whose row the database refuses as a whole (PostgreSQL: a NUL in its parameters, which JSONB cannot
    hold) fails the submission it was gathered into. Its companions are then written one by one: they are stored, and
    it is refused with the database's reason and acknowledged, not left for the broker to send again for ever."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite stores every value that parsing lets through")
    with creator_on_a_broker(tmp_path, store_url) as (creator, port, ds):
        publish_while_the_creator_stands(creator, port, [(f"v1.1/Datastreams({ds})/Observations", orjson.dumps(
            {"result": k, "parameters": {"note": "a\u0000b" if k == 3 else "ok"}}), 1) for k in range(8)])
        wait_until(lambda: creator.created == 7 and creator.rejected == 1, 30, "seven created, one refused")
        results = [o["result"] for o in creator.service.call("GET", f"Datastreams({ds})/Observations")["value"]]
        assert sorted(results) == [0, 1, 2, 4, 5, 6, 7]
        time.sleep(1)  # the refused one, acknowledged, does not come again
        assert creator.received == 8 and creator.rejected == 1
