"""The platform's paho client (sensorthings/mqtt/client.py) reads its socket in large pieces: every message comes
whole, once and in order, whatever its size and however the reads cut the stream; under a flood it still writes
(acknowledgements, keep-alives) between reads; other threads may append to what it sends while it reconnects.
A real Mosquitto."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sensorthings.mqtt import packets
from sensorthings.mqtt.client import HELD_PACKETS, RECV_CHUNK, BrokerAddress, BufferedClient, BufferedSocket, connect
from tests.harness import MOSQUITTO, Mosquitto
from tests.test_mqtt_backpressure import broker  # noqa: F401 - a private Mosquitto without limits

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (Debian package mosquitto)")


@pytest.mark.parametrize("v5", [False, True])
def test_messages_of_every_size_come_whole_and_in_order(broker: Mosquitto, v5: bool) -> None:  # noqa: F811
    # read by the client itself (sensorthings.mqtt.client.Received), QoS 0 and 1; on MQTT 5 each carries properties
    # of every length class, which it skips
    got: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
    client = connect(BrokerAddress("127.0.0.1", broker.port), "buffered-reader", no_local=v5,
                     on_message=lambda msg: got.put((msg.topic, bytes(msg.payload), msg.qos)),
                     subscriptions=[("buf/#", 1)])
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="buffered-sender",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        assert isinstance(client.socket(), BufferedSocket)
        # tiny ones many to a read, some across a read's end, some larger than a read, remaining lengths of 1-3 bytes
        sizes = [0, 1, 2, 127, 128, 16_383, 16_384, RECV_CHUNK - 10, RECV_CHUNK, RECV_CHUNK + 1, 3 * RECV_CHUNK + 7]
        payloads = [os.urandom(sizes[i % len(sizes)]) if i % 3 == 0 else b"%d" % i for i in range(3000)]
        sent = []
        infos = []
        for i, p in enumerate(payloads):
            props = None
            if v5:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("k", "v" * (i % 4 * 60))]  # property lengths of one and two bytes
                props.ContentType = "application/octet-stream"
            topic = f"buf/{i % 7}/ü"
            sent.append((topic, p, i % 2))
            infos.append(sender.publish(topic, p, qos=i % 2, properties=props))
        for info in infos:
            info.wait_for_publish(30)
        received = []
        while len(received) < len(payloads):
            received.append(got.get(timeout=30))
        for qos in (0, 1):  # MQTT orders a client's messages of one QoS (the sender's window holds back QoS 1 ones)
            assert [r for r in received if r[2] == qos] == [m for m in sent if m[2] == qos]
        assert got.empty()
    finally:
        sender.loop_stop()
        client.loop_stop()
        client.disconnect()


def test_under_a_flood_it_writes_between_reads(broker: Mosquitto) -> None:  # noqa: F811
    # 20,000 QoS 1 messages wait in a persistent session; the client comes and acknowledges each as it takes it.
    # Its PUBACKs (and keep-alives) go out only when paho's loop writes: a read going on while a packet was held
    # took a whole flood without one write, until the broker dropped the connection for its keep-alive
    address = BrokerAddress("127.0.0.1", broker.port)
    first = connect(address, "flooded", subscriptions=[("flood/#", 1)], clean_session=False, manual_ack=True)
    first.loop_stop()
    first.disconnect()
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    total = 20_000
    try:
        infos = [sender.publish(f"flood/{i % 5}", b"x" * 100, qos=1) for i in range(total)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        sender.loop_stop()
        sender.disconnect()
    taken = [0]
    since_write = [0]
    most = [0]
    done = threading.Event()
    holder: list[mqtt.Client] = []

    def on_message(msg: mqtt.MQTTMessage) -> None:
        taken[0] += 1
        since_write[0] += 1
        most[0] = max(most[0], since_write[0])
        holder[0].ack(msg.mid, msg.qos)
        if taken[0] >= total:
            done.set()

    def counting_writes(client: mqtt.Client) -> None:
        holder.append(client)
        write = client.loop_write

        def loop_write() -> mqtt.MQTTErrorCode:
            since_write[0] = 0
            return write()

        client.loop_write = loop_write  # type: ignore[method-assign]

    client = connect(address, "flooded", on_message=on_message, subscriptions=[("flood/#", 1)],
                     clean_session=False, manual_ack=True, before_start=counting_writes)
    try:
        assert done.wait(60), f"{taken[0]} of {total} messages taken"
        # paho's loop: one read per turn, then a write when anything waits to be sent
        assert most[0] <= 2 * (HELD_PACKETS + 1), f"{most[0]} messages taken without a write between"
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_write_turn_ends_while_others_keep_queuing(broker: Mosquitto) -> None:  # noqa: F811
    # paho's write went on until its queue was empty: a thread queuing as fast as it wrote kept it from reading (a
    # CONNACK lay unread until the keep-alive ran out). A turn writes what was queued when it began. Here every
    # packet written queues another, as such a thread would between two of paho's sends.
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="busy-writer")
    client.connect("127.0.0.1", broker.port)
    # as with an event loop of its own: packets wait in the queue until loop_write, here
    client.on_socket_register_write = lambda *_: None
    try:
        sock = client.socket()
        sends = [0]

        class Requeuing:
            def send(self, data: bytes) -> int:
                sends[0] += 1
                if sends[0] < 10_000:  # without a bound paho's write would never return
                    client.send_packets(packets.pubacks([1]))
                return sock.send(data)

            def __getattr__(self, name: str) -> object:
                return getattr(sock, name)

        for _ in range(5):
            client.send_packets(packets.pubacks([1]))
        client._sock = Requeuing()  # type: ignore[assignment]
        assert client.loop_write() == mqtt.MQTT_ERR_SUCCESS
        assert sends[0] == 5, f"{sends[0]} packets written in one turn, 5 were queued when it began"
        assert client.want_write()  # what the sends queued waits for the next turn
        client.loop_write()
        assert sends[0] == 10
    finally:
        client._sock = sock  # type: ignore[assignment]
        client.disconnect()


def test_reconnecting_while_other_threads_append_to_what_it_sends(broker: Mosquitto) -> None:  # noqa: F811
    # paho empties its queue of outgoing packets when it reconnects and queues the CONNECT; the bridge's writer
    # queues PUBACKs from its own thread meanwhile. Unguarded, one raised "deque mutated during iteration" in paho's
    # network thread, which ended, and those queued before the CONNECT made the broker drop each new connection.
    # Here a thread acknowledges without pause while the broker drops the client five times (another client taking
    # its id), the interpreter switching threads every µs.
    address = BrokerAddress("127.0.0.1", broker.port)
    connects = [0]

    def counting(client: mqtt.Client) -> None:
        on_connect = client.on_connect

        def wrapped(*args: object) -> None:
            connects[0] += 1
            on_connect(*args)

        client.on_connect = wrapped

    client = connect(address, "taken-over", manual_ack=True, before_start=counting)
    stop = threading.Event()

    def acknowledge() -> None:
        while not stop.is_set():
            client.ack(1, 1)

    acker = threading.Thread(target=acknowledge, daemon=True)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    acker.start()
    try:
        for kick in range(5):
            before = connects[0]
            thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="taken-over")
            thief.connect("127.0.0.1", broker.port)
            thief.loop(1)
            thief.disconnect()
            deadline = time.monotonic() + 30
            while connects[0] == before and time.monotonic() < deadline and _looping(client):
                time.sleep(0.05)
            assert _looping(client), f"paho's network thread ended at kick {kick}"
            assert connects[0] > before, f"not connected again after kick {kick}"
    finally:
        stop.set()
        acker.join(10)
        sys.setswitchinterval(switch)
        client.loop_stop()
        client.disconnect()


def _looping(client: mqtt.Client) -> bool:
    thread = client._thread  # paho's network thread (None once it has ended)
    return thread is not None and thread.is_alive()


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize("qos", [0, 1])
def test_a_message_passed_over_is_read_whole_from_the_buffer_or_left_to_paho(v5: bool, qos: int) -> None:
    # `_passed_over` reads a PUBLISH from the client's buffer by itself: its remaining length over one to three bytes,
    # the packet identifier at QoS 1, MQTT 5's properties (one of them here); anything cut short or another payload is
    # paho's
    from sensorthings.mqtt import packets
    from sensorthings.mqtt.client import _passed_over

    echo = b'{"@iot.selfLink"'
    topic = packets.text("v1.1/Datastreams(7)/Observations")
    for size in (0, 20, 80, 127, 128, 16_383, 16_384, 70_000):
        payload = echo + b"x" * size
        packet = packets.publish(topic, payload, qos, 4242, v5)
        if v5:  # a Topic Alias among the properties: a broker may add properties
            at = packet.index(topic)  # the topic with its length
            head_end = at + len(topic) + (2 if qos else 0)
            rest = packet[at:head_end] + b"\x03\x23\x00\x01" + packet[head_end + 1:]
            packet = bytes([packet[0]]) + packets.remaining_length(len(rest)) + rest
        before, after = b"\x40\x02\x00\x01", b"\xd0\x00"  # a PUBACK before, a PINGRESP after
        buf = before + packet + after
        whole = (len(before) + len(packet), 4242 if qos else 0)
        assert _passed_over(buf, len(before), len(buf), qos, v5, echo) == whole
        for cut in (1, 2, len(packet) // 2, len(packet) - 1):
            assert _passed_over(buf, len(before), len(before) + cut, qos, v5, echo) is None, (size, cut)
        assert _passed_over(buf, len(before), len(buf), qos, v5, b'{"result"') is None


@pytest.mark.parametrize("v5", [False, True])
def test_messages_are_taken_from_the_buffer_in_runs_for_the_handler(v5: bool) -> None:
    # `_take_run` hands whole QoS 0 and 1 PUBLISH packets to the handler straight from what was read: topics, payloads
    # (0 to 70,000 bytes: remaining lengths of one to three bytes), packet identifiers, the dup flag, MQTT 5's
    # properties skipped; echoes passed over among them; at most `budget` handled; QoS 2 and a packet cut short are
    # left to paho, and the read's QoS 1 acknowledgements wait for its end
    from sensorthings.mqtt import packets

    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="runs",
                            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    got: list[tuple[str, bytes, int, int, bool]] = []
    client.receive = lambda m: got.append((m.topic, bytes(m.payload), m.qos, m.mid, m.dup))
    client.passes_over = b'{"@iot.selfLink"'
    client._deferred = []
    sent, buf = [], b""
    for k, size in enumerate((0, 20, 127, 128, 16_383, 16_384, 70_000, 5)):
        topic, payload, qos, dup = f"bench/{k}/count", bytes([65 + k]) * size, k % 2, k == 3
        packet = packets.publish(packets.text(topic), payload, qos, 100 + k if qos else 0, v5, dup)
        if v5 and k == 4:  # a Topic Alias among the properties: a broker may add properties
            at = packet.index(packets.text(topic))
            head_end = at + len(packets.text(topic)) + (2 if qos else 0)
            rest = packet[at:head_end] + b"\x03\x23\x00\x01" + packet[head_end + 1:]
            packet = bytes([packet[0]]) + packets.remaining_length(len(rest)) + rest
        buf += packet
        sent.append((topic, payload, qos, 100 + k if qos else 0, dup))
        if k == 2:  # an echo, passed over unhandled
            buf += packets.publish(packets.text("v1.1/Observations"), b'{"@iot.selfLink": "x"}', 1, 7, v5)
    qos2 = packets.publish(packets.text("q/2"), b"two", 2, 9, v5)
    sock = BufferedSocket(None)  # type: ignore[arg-type]
    sock._buf = buf + qos2
    assert client._take_run(sock, 3) == 3
    assert got == sent[:3]
    assert client._deferred == [101, 7] and client.passed_over == 1
    assert client._take_run(sock, 100) == len(sent) - 3
    assert got == sent and client._deferred == [101, 7, 103, 105, 107]
    assert sock.held()[1] == len(buf), "the QoS 2 message is paho's"
    cut = packets.publish(packets.text("t"), b"x" * 300, 1, 11, v5)
    sock._buf, sock._pos = cut[:-1], 0
    assert client._take_run(sock, 100) == 0 and sock.held()[1] == 0, "a packet cut short is paho's"
