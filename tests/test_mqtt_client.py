"""The platform's paho client (sensorthings/mqtt/client.py) reads its socket in large pieces: every message comes
whole, once and in order, whatever its size and however the reads cut the stream; a real Mosquitto."""

from __future__ import annotations

import os
import queue

import paho.mqtt.client as mqtt
import pytest

from sensorthings.mqtt.client import RECV_CHUNK, BrokerAddress, BufferedSocket, connect
from tests.harness import MOSQUITTO, Mosquitto
from tests.test_mqtt_backpressure import broker  # noqa: F401 - a private Mosquitto without limits

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (Debian package mosquitto)")


def test_messages_of_every_size_come_whole_and_in_order(broker: Mosquitto) -> None:  # noqa: F811
    got: queue.Queue[bytes] = queue.Queue()
    client = connect(BrokerAddress("127.0.0.1", broker.port), "buffered-reader",
                     on_message=lambda msg: got.put(bytes(msg.payload)), subscriptions=[("buf/#", 1)])
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="buffered-sender")
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        assert isinstance(client.socket(), BufferedSocket)
        # tiny ones many to a read, some across a read's end, some larger than a read, remaining lengths of 1-3 bytes
        sizes = [0, 1, 2, 127, 128, 16_383, 16_384, RECV_CHUNK - 10, RECV_CHUNK, RECV_CHUNK + 1, 3 * RECV_CHUNK + 7]
        payloads = [os.urandom(sizes[i % len(sizes)]) if i % 3 == 0 else b"%d" % i for i in range(3000)]
        infos = [sender.publish(f"buf/{i % 7}", p, qos=1) for i, p in enumerate(payloads)]
        for info in infos:
            info.wait_for_publish(30)
        received = []
        while len(received) < len(payloads):
            received.append(got.get(timeout=30))
        assert received == payloads
        assert got.empty()
    finally:
        sender.loop_stop()
        client.loop_stop()
        client.disconnect()
