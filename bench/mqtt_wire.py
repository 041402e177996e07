"""A QoS 1 publisher speaking the MQTT 3.1.1 wire itself: load for the MQTT benches that costs little CPU.

paho spends ~50 µs of Python on each QoS 1 publish and its acknowledgement: two publisher processes took ~0.9 of
the bench machine's 2 cores to offer 20,000 messages/s, CPU the platform they measured then lacked (devices are
other machines). This one builds each PUBLISH from a prepared topic and counts the PUBACKs in what it reads,
a few µs a message, as wrk is to HTTP clients. It publishes only: a broker sends it nothing but CONNACK, PUBACK
and PINGRESP, and anything else ends it with an error.
"""

from __future__ import annotations

import select
import socket
import time

from sensorthings.mqtt.packets import PUBACK, publish, remaining_length, text

_CONNACK, _PINGRESP = 0x20, 0xD0
KEEPALIVE_S = 60


class WirePublisher:
    """One MQTT 3.1.1 connection publishing QoS 1 messages; `acked` counts the PUBACKs read so far."""

    def __init__(self, host: str, port: int, client_id: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = text("MQTT") + bytes([4, 0x02]) + KEEPALIVE_S.to_bytes(2, "big") + text(client_id)
        self.sock.sendall(bytes([0x10]) + remaining_length(len(body)) + body)
        ack = b""
        while len(ack) < 4:
            got = self.sock.recv(4 - len(ack))
            if not got:
                raise ConnectionError("the broker closed the connection before its CONNACK")
            ack += got
        if ack[0] != _CONNACK or ack[3] != 0:
            raise ConnectionError(f"the broker refused the connection: CONNACK {ack.hex()}")
        self.sock.settimeout(None)
        self.acked = 0
        self.failed = 0  # publishes refused before they were sent: none here (paho's client may refuse some)
        self._next_id = 0
        self._out: list[bytes] = []
        self._in = b""
        self._pinged = time.monotonic()
        self._heads: dict[str, bytes] = {}

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 1 PUBLISH (sent by `flush`)."""
        head = self._heads.get(topic)
        if head is None:
            head = self._heads[topic] = text(topic)
        self._next_id = self._next_id % 65535 + 1  # 1..65535: ids of at most a window in flight never collide
        self._out.append(publish(head, payload, 1, self._next_id))

    def flush(self) -> None:
        """Send what `publish` queued; a PINGREQ too when the keep-alive is due."""
        if time.monotonic() - self._pinged > KEEPALIVE_S / 2:
            self._out.append(b"\xc0\x00")
            self._pinged = time.monotonic()
        if self._out:
            self.sock.sendall(b"".join(self._out))
            self._out.clear()

    def read(self, timeout: float = 0.0) -> int:
        """Read what has arrived (waiting up to `timeout` s for something) and count its PUBACKs: how many."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return 0
        got = self.sock.recv(65536)
        if not got:
            raise ConnectionError("the broker closed the connection")
        data = self._in + got
        acks = i = 0
        end = len(data)
        while i + 2 <= end:
            kind, size = data[i], data[i + 1]
            if i + 2 + size > end:
                break
            if kind == PUBACK:
                acks += 1
            elif kind != _PINGRESP:
                raise ConnectionError(f"unexpected MQTT packet 0x{kind:02x} from the broker")
            i += 2 + size
        self._in = data[i:]
        self.acked += acks
        return acks

    def close(self) -> None:
        """DISCONNECT and close."""
        try:
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()
