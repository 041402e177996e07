"""sensorthings.mqtt.relay: on an external broker the HTTP workers' notifications are published through the
connection that takes the creates, whose subscriptions are No Local, so the broker never sends them back to it; a
worker without that process publishes over its own connection. A real Mosquitto, real Unix sockets."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from sensorthings.mqtt import relay
from sensorthings.mqtt.client import BrokerAddress
from sensorthings.mqtt.notify import Notifier
from tests.conftest import wait_until
from tests.test_mqtt import Listener, creator_on_a_broker


def _notification(k: int) -> bytes:
    return orjson.dumps({"@iot.selfLink": f"http://udp.test/v1.1/Observations({k})", "@iot.id": k, "result": k})


def _worker(store: Any, port: int, path: Path) -> Notifier:
    return Notifier(store, BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "http://udp.test/v1.1",
                    f"worker-{uuid.uuid4().hex[:6]}", relay=str(path))


def test_frames_carry_topics_and_payloads_as_they_were() -> None:
    batch = [("v1.1/Datastreams(1)/Observations", b'{"result": 1}'), ("v1.1/Things(2)/name", b""),
             ("udp/Straße", bytes(range(256)) * 300)]
    frame = relay.encode(batch)
    (size,) = relay.FRAME.unpack_from(frame)
    assert size == len(frame) - relay.FRAME.size
    assert relay.decode(frame[relay.FRAME.size:]) == batch


def test_relayed_notifications_are_published_and_never_sent_back_to_the_creator(tmp_path: Path) -> None:
    with creator_on_a_broker(tmp_path) as (creator, port, ds):
        store = creator.service.store
        taker = Notifier(store, BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "http://udp.test/v1.1", "unused",
                         client=creator.client)
        path = tmp_path / "notify.sock"
        server = taker.serve_relay(str(path))
        worker = _worker(store, port, path)
        topic = f"v1.1/Datastreams({ds})/Observations"
        listener = Listener("127.0.0.1", port, [topic])
        try:
            for k in range(2000):
                worker.announce(topic, _notification(k))
            for k in range(2000):
                assert listener.wait(topic)["@iot.id"] == k  # all of them, in order
            wait_until(lambda: worker.stats()["in_flight"] == 0, 10, "the broker's acknowledgements to be answered")
            stats = worker.stats()
            assert stats["relayed"] == 2000 and stats["published"] == 2000 and stats["dropped"] == 0
            assert server.relayed == 2000
            time.sleep(0.5)  # anything the broker would send back has come by now
            # published by the worker itself they come back to the creator (tests/test_mqtt.py, passed over)
            assert creator.received == 0 and creator.client.passed_over == 0
        finally:
            listener.close()
            worker.close()
            server.close()
            taker.close()


def test_a_worker_without_the_relay_publishes_itself_and_takes_the_relay_once_it_is_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "RETRY_S", 0.2)
    with creator_on_a_broker(tmp_path) as (creator, port, ds):
        store = creator.service.store
        path = tmp_path / "notify.sock"
        worker = _worker(store, port, path)
        topic = f"v1.1/Datastreams({ds})/Observations"
        listener = Listener("127.0.0.1", port, [topic])
        taker = Notifier(store, BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "http://udp.test/v1.1", "unused",
                         client=creator.client)
        server = None
        try:
            worker.announce(topic, _notification(1))  # nobody at the socket: over its own connection
            assert listener.wait(topic)["@iot.id"] == 1
            assert worker.stats()["relayed"] == 0
            server = taker.serve_relay(str(path))
            time.sleep(0.3)
            worker.announce(topic, _notification(2))
            assert listener.wait(topic)["@iot.id"] == 2
            assert worker.stats()["relayed"] == 1
            server.close()  # the bridge process stops: the worker publishes itself again
            wait_until(lambda: worker.relay is not None and worker.relay._sock is None, 5, "the worker to notice")
            worker.announce(topic, _notification(3))
            assert listener.wait(topic)["@iot.id"] == 3
            assert worker.stats()["relayed"] == 1 and worker.stats()["dropped"] == 0
        finally:
            listener.close()
            worker.close()
            if server is not None:
                server.close()
            taker.close()
