"""Publishing in bulk (sensorthings/mqtt/outbox.py): PUBLISH packets built by hand and written many at once reach a
subscriber whole, once and in order, on MQTT 3.1.1 and 5, at QoS 0 and 1; QoS 1 stays within the client's window and
the broker's Receive Maximum; what the broker had not acknowledged when it went away is sent again when it is back.
A real Mosquitto."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sensorthings.mqtt.client import ROOM_WAIT_S, BrokerAddress, BufferedClient, connect
from sensorthings.mqtt.outbox import WINDOW, Outbox
from tests.harness import MOSQUITTO, Mosquitto, wait_until

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (Debian package mosquitto)")


class Subscriber:
    """A plain paho client taking a topic filter at QoS 1 (persistent: it gets what came while the broker was
    away and it was not)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = lambda _c, _u, msg: self.got.put((msg.topic, bytes(msg.payload)))
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the subscriber did not subscribe"

    def take(self, n: int, timeout: float = 30) -> list[tuple[str, bytes]]:
        """The next `n` messages (fails after `timeout` s without one)."""
        return [self.got.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _close(client: BufferedClient, subscriber: Subscriber, broker: Mosquitto) -> None:
    client.loop_stop()
    client.disconnect()
    subscriber.close()
    broker.close()


def _messages(n: int, prefix: str = "out") -> list[tuple[str, bytes]]:
    # payloads of every size class of a remaining length (1 to 3 bytes of it)
    return [(f"{prefix}/{i % 7}", b"%d:" % i + b"x" * (i % 5 * 7000)) for i in range(n)]


@pytest.mark.parametrize(("v5", "qos"), [(False, 1), (True, 1), (False, 0), (True, 0)])
def test_a_bulk_arrives_whole_once_and_in_order(v5: bool, qos: int) -> None:
    broker = Mosquitto("max_inflight_messages 0\nmax_queued_messages 0")
    subscriber = Subscriber(broker.port, "out/#", f"outbox-sub-{v5}-{qos}")
    client = connect(BrokerAddress("127.0.0.1", broker.port), f"outbox-{v5}-{qos}", no_local=v5)
    try:
        assert (client.protocol == mqtt.MQTTv5) is v5
        outbox = Outbox(client, qos)
        messages = _messages(3000)
        assert sum(outbox.send(messages[i:i + 250]) for i in range(0, 3000, 250)) == 3000
        assert subscriber.take(3000) == messages
        wait_until(lambda: outbox.in_flight == 0, 10, "every QoS 1 publish acknowledged")
        time.sleep(0.3)
        assert subscriber.got.empty()  # none twice
    finally:
        _close(client, subscriber, broker)


@pytest.mark.parametrize("v5", [False, True])
def test_acknowledgements_taken_in_runs_among_other_packets(v5: bool) -> None:
    # the client takes a run of the outbox's PUBACKs from its buffer at once (BufferedClient._take_pubacks); here
    # PUBLISHes it receives come among them (paho's own publishes, from another thread while the bulk goes, on a
    # topic it subscribes to: on MQTT 5 in a shared group, which No Local does not spare) with the PUBACKs of paho's
    # publishes, which paho must still see
    broker = Mosquitto("max_inflight_messages 0\nmax_queued_messages 0")
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = connect(BrokerAddress("127.0.0.1", broker.port), f"outbox-mixed-{v5}", shared="g" if v5 else None,
                     on_message=lambda msg: got.put((msg.topic, bytes(msg.payload))),
                     subscriptions=[("mix/paho/#", 1)])
    runs: list[int] = []
    try:
        outbox = Outbox(client, 1)
        acknowledged = outbox.acknowledged

        def counted(acks: list[tuple[int, bool]]) -> int:
            runs.append(len(acks))
            return acknowledged(acks)

        outbox.acknowledged = counted  # type: ignore[method-assign]
        own: list[mqtt.MQTTMessageInfo] = []

        def paho_publishes() -> None:
            for i in range(300):
                own.append(client.publish(f"mix/paho/{i}", b"p%d" % i, qos=1))
                time.sleep(0.001)

        other = threading.Thread(target=paho_publishes)
        other.start()
        messages = _messages(6000, "mix")
        assert sum(outbox.send(messages[i:i + 250]) for i in range(0, 6000, 250)) == 6000
        other.join(30)
        wait_until(lambda: outbox.in_flight == 0, 30, "every outbox publish acknowledged")
        wait_until(lambda: all(info.is_published() for info in own), 30, "paho's own publishes acknowledged")
        received = sorted(got.get(timeout=30) for _ in range(300))
        assert received == sorted((f"mix/paho/{i}", b"p%d" % i) for i in range(300))
        assert max(runs) > 1, "no run of PUBACKs was taken at once"
        assert client.is_connected()
    finally:
        client.loop_stop()
        client.disconnect()
        broker.close()


def test_qos_1_keeps_within_the_brokers_receive_maximum() -> None:
    # Mosquitto tells an MQTT 5 client how many unacknowledged publishes it takes (max_inflight_messages); the
    # outbox's own window (`WINDOW`) is larger
    broker = Mosquitto("max_inflight_messages 5\nmax_queued_messages 0")
    subscriber = Subscriber(broker.port, "out/#", "outbox-sub-rm")
    client = connect(BrokerAddress("127.0.0.1", broker.port), "outbox-rm", no_local=True)
    seen_in_flight = []
    try:
        assert client.receive_maximum == 5
        outbox = Outbox(client, 1)
        sent = client.send_packets

        def watched(blob: bytes, written: object = None) -> bool:
            seen_in_flight.append(outbox.in_flight)
            return sent(blob, written)  # type: ignore[arg-type]

        client.send_packets = watched  # type: ignore[method-assign]
        messages = _messages(500, "out")
        assert outbox.send(messages) == 500
        assert subscriber.take(500) == messages
        assert max(seen_in_flight) <= 5
        assert client.is_connected()
    finally:
        _close(client, subscriber, broker)


def test_what_the_broker_did_not_acknowledge_goes_out_again_when_it_is_back() -> None:
    broker = Mosquitto("max_inflight_messages 0\nmax_queued_messages 0", persistence=True)
    subscriber = Subscriber(broker.port, "back/#", "outbox-sub-back")
    client: BufferedClient = connect(BrokerAddress("127.0.0.1", broker.port), "outbox-back", clean_session=False,
                                     no_local=True)
    try:
        outbox = Outbox(client, 1)
        assert outbox.send([("back/0", b"before")]) == 1
        assert subscriber.take(1) == [("back/0", b"before")]
        broker.stop()
        wait_until(lambda: not client.is_connected(), 10, "the client sees the broker gone")
        # the window takes what fits while the broker is away; past it, nothing waits for a broker that is gone
        away = [("back/1", b"%d" % i) for i in range(WINDOW + 50)]
        assert outbox.send(away, wait=0.5) == WINDOW
        assert outbox.in_flight == WINDOW
        broker.start()
        got = subscriber.take(WINDOW, timeout=60)
        assert sorted(got) == sorted(away[:WINDOW])
        wait_until(lambda: outbox.in_flight == 0, 10, "the resent publishes acknowledged")
    finally:
        _close(client, subscriber, broker)


def test_qos_0_waits_for_a_slow_broker_as_long_as_it_is_connected() -> None:
    # no acknowledgement tells QoS 0 of a broker that takes nothing; a busy one reads slowly (the bridge's connection
    # carries its device messages too): what does not fit the sockets waits, and is not dropped after ROOM_WAIT_S
    broker = Mosquitto("max_inflight_messages 0\nmax_queued_messages 0")
    subscriber = Subscriber(broker.port, "slow/#", "outbox-sub-slow")
    client = connect(BrokerAddress("127.0.0.1", broker.port), "outbox-slow")
    assert broker.proc is not None
    try:
        outbox = Outbox(client, 0)
        big = [("slow/0", b"%d:" % i + b"y" * 200_000) for i in range(100)]  # 20 MB: more than the sockets hold
        taken = [0]

        def send() -> None:
            taken[0] = sum(outbox.send(big[i:i + 10]) for i in range(0, len(big), 10))

        os.kill(broker.proc.pid, signal.SIGSTOP)
        sender = threading.Thread(target=send, daemon=True)
        try:
            sender.start()
            time.sleep(ROOM_WAIT_S + 2)
            assert sender.is_alive(), "the sender did not wait for the stopped broker"
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        sender.join(60)
        assert taken[0] == len(big)
        assert subscriber.take(len(big), timeout=60) == big
    finally:
        _close(client, subscriber, broker)


def test_publishes_the_broker_refuses_are_counted() -> None:
    # MQTT 5: Mosquitto acknowledges a publish its ACL forbids with "not authorized"; it is not delivered
    def conf(ports: list[int], directory: Path) -> str:
        (directory / "acl").write_text("topic readwrite ok/#\ntopic read denied/#\n", encoding="utf-8")
        return (f"listener {ports[0]} 127.0.0.1\nallow_anonymous true\nacl_file {directory}/acl\n"
                "persistence false\nlog_dest stdout\nlog_type error\nlog_type warning\n")

    broker = Mosquitto(conf)
    subscriber = Subscriber(broker.port, "ok/#", "outbox-sub-acl")
    client = connect(BrokerAddress("127.0.0.1", broker.port), "outbox-acl", no_local=True)
    try:
        outbox = Outbox(client, 1)
        messages = [("ok/1" if i % 3 else "denied/1", b"%d" % i) for i in range(300)]
        assert outbox.send(messages) == 300
        wait_until(lambda: outbox.in_flight == 0, 10, "every publish acknowledged")
        assert outbox.refused == 100
        assert subscriber.take(200) == [m for m in messages if m[0] == "ok/1"]
    finally:
        _close(client, subscriber, broker)
