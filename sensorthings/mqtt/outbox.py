"""Publishing many messages through one client in few writes: the notifications of a busy platform.

paho sends each publish as a packet of its own: a message object and a condition for the caller, a byte down its
socket pair to wake its loop, a `send` system call in its thread. Each of those lets the interpreter lock go and
waits to take it back behind the process's busy threads (the bridge's receiving thread and writer): the bridge's
notifications, three per stored message, went out at ~3,000/s, and at 1,000 messages/s they queued (publish to
notification p50 65 ms, p99 282 ms). Here the PUBLISH packets of a batch are built as bytes and handed to paho as
one write; QoS 1 acknowledgements are counted here, within the client's in-flight window (and the broker's
Receive Maximum), and what is unacknowledged when the connection drops is sent again, marked DUP, on the next.
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

from sensorthings.mqtt import packets
from sensorthings.mqtt.client import ROOM_WAIT_S, BufferedClient, publish

# QoS 1 publishes unacknowledged at most (fewer when the broker's Receive Maximum says so). A bulk's notifications wait
# for room while the broker works through what is in flight: a bulk of 50,000 (150,000 notifications) quiet after
# 1.08-1.17 s with 10,000 against 1.37-1.44 with 1,000 (alternating), the bridge meanwhile 19,519-19,837 against
# 20,525 Observations/s (2026-12-07); what stays unacknowledged when the connection drops is held to send again
WINDOW = 10_000


class Outbox:
    """Publishes batches of (topic, payload) through a client of `sensorthings.mqtt.client.connect` at one QoS."""

    def __init__(self, client: BufferedClient, qos: int) -> None:
        self.client = client
        self.qos = qos
        self.refused = 0  # QoS 1 publishes the broker acknowledged with a failure (MQTT 5: not authorized, say)
        self._v5 = client.protocol == mqtt.MQTTv5
        self._unacked: dict[int, bytes] = {}  # packet identifier → the PUBLISH, sent again after a reconnect
        self._room = threading.Condition()
        self._need = 0  # free places a waiting sender wants before it is woken (0: nobody waits)
        self._written: mqtt.MQTTMessageInfo | None = None  # QoS 0: the last write queued
        client.outbox = self

    def send(self, messages: list[tuple[str, bytes]], wait: float = ROOM_WAIT_S, mids: list[int] | None = None) -> int:
        """Publish `messages` in order; how many were taken. The rest are dropped: the client was not connected, or
        (QoS 1 and 2) the broker acknowledged nothing for `wait` seconds. `mids`: the QoS 1 packet identifiers
        given are added to it (`unacknowledged` tells which the broker has not acknowledged yet)."""
        if self.qos == 2:  # exactly once takes paho's four-packet handshake: one by one
            for i, (topic, payload) in enumerate(messages):
                if not publish(self.client, topic, payload, 2, wait):
                    return i
            return len(messages)
        if self.qos == 0:
            return self._send_unacknowledged(messages)
        sent = 0
        while sent < len(messages):
            with self._room:
                room = self._wait_for_room(len(messages) - sent, time.monotonic() + wait)
                if not room:
                    return sent
                built = []
                for topic, payload in messages[sent:sent + room]:
                    mid = self._identifier()
                    packet = packets.publish(packets.text(topic), payload, 1, mid, self._v5)
                    self._unacked[mid] = packet
                    built.append(packet)
                    if mids is not None:
                        mids.append(mid)
            # not connected: the unacknowledged go out after the reconnect (`resend`)
            self.client.send_packets(b"".join(built))
            sent += len(built)
        return sent

    def acknowledged(self, acks: list[tuple[int, bool]]) -> int:
        """Called by the client's thread with PUBACKs read, (identifier, refused): how many were for this outbox's
        publishes."""
        ours = 0
        with self._room:
            for mid, refused in acks:
                if self._unacked.pop(mid, None) is not None:
                    ours += 1
                    self.refused += refused
            if ours and self._need and self._free() >= self._need:
                self._need = 0
                self._room.notify_all()
        return ours

    def unacknowledged(self, mids: list[int]) -> list[int]:
        """Those of `mids` the broker has not acknowledged yet (an identifier given again since counts as not)."""
        with self._room:
            return [m for m in mids if m in self._unacked]

    def owns(self, mid: int) -> bool:
        """Whether `mid` is one of this outbox's unacknowledged publishes (only the client's thread removes them)."""
        return mid in self._unacked

    def resend(self) -> None:
        """Send the unacknowledged publishes again, marked DUP (the client has just connected)."""
        with self._room:
            for mid, packet in self._unacked.items():
                self._unacked[mid] = packets.set_dup(packet)
            blob = b"".join(self._unacked.values())
        if blob:
            self.client.send_packets(blob)

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent and not yet acknowledged."""
        return len(self._unacked)

    def _window(self) -> int:
        return min(WINDOW, self.client.receive_maximum)

    def _free(self) -> int:
        return self._window() - len(self._unacked)

    def _wait_for_room(self, wanted: int, deadline: float) -> int:
        # woken when half the window is free (or all that is wanted fits): a PUBACK at a time would make a write each
        need = min(wanted, max(1, self._window() // 2))
        while self._free() < need:
            left = deadline - time.monotonic()
            if left <= 0 or (not self.client.is_connected() and self._free() <= 0):
                self._need = 0
                return max(0, min(wanted, self._free()))
            self._need = need
            self._room.wait(min(left, 0.1))
        self._need = 0
        return min(wanted, self._free())

    def _identifier(self) -> int:
        # paho's own counter: its SUBSCRIBE and UNSUBSCRIBE packets take identifiers from it too
        while True:
            mid = self.client._mid_generate()
            if mid not in self._unacked:
                return mid

    def _send_unacknowledged(self, messages: list[tuple[str, bytes]]) -> int:
        # at most two writes queued in paho: the one before must have gone out first, at the socket's pace (a busy
        # broker reads slowly: the bridge's connection also carries the device messages and their PUBACKs). No
        # acknowledgement tells of a broker that takes nothing: the wait ends when the connection does.
        before = self._written
        while before is not None and not _written(before):
            if not self.client.is_connected():
                return 0
            try:
                before.wait_for_publish(0.1)
            except RuntimeError:  # the connection was lost meanwhile: paho marked it so
                break
        written = mqtt.MQTTMessageInfo(0)
        blob = b"".join(packets.publish(packets.text(t), p, 0, 0, self._v5) for t, p in messages)
        if not self.client.send_packets(blob, written):
            return 0
        self._written = written
        return len(messages)


def _written(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether paho is done with a QoS 0 write: written, or given up with its connection."""
    try:
        return info.is_published()
    except RuntimeError:  # paho's way of saying the connection was lost before it went out
        return True
