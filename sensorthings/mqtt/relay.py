"""Notifications handed over a Unix socket to the process that takes the creates, which publishes them for the sender.

On an external broker one process takes the SensorThings creates (`v1.1/…/Observations`), through an MQTT 5
connection whose subscriptions are No Local, and the notifications share the creates' topics: what that connection
publishes the broker never sends back to it, but what the HTTP workers publish over connections of their own it
does, each at QoS 1, to be acknowledged and passed over. That was half of the broker's packets after a bulk write
(Mosquitto, single-threaded, a whole core; the bulk's 150,000 notifications quiet after 2.8 s, 1.5 s without the
echo). So the workers hand their notifications, built, to that process (`RelayClient`), which publishes them through
its connection (`RelayServer`) and answers for each batch once the broker has acknowledged it; a worker counts what
is unanswered as in flight, so its `/health` says when everything is out. Without the other process (not started
yet, gone) a worker publishes over its own connection again, and tries the socket again every `RETRY_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable

log = logging.getLogger("udp.mqtt.relay")

FRAME = struct.Struct("!I")  # a batch's length in bytes, before it
ITEM = struct.Struct("!HI")  # a message's topic and payload lengths, before them
REPLY = struct.Struct("!II")  # for each batch, in order: messages acknowledged by the broker, messages not taken
RETRY_S = 5.0  # a worker without the socket tries it again after this long
SEND_S = 10.0  # a batch the other process does not read for this long is given up, with its connection
ACK_POLL_S = 0.005
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid

# (topic, payload) list → (taken, the QoS 1 packet identifiers to wait for)
Publish = Callable[[list[tuple[str, bytes]]], tuple[int, list[int]]]
# packet identifiers → those still unacknowledged
Unacknowledged = Callable[[list[int]], list[int]]


def encode(messages: list[tuple[str, bytes]]) -> bytes:
    """A batch as one frame."""
    parts = []
    for topic, payload in messages:
        t = topic.encode()
        parts += (ITEM.pack(len(t), len(payload)), t, payload)
    body = b"".join(parts)
    return FRAME.pack(len(body)) + body


def decode(body: bytes) -> list[tuple[str, bytes]]:
    """A frame's body (without its length) as the batch it was."""
    out = []
    at, end = 0, len(body)
    while at < end:
        tlen, plen = ITEM.unpack_from(body, at)
        at += ITEM.size
        topic = body[at:at + tlen].decode()
        at += tlen
        out.append((topic, body[at:at + plen]))
        at += plen
    return out


def _address(path: str) -> str:
    """A socket address from `path`: `@name` is Linux's abstract namespace (no file to leave behind when a process is
    killed, and none an environment variable could not carry), anything else a file."""
    return "\0" + path[1:] if path.startswith("@") else path


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        try:
            chunk = sock.recv(min(n, 1 << 20))
        except TimeoutError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class RelayServer:
    """Takes batches on a Unix socket at `path` and publishes them through `publish`, answering for each once
    `unacknowledged` says the broker has acknowledged all of it."""

    def __init__(self, path: str, publish: Publish, unacknowledged: Unacknowledged) -> None:
        self.path = path
        self.publish = publish
        self.unacknowledged = unacknowledged
        self.relayed = 0
        self._file = not path.startswith("@")
        if self._file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by a process that died
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(_address(path))
        if self._file:
            os.chmod(path, 0o600)
        self.sock.listen(16)
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, name="mqtt-relay-accept", daemon=True).start()

    def close(self) -> None:
        """Stop taking batches: the workers publish over their own connections again. Those taken are answered for
        without waiting for the broker any longer (they are this process's to publish, and to send again after a
        reconnect)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # the batch being read is the last: then its answers, then closed

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            _, uid, _ = _CREDENTIALS.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
            if uid != os.getuid():  # what comes here is published as the platform's: its own user's processes only
                log.warning("a notifications relay connection of user %d refused", uid)
                conn.close()
                continue
            self._conns.append(conn)
            answers: queue.SimpleQueue[tuple[int, int, list[int]] | None] = queue.SimpleQueue()
            threading.Thread(target=self._take, args=(conn, answers), name="mqtt-relay-take", daemon=True).start()
            threading.Thread(target=self._answer, args=(conn, answers), name="mqtt-relay-answer",
                             daemon=True).start()

    def _take(self, conn: socket.socket, answers: queue.SimpleQueue[tuple[int, int, list[int]] | None]) -> None:
        try:
            while (head := _read_exactly(conn, FRAME.size)) is not None:
                body = _read_exactly(conn, FRAME.unpack(head)[0])
                if body is None:
                    break
                messages = decode(body)
                taken, mids = self.publish(messages)
                self.relayed += taken
                answers.put((taken, len(messages) - taken, mids))
        except (OSError, struct.error, UnicodeDecodeError) as exc:
            log.warning("a notifications relay connection failed: %s", exc)
        finally:
            answers.put(None)

    def _answer(self, conn: socket.socket, answers: queue.SimpleQueue[tuple[int, int, list[int]] | None]) -> None:
        try:
            while (item := answers.get()) is not None:
                taken, lost, waiting = item
                while waiting and not self._closed.is_set():
                    waiting = self.unacknowledged(waiting)
                    if waiting:
                        time.sleep(ACK_POLL_S)
                conn.sendall(REPLY.pack(taken, lost))
        except OSError:
            pass  # the worker is gone: nobody to answer
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with contextlib.suppress(ValueError):
                self._conns.remove(conn)


class RelayClient:
    """A worker's end: hands batches to the `RelayServer` at `path`, counting what it has not answered for."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.in_flight = 0  # messages handed over and not yet answered for
        self.lost = 0  # messages the other side did not take, or that went with a connection that failed
        self.relayed = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._next_try = 0.0

    def send(self, messages: list[tuple[str, bytes]]) -> bool:
        """Hand a batch over; False when there is no one to take it (then the caller publishes it itself)."""
        sock = self._connected()
        if sock is None:
            return False
        frame = encode(messages)
        with self._lock:  # before it is sent: its answer may come before sendall returns
            self.in_flight += len(messages)
        try:
            sock.sendall(frame)
        except OSError as exc:
            # a batch written in part is never read (the other side drops a frame cut short): the caller publishes
            # it; the connection ends, and the batches it had taken before with it
            log.warning("the notifications relay failed (%s): publishing over this process's own connection", exc)
            with self._lock:
                self.in_flight -= len(messages)
            self._drop(sock)
            return False
        self.relayed += len(messages)
        return True

    def close(self) -> None:
        """Close the connection (what is unanswered for is counted as lost)."""
        sock = self._sock
        if sock is not None:
            self._drop(sock)

    def _connected(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._next_try:
            return None
        self._next_try = now + RETRY_S
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(_address(self.path))
        except OSError:
            sock.close()
            return None
        sock.settimeout(SEND_S)
        self._sock = sock
        threading.Thread(target=self._replies, args=(sock,), name="mqtt-relay-replies", daemon=True).start()
        log.info("notifications relayed through %s", self.path)
        return sock

    def _replies(self, sock: socket.socket) -> None:
        try:
            while (reply := _read_exactly(sock, REPLY.size)) is not None:
                done, lost = REPLY.unpack(reply)
                with self._lock:
                    self.in_flight -= done + lost
                    self.lost += lost
        except OSError:
            pass  # closed here (`close`, a failed send)
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is not sock:
                return
            self._sock = None
            self._next_try = time.monotonic() + RETRY_S
            # handed over, never answered for: the other process may have published them or not
            self.lost += self.in_flight
            self.in_flight = 0
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
