"""Connecting the platform to a broker (embedded or external) with paho-mqtt, reconnecting by itself."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from sensorthings.mqtt import packets

if TYPE_CHECKING:
    from sensorthings.mqtt.outbox import Outbox

log = logging.getLogger("udp.mqtt")


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens: `mqtt://host:port` (or `mqtts://`, `ws://`)."""

    host: str
    port: int
    transport: str = "tcp"
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker URL; ValueError with the reason when it is not one."""
        parts = urlsplit(url)
        schemes = {"mqtt": ("tcp", False, 1883), "tcp": ("tcp", False, 1883), "mqtts": ("tcp", True, 8883),
                   "ws": ("websockets", False, 80), "wss": ("websockets", True, 443)}
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"not a broker URL: {url!r} (use mqtt://host:port)")
        transport, tls, default_port = schemes[parts.scheme]
        return cls(parts.hostname, parts.port or default_port, transport, tls, parts.username, parts.password)


SESSION_EXPIRY = 7 * 24 * 3600  # seconds an MQTT 5 broker keeps a persistent session of a client that is gone
# QoS 1 and 2 messages a client holds (in flight and waiting to be), per in-flight one. Unbounded, the bridge's
# notifications (three per message it takes) piled up in paho to its 65,535 message ids, each a dozen objects the
# collector walks: full collections of 100-250 ms with the interpreter lock held, and every notification past the
# last id dropped without a word. Bounded (and `publish` waiting for room), the same burst: device messages stored
# end to end 5,267-7,161/s instead of 5,031-5,957, none of the notifications lost.
QUEUED_PER_INFLIGHT = 4


RECV_CHUNK = 65536  # bytes taken from the socket at once


class BufferedSocket:
    """A TCP socket whose small reads come out of one large one.

    paho reads a packet's header a byte at a time, then its body: three receives per message, each a system call
    that lets the interpreter lock go and waits to take it back behind the client's busy threads (the bridge's
    writer, its notifications): a fifth of the bridge's receiving thread's samples were there (py-spy), none with
    this; standard-topic creates through Mosquitto 8,424 against 8,092/s (means of three alternating runs: within
    the noise). paho asks a socket for `pending()` bytes (as an SSL socket has) before it waits in select."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: from what was read before, else from one read of up to RECV_CHUNK."""
        if self._pos >= len(self._buf):
            data = self._sock.recv(RECV_CHUNK)  # BlockingIOError when nothing came: paho waits for more
            if len(data) <= size:
                self._buf, self._pos = b"", 0
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._buf))
        return self._buf[start:self._pos]

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken."""
        return len(self._buf) - self._pos

    def held(self) -> tuple[bytes, int]:
        """What was read and where the next byte to take is (for `take`)."""
        return self._buf, self._pos

    def take(self, position: int) -> None:
        """Mark everything before `position` of `held()` taken."""
        self._pos = position

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class WriteQueue(deque):
    """paho's queue of packets to send, handing its writer at most `turn` packets before it lets it go.

    paho's write goes on until the queue is empty: while other threads queue as fast as it writes (a thread
    acknowledging without pause did, in tests/test_mqtt_client.py) it never returned to read, and a CONNACK lay
    unread until the test gave up. A turn now writes what was queued when it began; the next read comes first."""

    turn = 0

    def popleft(self) -> Any:
        """The next packet to write; IndexError (paho's "nothing left") once this turn's are written."""
        if self.turn <= 0:
            raise IndexError("this write turn is done")
        self.turn -= 1
        return super().popleft()


class Incoming(Protocol):
    """A received message as the platform's handlers read it: paho's MQTTMessage (QoS 2) or a `Received`."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool


@dataclass(slots=True)
class Received:
    """A QoS 0 or 1 PUBLISH read by `BufferedClient` itself: its properties (MQTT 5) skipped, none of the platform's
    handlers reads any."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool


def _received(command: int, buf: bytes, topic: int, topic_end: int, mid: int, payload: int, stop: int) -> Received:
    """The PUBLISH of fixed-header byte `command` in `buf`, laid out as `_layout` tells: its topic from `topic` to
    `topic_end`, its packet identifier, its payload from `payload` to `stop`."""
    return Received(buf[topic:topic_end].decode("utf-8", "replace"), bytes(buf[payload:stop]), (command >> 1) & 3, mid,
                    bool(command & 0x08))


def _layout(buf: bytes, at: int, stop: int, qos: int, v5: bool) -> tuple[int, int, int]:
    """A PUBLISH's variable header at `at` of `buf`, the packet ending at `stop`: where its topic (from `at` + 2)
    ends, its packet identifier (0 at QoS 0) and where its payload begins, each no further than `stop` (a packet cut
    short has an empty payload)."""
    # read by index, not through slices: this is on the path of every message received
    if at + 2 <= stop:
        topic_end = payload = min(at + 2 + (buf[at] << 8 | buf[at + 1]), stop)
    else:
        topic_end = payload = stop
    mid = 0
    if qos:
        mid = buf[payload] << 8 | buf[payload + 1] if payload + 2 <= stop else int.from_bytes(buf[payload:stop], "big")
        payload += 2
    if v5:  # the properties' length, then the properties
        size, payload = _variable(buf, payload, stop) or (0, stop)
        payload += size
    return topic_end, mid, min(payload, stop)


def _variable(buf: bytes, at: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer (its lengths) at `at` of `buf`: its value and the position after it; None when
    `end` cuts it short or it runs past four bytes."""
    value = shift = 0
    while at < end and shift <= 21:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _publish_at(buf: bytes, pos: int, end: int, qos: int, v5: bool) -> tuple[int, int, int, int, int] | None:
    """The PUBLISH at `pos` of `buf` when it is whole there: where it ends, where its topic begins and ends, its packet
    identifier (0 at QoS 0) and where its payload begins; None when `end` cuts it short."""
    remaining = _variable(buf, pos + 1, end)
    if remaining is None:
        return None
    length, at = remaining
    stop = at + length
    if stop > end:
        return None
    topic_end, mid, payload = _layout(buf, at, stop, qos, v5)
    return stop, at + 2, topic_end, mid, payload


def _passed_over(buf: bytes, pos: int, end: int, qos: int, v5: bool, echo: bytes) -> tuple[int, int] | None:
    """The end and packet identifier of the PUBLISH at `pos` of `buf` when it is whole there and its payload starts
    with `echo`; None otherwise (paho reads it)."""
    whole = _publish_at(buf, pos, end, qos, v5)
    if whole is None:
        return None
    stop, _topic, _topic_end, mid, payload = whole
    return (stop, mid) if buf.startswith(echo, payload, stop) else None


# messages `BufferedClient.loop_read` hands on from its buffer before paho's loop writes again (their acknowledgements)
HELD_PACKETS = 256


class BufferedClient(mqtt.Client):
    """paho's client, its plain TCP socket read in large pieces (`BufferedSocket`), reconnecting while other threads
    send (`reconnect`), sending packets built elsewhere in one write (`send_packets`, `ack_many`, an `Outbox`)."""

    outbox: Outbox | None = None  # told of the acknowledgements of its publishes, and when to send them again
    receive_maximum = 65535  # MQTT 5: unacknowledged QoS 1 publishes the broker takes (its CONNACK says)
    receive: Callable[[Incoming], None] | None = None  # the handler of every message (`connect`'s on_message)
    # QoS 0 and 1 messages whose payload starts so are acknowledged and never handled (`_take_run`); None: none
    passes_over: bytes | None = None
    passed_over = 0  # how many
    # called at the end of each `loop_read`, in its thread, before the read's acknowledgements go out: a handler that
    # gathers what one read brought (the creates, into one submission) hands it on there
    after_read: Callable[[], None] | None = None
    _reading: int | None = None  # the thread in `loop_read`: its QoS 1 acknowledgements wait for the read's end
    _deferred: list[int]  # set by `loop_read`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._out_packet = WriteQueue()

    def ack(self, mid: int, qos: int) -> mqtt.MQTTErrorCode:
        """paho's; a QoS 1 acknowledgement made while handling a read (a message passed over at once) goes out with
        the others of that read, in one write."""
        if qos == 1 and self.reading():
            self._deferred.append(mid)
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super().ack(mid, qos)

    def send_packets(self, blob: bytes, written: mqtt.MQTTMessageInfo | None = None) -> bool:
        """Queue packets built by hand (sensorthings.mqtt.packets) as one write; False when not connected.
        `written`: marked published once they are written, as paho marks a QoS 0 publish."""
        if self._sock is None:
            return False
        # paho acts on a written packet by its command: a QoS 0 PUBLISH marks its `info`; 0 is no packet of its own
        self._packet_queue(packets.PUBLISH if written is not None else 0, blob, 0, 0, written)
        return True

    def ack_many(self, mids: list[int]) -> bool:
        """Acknowledge many QoS 1 messages (manual_ack) in one write; False when not connected (the broker sends
        them again to the resumed session)."""
        return self.send_packets(packets.pubacks(mids)) if mids else True

    def reconnect(self) -> mqtt.MQTTErrorCode:
        """paho's, while no other thread queues a packet. paho empties its queue of packets to send and queues the
        CONNECT first; meanwhile the bridge's writer queues PUBACKs and notifiers PUBLISHes from their threads. One
        queued while paho walked the queue raised in paho's network thread and ended it (the bridge took nothing more
        until restarted); one queued before the CONNECT went out before it, and the broker dropped the connection,
        again while they kept coming. paho holds this lock, an RLock, wherever it queues a publish; here it is held
        through the connection attempt too (at most paho's connect timeout, 5 s), while acknowledging would be in
        vain: the broker sends an unacknowledged message again to the resumed session."""
        with self._out_message_mutex:
            return super().reconnect()

    # paho's own methods (2.2, pinned in constraints.txt; tests/test_mqtt_client.py sees them at work)
    def _packet_queue(self, *args: Any, **kwargs: Any) -> mqtt.MQTTErrorCode:
        with self._out_message_mutex:
            return super()._packet_queue(*args, **kwargs)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        queue = self._out_packet
        queue.turn = len(queue)  # a packet put back (a partial write) is popped again within the turn: it ends there
        return super()._packet_write()

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        # paho's makes a message object, its properties object and a timestamp, logs, and looks for per-topic
        # callbacks: the larger part of the bridge's receiving thread. QoS 2 keeps paho's handshake.
        command = self._in_packet["command"]
        handler = self.receive
        if handler is None or (command >> 1) & 3 == 2:
            return super()._handle_publish()
        body = self._in_packet["packet"]
        topic_end, mid, payload = _layout(body, 0, len(body), (command >> 1) & 3, self._protocol == mqtt.MQTTv5)
        self._hand(handler, _received(command, body, 2, topic_end, mid, payload, len(body)))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _hand(self, handler: Callable[[Incoming], None], message: Received) -> None:
        """A QoS 0 or 1 message to the handler, read by paho or taken from the buffer (`_take_run`); a QoS 1 one is
        acknowledged with the read's others."""
        try:
            handler(message)
        except Exception:  # a handler's fault must not end the client's thread (paho logs it and goes on, too)
            log.exception("handling a message on %s failed", message.topic)
        if message.qos == 1 and not self._manual_ack:  # paho's own `ack` sends nothing without manual_ack
            self._deferred.append(message.mid)

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:
        outbox = self.outbox
        if cmd == "PUBACK" and outbox is not None:
            body = self._in_packet["packet"]
            # MQTT 5: a reason code from 0x80 on is a failure; none (two bytes) is success
            if outbox.acknowledged([(int.from_bytes(body[:2], "big"), len(body) > 2 and body[2] >= 0x80)]):
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _take_run(self, sock: BufferedSocket, budget: int) -> int:
        # Runs of packets taken from the buffer at once, where paho reads each a byte at a time and handles it with a
        # packet dictionary and a lock:
        # - the PUBACKs of an outbox's bulk, back-to-back: 150,000 for a bulk of 50,000 Observations (most of paho's
        #   thread's time, the outbox waiting for room meanwhile);
        # - the messages it `passes_over`: on an external broker every notification another process publishes comes
        #   back to the creates' subscriber (their topics are the creates' topics; No Local spares only its own
        #   connection's), three for each Observation an HTTP worker writes;
        # - up to `budget` QoS 0 and 1 messages for the handler (`receive`): paho's reading of each was a third of the
        #   bridge's receiving thread.
        # paho reads from the first other packet on. Returns how many messages went to the handler.
        outbox, echo, handler = self.outbox, self.passes_over, self.receive
        if (outbox is None and echo is None and handler is None) or self._in_packet["command"] != 0:
            return 0  # paho is within a packet of its own
        buf, start = sock.held()
        pos, end, acks, passed, skipped, handled = start, len(buf), [], [], 0, 0
        v5 = self._protocol == mqtt.MQTTv5
        while pos + 4 <= end:
            command = buf[pos]
            if command == packets.PUBACK and outbox is not None:
                length = buf[pos + 1]  # 2 (3.1.1, MQTT 5 success), 3 (a reason), more (properties); one byte under 128
                if not 2 <= length < 128 or pos + 2 + length > end:
                    break
                mid = buf[pos + 2] << 8 | buf[pos + 3]
                if not outbox.owns(mid):  # one of paho's own publishes (QoS 2 goes through paho; announcements)
                    break
                # MQTT 5: a reason code from 0x80 on is a failure; none (two bytes) is success
                acks.append((mid, length > 2 and buf[pos + 4] >= 0x80))
                pos += 2 + length
            elif command & 0xF0 == packets.PUBLISH and (qos := command >> 1 & 3) < 2:
                whole = _publish_at(buf, pos, end, qos, v5)
                if whole is None:
                    break
                stop, topic, topic_end, mid, payload = whole
                if echo is not None and buf.startswith(echo, payload, stop):
                    skipped += 1
                    if qos:
                        passed.append(mid)
                elif handler is not None and handled < budget:
                    handled += 1
                    sock.take(stop)  # the handler may read the client's state: this packet is behind it
                    self._hand(handler, _received(command, buf, topic, topic_end, mid, payload, stop))
                else:
                    break
                pos = stop
            else:
                break
        if pos == start:
            return 0
        sock.take(pos)  # paho's keep-alive reckons from bytes received: it noted these when the buffer was read
        if acks:
            outbox.acknowledged(acks)  # type: ignore[union-attr]
        if passed:
            self._deferred.extend(passed)  # acknowledged with the read's others, in one write (`loop_read`)
        self.passed_over += skipped
        return handled

    def _create_socket(self):  # type: ignore[no-untyped-def]
        sock = super()._create_socket()
        if type(sock) is socket.socket:  # TLS and WebSocket transports wrap it: they read their own records
            return BufferedSocket(sock)
        return sock

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Process what arrived; on, while a packet read before is held, up to HELD_PACKETS (paho reads one when
        nothing waits to be acknowledged, then waits in select again: a select per message). Bounded, so that paho's
        loop writes between: under a flood a packet is always held (each read ends inside one), and a loop going on
        while one was sent nothing, no PUBACK and no PINGREQ, until the broker dropped the connection for its
        keep-alive. The QoS 1 acknowledgements its handlers made meanwhile go out together at the end."""
        self._reading, self._deferred = threading.get_ident(), []
        try:
            rc = super().loop_read(max_packets)
            sock = self.socket()
            held = HELD_PACKETS
            while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, BufferedSocket) and sock.pending() \
                    and self.socket() is sock and held > 0:
                held -= self._take_run(sock, held)
                if not sock.pending() or held <= 0:
                    break
                rc = super().loop_read(max_packets)
                held -= 1
        finally:
            self._reading = None
            if self.after_read is not None:
                try:
                    self.after_read()
                except Exception:  # a handler's fault must not end the client's thread, as in `_handle_publish`
                    log.exception("handing on what a read brought failed")
            if self._deferred:
                self.ack_many(self._deferred)
        return rc

    def reading(self) -> bool:
        """True in the thread of a `loop_read` under way: its `after_read` comes once the read ends."""
        return self._reading == threading.get_ident()


def connect(address: BrokerAddress, client_id: str, *, on_message: Callable[[Incoming], None] | None = None,
            subscriptions: list[tuple[str, int]] | None = None, clean_session: bool = True,
            manual_ack: bool = False, inflight: int = 100, wait: float = 10, no_local: bool = False,
            shared: str | None = None, before_start: Callable[[BufferedClient], None] | None = None) -> BufferedClient:
    """A started client that (re)subscribes on every (re)connect; waits for the first connection.

    `inflight`: QoS 1 and 2 messages it sends before their acknowledgements come (paho walks all of them on every
    acknowledgement: at 1,000 the bridge's notifications took 56 s to drain after a sustained burst, at 100 22 s).
    `no_local`: MQTT 5, its subscriptions with No Local, so that the broker never sends the client what it
    published itself (a platform that takes creates and publishes notifications on the same topics).
    `shared`: MQTT 5, its subscriptions in that shared subscription group (`$share/{group}/…`), where the broker
    hands each message to one of the group's sessions (No Local does not apply to them).
    `before_start`: called with the client before it connects (a persistent session's messages may come at once),
    e.g. to attach what publishes through it."""
    if shared is not None:
        subscriptions = [(f"$share/{shared}/{topic}", qos) for topic, qos in subscriptions or []]
    v5 = no_local or shared is not None
    no_local = no_local and shared is None
    # MQTT 5 has no clean session flag: a session's persistence is said on connecting
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                            clean_session=None if v5 else clean_session,
                            transport=address.transport, manual_ack=manual_ack)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    # a publish past it is refused at once (MQTT_ERR_QUEUE_SIZE): `publish` below waits for room
    client.max_queued_messages_set(QUEUED_PER_INFLIGHT * inflight)
    client.max_inflight_messages_set(inflight)
    connected = threading.Event()

    def on_connect(c: BufferedClient, _u: object, _f: object, reason: mqtt.ReasonCode, props: object) -> None:
        if reason.is_failure:
            log.warning("broker %s:%s refused %s: %s", address.host, address.port, client_id, reason)
            return
        c.receive_maximum = getattr(props, "ReceiveMaximum", 65535)
        if c.outbox is not None:
            c.outbox.resend()
        for topic, qos in subscriptions or []:
            if no_local:
                c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, noLocal=True))
            else:
                c.subscribe(topic, qos)
        connected.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.receive = on_message
        client.on_message = lambda _c, _u, msg: on_message(msg)  # QoS 2: paho's message
    if before_start is not None:
        before_start(client)
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        if not clean_session:
            properties.SessionExpiryInterval = SESSION_EXPIRY
        client.connect_async(address.host, address.port, keepalive=30, clean_start=clean_session,
                             properties=properties)
    else:
        client.connect_async(address.host, address.port, keepalive=30)
    client.loop_start()
    if not connected.wait(wait):
        log.warning("broker %s:%s not reachable yet; %s keeps trying", address.host, address.port, client_id)
    return client


ROOM_WAIT_S = 5.0  # how long a publish waits for the client to have room while the broker is connected


def publish(client: mqtt.Client, topic: str, payload: bytes, qos: int, wait: float = ROOM_WAIT_S) -> bool:
    """Publish through a client of `connect`, waiting (at most `wait` s, while it is connected) for the broker's
    acknowledgements to make room when it holds all it may; False when the message was not taken (then dropped)."""
    info = client.publish(topic, payload, qos=qos)
    deadline = time.monotonic() + wait
    while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE and client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.001)
        info = client.publish(topic, payload, qos=qos)
    return info.rc != mqtt.MQTT_ERR_QUEUE_SIZE
