"""sensorthings.mqtt.relay: on an external broker the HTTP workers' notifications are published through the
connection that takes the creates, whose subscriptions are No Local, so the broker never sends them back to it; a
worker without that process publishes over its own connection. A real Mosquitto, real Unix sockets."""

from __future__ import annotations

import os
import socket
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


def _worker(store: Any, port: int, path: Path | str) -> Notifier:
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
        path = f"@udp-relay-test-{uuid.uuid4().hex[:8]}"  # as `udp serve` names it: no file
        server = taker.serve_relay(path)
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


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user takes root to change user")
def test_another_users_process_cannot_hand_over_notifications() -> None:
    """What the socket takes is published as the platform's: a process of another user is refused, abstract namespace
    or not (it has no file permissions)."""
    published: list[list[tuple[str, bytes]]] = []
    path = f"@udp-relay-test-{uuid.uuid4().hex[:8]}"
    server = relay.RelayServer(path, lambda m: (published.append(m) or len(m), []), lambda mids: [])

    def hand_over(uid: int | None) -> int:
        """The answer's length a process (of `uid`, else this user) gets for a batch; 0: closed without one."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no threads, no imports, only the socket
            got = -1
            try:
                if uid is not None:
                    os.setuid(uid)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(relay._address(path))
                s.sendall(relay.encode([("v1.1/Things(1)", b"{}")]))
                s.settimeout(5)
                got = len(s.recv(8))
            except (BrokenPipeError, ConnectionResetError):
                got = 0  # closed while the batch was on its way
            finally:
                os.write(write, str(got).encode())
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            return int(f.read())

    try:
        assert hand_over(65534) == 0  # nobody: closed without an answer
        assert published == []
        assert hand_over(None) == relay.REPLY.size  # answered for
        assert published == [[("v1.1/Things(1)", b"{}")]]
    finally:
        server.close()


def test_a_relay_that_cannot_be_made_leaves_the_workers_to_publish(tmp_path: Path) -> None:
    """A socket that cannot be made (here a path in a directory that does not exist; off Linux, the abstract
    namespace) costs the bridge process nothing but a warning."""
    with creator_on_a_broker(tmp_path) as (creator, port, _):
        taker = Notifier(creator.service.store, BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"),
                         "http://udp.test/v1.1", "unused", client=creator.client)
        try:
            assert taker.serve_relay(str(tmp_path / "missing" / "notify.sock")) is None
        finally:
            taker.close()
