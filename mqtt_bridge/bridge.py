"""The bridge: subscribes to the device topics of the rules, maps each message, hands it to the writer.

It never stops on a bad message: what cannot be mapped goes to the dead-letter table with the
reason. Its MQTT session is persistent and acknowledgements are manual, so messages published
while the platform is down, or received but not yet committed, are delivered again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import update

from mqtt_bridge import deadletters
from mqtt_bridge.mapping import Unmappable, map_message, match
from mqtt_bridge.rules import Rule
from mqtt_bridge.writer import Message, Writer
from sensorthings.mqtt.client import BrokerAddress, BufferedClient, Incoming, connect
from sensorthings.mqtt.create import CREATE_TOPIC, Creator
from sensorthings.mqtt.create import TOPICS as CREATE_TOPICS
from sensorthings.query.limits import Limits
from sensorthings.store.base import Store
from sensorthings.times import now

log = logging.getLogger("udp.bridge")


# the platform's own topics: never device messages
PLATFORM_TOPICS = ("v1.1/", "udp-internal/")


def subscriptions(rules: list[Rule]) -> list[tuple[str, int]]:
    """What the bridge subscribes to: each rule's first topic level as a namespace (`city/#`), so that a
    device publishing to a wrong topic there is reported as an unknown topic, not silently missed."""
    out: dict[str, int] = {}
    for rule in rules:
        first = rule.topic.split("/", 1)[0]
        topic = rule.subscription if "{" in first or first in ("v1.1", "udp-internal") else f"{first}/#"
        out[topic] = max(out.get(topic, 0), rule.qos)
    return sorted(out.items())


class Bridge:
    """Device topics → Observations, for one store.

    With a `creator` it also takes the SensorThings creates (`v1.1/…/Observations`) on its connection, which is
    then MQTT 5 with No Local subscriptions, and `before_start` may attach a notifier publishing through it: the
    broker never sends the notifications of what it wrote back to it (they share the creates' topics).
    `shared`: its subscriptions in that shared subscription group (mqtt_bridge/sessions.py), where No Local does
    not apply: the notifications come back, and the creator passes them over by their content."""

    def __init__(self, store: Store, rules: list[Rule], address: BrokerAddress, client_id: str | None = None,
                 batch_size: int = 1000, max_wait: float = 0.0, creator: Creator | None = None,
                 before_start: Callable[[BufferedClient], None] | None = None, shared: str | None = None) -> None:
        self.store = store
        self.rules = rules
        self.received = 0
        self.closing = False
        self.creator = creator
        self.writer = Writer(store, batch_size, max_wait, acknowledge=self._acknowledge)
        cid = client_id or "udp-bridge-" + hashlib.sha1(store.url.encode()).hexdigest()[:10]
        topics = subscriptions(rules) + ([(t, 1) for t in CREATE_TOPICS] if creator is not None else [])

        def attach(client: BufferedClient) -> None:
            # before it connects: a persistent session's messages come as soon as it has, and are acknowledged
            # through it
            self.client = client
            if creator is not None:
                creator.take_from(client)
            if before_start is not None:
                before_start(client)

        self.client = connect(address, cid, on_message=self.handle, clean_session=False, manual_ack=True,
                              subscriptions=topics, no_local=creator is not None, shared=shared,
                              before_start=attach)

    def handle(self, msg: Incoming) -> None:
        """Map one message and queue it; it is acknowledged once written."""
        if self.closing:
            return  # not acknowledged: the broker delivers it again to the next session
        if self.creator is not None and CREATE_TOPIC.match(msg.topic):
            self.creator.on_message(msg)
            return
        if msg.topic.startswith(PLATFORM_TOPICS):
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
            return
        self.received += 1
        message = Message(msg.topic, bytes(msg.payload), now(), dup=bool(msg.dup), mid=msg.mid, qos=msg.qos)
        found = match(self.rules, msg.topic)
        if found is None:
            message.error = "unknown topic: no bridge rule matches it"
        else:
            rule, captures = found
            try:
                message.readings = map_message(rule, captures, message.payload, message.received)
            except Unmappable as exc:
                message.error = str(exc)
        self.writer.submit(message)

    def _acknowledge(self, batch: list[Message]) -> None:
        # a batch's PUBACKs in one write: one by one, each was a wake-up of paho's loop and a system call of its own
        self.client.ack_many([m.mid for m in batch if m.qos == 1])
        for m in batch:
            if m.qos == 2:
                self.client.ack(m.mid, 2)

    def stats(self) -> dict[str, int]:
        """Counters for /health."""
        w = self.writer
        return {"received": self.received, "stored": w.stored, "dead_letters": w.dead, "duplicates": w.duplicates,
                "write_failures": w.failures}

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Stop taking messages, write what is queued (acknowledging it), run `then` (a notifier publishing
        through this connection sends what it holds), disconnect."""
        self.closing = True
        self.writer.close()
        if then is not None:
            then()
        self.client.loop_stop()
        self.client.disconnect()


def redrive(store: Store, rules: list[Rule], writer: Writer | None = None) -> tuple[int, int]:
    """Map the pending dead letters again (after a rule or a Datastream was added); (stored, still dead)."""
    own = writer is None
    writer = writer or Writer(store)
    ok = still = 0
    for row in deadletters.pending(store):
        found = match(rules, row["topic"])
        message = Message(row["topic"], bytes(row["payload"]), row["received_at"])
        try:
            if found is None:
                raise Unmappable("unknown topic: no bridge rule matches it")
            message.readings = map_message(found[0], found[1], message.payload, message.received)
        except Unmappable as exc:
            still += 1
            with store.write() as (conn, _):
                conn.execute(update(deadletters.dead_letters).where(deadletters.dead_letters.c.id == row["id"])
                             .values(reason=str(exc), attempts=row["attempts"] + 1))
            continue
        before = writer.dead
        writer.streams.clear()
        with store.write() as (conn, _):
            conn.execute(update(deadletters.dead_letters).where(deadletters.dead_letters.c.id == row["id"])
                         .values(redriven_at=now(), attempts=row["attempts"] + 1))
        writer.write([message])
        if writer.dead > before:
            still += 1
        else:
            ok += 1
    if own:
        writer.close()
    return ok, still


def run_process(rules: list[Rule], store_url: str, address: BrokerAddress, base: str, limits: Limits,
                ready: Any = None, parent: int | None = None, notify_qos: int = 1,
                creates: int | None = None, node: str | None = None, relay: str | None = None) -> None:
    """The bridge in a process of its own (started by `udp serve`, which hands it the configuration's
    rules): its MQTT client, writer and notifications do not share an interpreter lock with the HTTP
    workers and the broker. With `creates` (the largest payload, in bytes: an external broker) it takes the
    SensorThings creates too. With `node` (`mqtt.shared`: nodes sharing the broker and the store) its sessions
    are those of mqtt_bridge/sessions.py, its own in the nodes' shared subscription group and those of absent
    nodes, and its notifications go over a connection of their own; without, one session, on the same MQTT 5
    connection as its notifications (`udp serve` makes sure that no other node runs one on the store then).
    With `relay` (a Unix socket's path: an external broker) it publishes the HTTP workers' notifications too, handed
    over there (sensorthings.mqtt.relay), through the connection that takes the creates, which the broker does not
    send them back to. Stops cleanly (queued messages written) on SIGTERM."""
    import os
    import socket
    import threading

    from apicommon.heap import freeze_startup
    from apicommon.stopping import stop_on_signals
    from apicommon.switching import switch_often
    from mqtt_bridge.sessions import Sessions, client_id, creates_client_id, group
    from sensorthings.mqtt.notify import Notifier
    from sensorthings.mqtt.relay import RelayServer
    from sensorthings.service import Service
    from sensorthings.store.leadership import Lease

    switch_often()  # spawned: CPython's default again, and each message passes between three threads here
    store = Store.open(store_url)
    notify_id = f"udp-notify-{socket.gethostname()}-{os.getpid()}-bridge"
    stop = threading.Event()
    stop_on_signals(stop)

    def creator() -> Creator | None:
        return Creator(Service(store, limits=limits), base, creates) if creates is not None else None

    relays: list[RelayServer] = []
    if node is None:
        notifiers: list[Notifier] = []
        single = creator()

        def notify(client: mqtt.Client) -> None:
            # through the bridge's connection when it takes the creates (No Local), else over one of its own
            notifier = Notifier(store, address, base, notify_id, limits=limits, qos=notify_qos,
                                client=client if single is not None else None)
            store.listeners.append(notifier)  # before the first message can be written
            notifiers.append(notifier)
            # None: the socket could not be made, each worker publishes its own
            if relay is not None and single is not None and (served := notifier.serve_relay(relay)) is not None:
                relays.append(served)

        bridge = Bridge(store, rules, address, creator=single, before_start=notify)

        def close() -> None:
            bridge.close(then=notifiers[0].close)
    else:
        notifier = Notifier(store, address, base, notify_id, limits=limits, qos=notify_qos)
        store.listeners.append(notifier)  # before the first message can be written
        if relay is not None and creates is not None:
            # through the creates' connection while this node takes them (`take_creates`), its own otherwise; None:
            # the socket could not be made, each worker publishes its own
            if (served := notifier.serve_relay(relay)) is not None:
                relays.append(served)
        own = threading.Event()

        def open_session(owner: str) -> Bridge:
            session = Bridge(store, rules, address, client_id(store_url, owner), shared=group(store_url))
            if owner == node:
                own.set()
            return session

        sessions = Sessions(store, node, open_session).start()
        while not own.wait(1.0) and not stop.is_set():
            pass  # an adopter hands this node's session back within seconds
        # the creates are not in the shared group: the notifications share their topics, and the broker would
        # queue them for the session of a node that is gone, beside its device messages; one node takes them in
        # the platform's one creates session, another when it dies, and publishes its notifications through it
        # (No Local: the broker does not send them back to it; other nodes' notifications still come)
        def take_creates() -> Callable[[], None]:
            taker = creator()
            if taker is None:
                return lambda: None
            taker.subscribe(address, creates_client_id(store_url))
            notifier.publish_through(taker.client)

            def leave() -> None:
                notifier.publish_through(None)
                taker.close()

            return leave

        creates_lease = Lease(store_url, "creates", take_creates, node=node).start()

        def close() -> None:
            creates_lease.close()
            sessions.close()
            notifier.close()
    freeze_startup()
    if ready is not None:
        ready.set()  # subscribed: `udp serve` starts answering only now, so no early message goes unheard
    # the pid `udp serve` passed: read here, getppid() may already name init if serve died meanwhile
    parent = parent or os.getppid()
    # a bridge whose `udp serve` died (even by SIGKILL) stops too
    while not stop.wait(1.0) and os.getppid() == parent:
        pass
    for server in relays:
        server.close()  # the workers publish over their own connections again
    close()
    store.close()
