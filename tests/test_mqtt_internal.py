"""The platform's internal topics on the embedded broker (`udp-internal/`, who subscribes to what) stay with the
platform: real paho clients on a running server cannot subscribe to them, receive them through `#`, or forge
them, while notifications to query topics, which need them, keep working."""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import Server
from tests.test_mqtt import Listener, setup, wait_subscribed  # noqa: F401  (setup is a fixture)
from tests.test_sta_api import create


def _client(server: Server) -> tuple[mqtt.Client, queue.Queue]:
    """A connected paho client and the reason codes of its SUBACKs."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{uuid.uuid4().hex[:8]}")
    acks: queue.Queue = queue.Queue()
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: acks.put(codes)
    client.connect("127.0.0.1", server.mqtt_port)  # type: ignore[arg-type]
    client.loop_start()
    return client, acks


def _drain(listener: Listener) -> list[str]:
    topics = [t for t, _ in listener.backlog]
    while True:
        try:
            topics.append(listener.messages.get(timeout=0.5)[0])
        except queue.Empty:
            return topics


def test_internal_topics_reach_only_the_platform(server: Server, setup: dict[str, Any]) -> None:  # noqa: F811
    sta, ds = setup["sta"], setup["ds"]
    # asking for the internal topics by name is refused
    client, acks = _client(server)
    try:
        client.subscribe("udp-internal/#", 1)
        assert all(code.is_failure for code in acks.get(timeout=10))
        client.subscribe("udp-internal/subscriptions", 1)
        assert all(code.is_failure for code in acks.get(timeout=10))
    finally:
        client.loop_stop()
        client.disconnect()
    spy = Listener("127.0.0.1", server.mqtt_port, ["#", "+/subscriptions"])  # type: ignore[arg-type]
    query = f"v1.1/Datastreams({ds})/Observations?$select=result"
    listener = Listener("127.0.0.1", server.mqtt_port, [query])  # type: ignore[arg-type]
    forger, _ = _client(server)
    try:
        wait_subscribed(server.url, [query])  # the platform heard of the query topic on its internal topic
        # a forged report that nobody subscribes to anything must not reach the platform
        forger.publish("udp-internal/subscriptions", b"[]", qos=1, retain=True).wait_for_publish(10)
        time.sleep(0.5)  # the time a forged report would take to arrive
        create(sta, f"Datastreams({ds})/Observations", {"result": 42})
        assert listener.wait(query) == {"result": 42}
        assert spy.wait(query) == {"result": 42}  # the spy does receive what is public
        seen = _drain(spy)
        assert not [t for t in seen if t.startswith("udp-internal")], seen
    finally:
        forger.loop_stop()
        forger.disconnect()
        spy.close()
        listener.close()
    # a client subscribing after the platform's report was retained does not get it either
    late = Listener("127.0.0.1", server.mqtt_port, ["#"])  # type: ignore[arg-type]
    try:
        assert not [t for t in _drain(late) if t.startswith("udp-internal")]
    finally:
        late.close()
