"""The platform's MQTT clients hold a bounded number of unacknowledged messages (sensorthings.mqtt.client): a broker
slower than the platform makes the publishers wait, in order, and loses nothing once it catches up; a broker that is
gone costs no waiting; the notifier's own backlog is bounded too, its overflow counted. A real Mosquitto, stopped
with SIGSTOP to be slow: connected, but acknowledging nothing.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sensorthings.model import OBSERVATION
from sensorthings.mqtt import notify
from sensorthings.mqtt.client import QUEUED_PER_INFLIGHT, BrokerAddress, connect, publish
from sensorthings.mqtt.outbox import WINDOW
from sensorthings.store.base import Change, Store
from tests.harness import MOSQUITTO, Mosquitto, free_port

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (Debian package mosquitto)")


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    own = Mosquitto("max_inflight_messages 0\nmax_queued_messages 0")
    try:
        yield own
    finally:
        if own.proc is not None and own.proc.poll() is None:
            os.kill(own.proc.pid, signal.SIGCONT)
        own.close()


def _listen(port: int, topic: str) -> tuple[mqtt.Client, queue.Queue[bytes]]:
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{port}-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, msg: got.put(msg.payload)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert subscribed.wait(10)
    return client, got


def _received(got: queue.Queue[bytes], count: int, timeout: float = 30) -> list[bytes]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(got.get(timeout=0.5))
        except queue.Empty:
            pass
    return out


def test_a_slow_broker_makes_the_publisher_wait_and_loses_nothing(broker: Mosquitto) -> None:
    listener, got = _listen(broker.port, "bp/#")
    client = connect(BrokerAddress("127.0.0.1", broker.port), "bp-publisher", inflight=2)
    cap = QUEUED_PER_INFLIGHT * 2
    try:
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # connected still, acknowledging nothing
        # the client takes what it may hold, then refuses at once
        infos = [client.publish("bp/raw", b"%d" % i, qos=1) for i in range(cap + 3)]
        assert [i.rc for i in infos].count(mqtt.MQTT_ERR_QUEUE_SIZE) == 3
        # a publish that waits for room: taken once the broker acknowledges again, the later ones after it
        done: list[bool] = []
        sender = threading.Thread(target=lambda: done.extend(
            publish(client, "bp/waited", b"%d" % i, 1) for i in range(200)))
        sender.start()
        time.sleep(1.0)
        assert not done  # still waiting for room
        os.kill(broker.proc.pid, signal.SIGCONT)
        sender.join(30)
        assert done == [True] * 200
        payloads = _received(got, cap + 200)
        waited = [int(p) for p in payloads if p.isdigit()][cap:]
        assert waited == list(range(200))  # every one, in order
    finally:
        client.loop_stop()
        client.disconnect()
        listener.loop_stop()


def test_a_broker_that_is_gone_costs_no_wait() -> None:
    client = connect(BrokerAddress("127.0.0.1", free_port()), "bp-nobody", inflight=1, wait=0.2)
    try:
        started = time.monotonic()
        taken = [publish(client, "bp/x", b"x", 1) for _ in range(10)]
        # held for when it comes back, as many as the client may hold; the others refused without waiting
        assert taken == [True] * QUEUED_PER_INFLIGHT + [False] * (10 - QUEUED_PER_INFLIGHT)
        assert time.monotonic() - started < 1.0
    finally:
        client.loop_stop()


def test_a_stuck_broker_holds_the_notifications_back_and_they_all_arrive_after(broker: Mosquitto,
                                                                                tmp_path: Path) -> None:
    listener, got = _listen(broker.port, "udp-bp/#")
    store = Store.open(f"sqlite:///{tmp_path}/n.db")
    notifier = notify.Notifier(store, BrokerAddress("127.0.0.1", broker.port), "http://x/v1.1", "bp-notifier")
    try:
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)
        total = WINDOW + 500
        sender = threading.Thread(target=lambda: [notifier.announce(f"udp-bp/{i}", b"%d" % i) for i in range(total)])
        sender.start()
        time.sleep(1.0)
        assert notifier.published < total  # the outbox's window is full: the rest wait
        os.kill(broker.proc.pid, signal.SIGCONT)
        sender.join(30)
        assert notifier.published == total and notifier.dropped == 0
        assert [int(p) for p in _received(got, total)] == list(range(total))
    finally:
        notifier.close()
        store.close()
        listener.loop_stop()


def test_changes_past_the_backlog_are_dropped_and_counted(broker: Mosquitto, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "BACKLOG_MAX", 3)
    store = Store.open(f"sqlite:///{tmp_path}/b.db")
    notifier = notify.Notifier(store, BrokerAddress("127.0.0.1", broker.port), "http://x/v1.1", "bp-backlog")
    try:
        notifier.queue.put(None)  # its thread ends: nothing is taken off the backlog meanwhile
        notifier.thread.join(10)
        for i in range(5):
            notifier([Change(OBSERVATION, i, "create")])
        assert notifier.dropped == 2 and notifier.queue.qsize() == 3
        assert notifier.stats()["dropped"] == 2
    finally:
        notifier.own.loop_stop()
        notifier.own.disconnect()
        store.close()


def test_a_write_nobody_follows_takes_no_connection(broker: Mosquitto, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With the embedded broker's list of subscribed topics, the notifier of a write nobody follows reads nothing
    (neither the written rows nor the internal entities' ids): under 300 POSTs/s each worker's notifier took a
    connection from the pool after every commit for nothing. A change to Things nobody followed still has the
    internal ids read again before the next notification that is published."""
    from sensorthings.model import THING

    store = Store.open(f"sqlite:///{tmp_path}/q.db")
    notifier = notify.Notifier(store, BrokerAddress("127.0.0.1", broker.port), "http://x/v1.1", "q-notifier")
    reads: list[int] = []
    real = store.read
    monkeypatch.setattr(store, "read", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    try:
        notifier.subscribed = set()
        notifier.publish([Change(OBSERVATION, 1, "create"), Change(THING, 1, "update")])
        assert reads == []
        notifier.subscribed = {"v1.1/Datastreams(1)/Observations"}
        notifier.publish([Change(THING, 2, "update")])
        assert reads == []
        loaded = notifier.internal.loaded
        notifier.publish([Change(OBSERVATION, 2, "create")])
        assert reads, "a followed set's write was not read"
        assert notifier.internal.loaded > loaded, "the Things' change was not read before publishing"
    finally:
        notifier.close()
        store.close()


def test_a_commit_nobody_follows_wakes_no_thread(broker: Mosquitto, tmp_path: Path) -> None:
    """With nobody subscribed to anything (the embedded broker's list is empty), the store's listener hands nothing to
    the notifier's thread (a tenth of a single POST's time in the writer went to waking it), yet a change to Things
    is still read before the next notification that is published."""
    from sensorthings.model import THING

    store = Store.open(f"sqlite:///{tmp_path}/w.db")
    notifier = notify.Notifier(store, BrokerAddress("127.0.0.1", broker.port), "http://x/v1.1", "w-notifier")
    try:
        notifier.queue.put(None)  # its thread ends: what is handed over stays in the queue
        notifier.thread.join(10)
        notifier.subscribed = set()
        notifier([Change(OBSERVATION, 1, "create"), Change(THING, 1, "update")])
        assert notifier.queue.qsize() == 0 and notifier.stats()["pending"] == 0
        notifier.subscribed = {"v1.1/Datastreams(1)/Observations"}
        notifier([Change(OBSERVATION, 2, "create")])
        assert notifier.queue.qsize() == 1  # someone follows: handed over
        loaded = notifier.internal.loaded
        notifier.publish(notifier.queue.get())
        assert notifier.internal.loaded > loaded, "the Things' change was not read before publishing"
    finally:
        notifier.close()
        store.close()
