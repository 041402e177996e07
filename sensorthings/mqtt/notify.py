"""Notifications (OGC 18-088 section 14.2): every committed create and update published as the same
JSON a GET returns, on the topics it belongs to.

Creates go to the entity set (`v1.1/Observations`) and to the navigation sets of the entities they
link to (`v1.1/Datastreams(7)/Observations`); updates go to the entity (`v1.1/Things(3)`). With the
embedded broker the platform also knows which topics have subscribers, so it serves property
topics (`v1.1/Things(3)/name`) and topics with query options (`v1.1/Observations?$select=result`,
`?$filter=`, `?$expand=`), and skips topics nobody listens to.

Writes only enqueue their changes; one thread per process reads the entities and publishes, so a
request never waits for the broker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import select

from sensorthings.access import InternalIndex
from sensorthings.conformance import MQTT_CREATE, MQTT_RECEIVE
from sensorthings.model import BY_NAME, EntityType, NavKind, reverse_nav, target_of
from sensorthings.mqtt.broker import SUBSCRIPTIONS_TOPIC
from sensorthings.mqtt.client import BrokerAddress, BufferedClient, Incoming, connect
from sensorthings.mqtt.outbox import Outbox
from sensorthings.mqtt.relay import RelayClient, RelayServer
from sensorthings.query.limits import Limits
from sensorthings.query.options import query_options
from sensorthings.query.tree import QueryError, QueryOptions
from sensorthings.read import Reader, readable_columns, serializer
from sensorthings.resource import PathError, Resource, condition, parse_path
from sensorthings.store.base import Change, Store
from sensorthings.store.schema import TABLES

log = logging.getLogger("udp.mqtt.notify")
VERSION = "v1.1"
BACKLOG_MAX = 200_000  # changes waiting to be notified: past it, new ones are dropped (and counted), never the writes
SEND_EVERY = 500  # notifications built before they are sent together (a bulk write's first go out meanwhile)


def mqtt_conformance(endpoints: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The MQTT conformance classes and their serverSettings entries, naming the broker endpoints."""
    return [MQTT_CREATE, MQTT_RECEIVE], {MQTT_CREATE: {"endpoints": endpoints},
                                         MQTT_RECEIVE: {"endpoints": endpoints}}


@dataclass(frozen=True)
class TopicQuery:
    """A subscribed topic read as a request: what it addresses and with which options."""

    topic: str
    resource: Resource
    options: QueryOptions
    wildcard: bool = False


@lru_cache(maxsize=4096)
def parse_topic(topic: str, limits: Limits) -> TopicQuery | None:
    """A SensorThings topic as a request, its query options parsed and checked like an HTTP GET's, within
    the same `limits`; None when it is not one (or not a valid one: it is never answered)."""
    if "#" in topic or "+" in topic:
        return None
    if not topic.startswith(VERSION + "/"):
        return None
    path, _, query = topic[len(VERSION) + 1:].partition("?")
    try:
        resource = parse_path(path)
        options = query_options(dict(parse_qsl(query, keep_blank_values=True)), resource.entity, limits) \
            if query else QueryOptions()
    except (PathError, QueryError) as exc:
        if query:
            log.info("not answering the subscription %r: %s", topic, exc)
        return None
    return TopicQuery(topic, resource, options)


def standard_topics(entity: EntityType, row: dict[str, Any], kind: str) -> list[str]:
    """The topics a change belongs to without any subscription known: sets for creates, the entity for updates."""
    if kind == "update":
        return [f"{VERSION}/{entity.set_name}({row['id']})"]
    own, linked = _create_topics(entity)
    topics = [own]
    for column, head, tail in linked:
        key = row.get(column)
        if key is not None:
            topics.append(f"{head}{key}{tail}")
    return topics


@cache
def _create_topics(entity: EntityType) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    # asked for every row of every write (three topics an Observation): the navigation worked out once per type
    linked = []
    for nav in entity.navs:
        back = reverse_nav(entity, nav) if nav.kind is NavKind.FK else None
        if back is not None:
            linked.append((nav.column, f"{VERSION}/{target_of(nav).set_name}(", f")/{back.name}"))
    return f"{VERSION}/{entity.set_name}", tuple(linked)


def _set_named(topic: str) -> str:
    """The entity set a standard topic follows: its path's last segment without a key (`Observations` of
    `v1.1/Datastreams(1)/Observations` and of `v1.1/Observations(5)`)."""
    return topic.partition("?")[0].rsplit("/", 1)[-1].partition("(")[0]


# the entities whose changes may make others internal (config.yml `access: internal`): read again before the next
# notification after one
_MAKES_INTERNAL = frozenset({"Thing", "Datastream", "MultiDatastream", "Location"})


class Notifier:
    """Publishes committed changes to the broker from a thread of its own."""

    def __init__(self, store: Store, address: BrokerAddress, base: str, client_id: str,
                 limits: Limits = Limits(), qos: int = 1, client: BufferedClient | None = None,
                 relay: str | None = None) -> None:
        """`client`: publish through this connected client (the creator's, whose subscriptions are No Local)
        instead of a connection of its own. `relay`: hand the notifications to the process that takes the creates,
        through its socket there (sensorthings.mqtt.relay), while it is there."""
        self.store = store
        self.qos = qos  # mqtt.notify_qos
        self.limits = limits  # server.*: a topic's query options meet the limits an HTTP GET meets
        self.base = base.rstrip("/")
        self.queue: queue.Queue[list[Change] | None] = queue.Queue()
        self.subscribed: set[str] | None = None  # known only with the embedded broker
        self.published = 0
        self.dropped = 0  # notifications not sent: the broker took them too slowly, or was away with the client full
        self._backlog = 0  # changes queued and not yet published
        self._count_lock = threading.Lock()
        self.internal = InternalIndex(store)
        self._internal_changed = False  # a change that may make entities internal, not yet read (`publish`)
        self.owns_client = client is None
        self.client = self.own = client if client is not None else connect(
            address, client_id, on_message=self._on_message, subscriptions=[(SUBSCRIPTIONS_TOPIC, 1)])
        self.outbox = self._outbox(self.client)
        self._out: list[tuple[str, bytes]] = []  # built by the notifier's thread, not yet sent
        self.relay = RelayClient(relay) if relay else None
        self.thread = threading.Thread(target=self._run, name="mqtt-notify", daemon=True)
        self.thread.start()

    def __call__(self, changes: list[Change]) -> None:
        """Store listener: take the changes of a committed transaction (dropped, and counted, while BACKLOG_MAX
        are waiting: a broker slower than the writes for long must not grow the process without end)."""
        if self.subscribed is not None and not self.subscribed:
            # the broker says nobody subscribes to anything: nothing to publish, no thread to wake (a tenth of the
            # writer's time for a single POST); a change that may make entities internal is still read before the
            # next notification
            if any(c.entity.name in _MAKES_INTERNAL for c in changes):
                with self._count_lock:
                    self._internal_changed = True
            return
        with self._count_lock:
            if self._backlog >= BACKLOG_MAX:
                self.dropped += len(changes)
                full = True
            else:
                self._backlog += len(changes)
                full = False
        if full:
            log.warning("%d changes waiting for the broker: %d not notified", BACKLOG_MAX, len(changes))
            return
        self.queue.put(changes)

    def stats(self) -> dict[str, Any]:
        """What /health shows: connection, notifications sent and dropped, changes not yet notified, QoS 1
        notifications the broker has not acknowledged yet and those it refused (MQTT 5), topics with subscribers."""
        relay = self.relay
        lost = relay.lost if relay is not None else 0  # counted published when handed over
        return {"connected": self.client.is_connected(), "published": self.published - lost,
                "dropped": self.dropped + lost, "queued": self.queue.qsize(), "pending": self._backlog,
                "in_flight": self.outbox.in_flight + (relay.in_flight if relay is not None else 0),
                "refused": self.outbox.refused,
                "subscribed_topics": None if self.subscribed is None else len(self.subscribed),
                **({"relayed": relay.relayed} if relay is not None else {})}

    def knows(self, topics: list[str]) -> dict[str, bool | None]:
        """Whether this notifier has heard that each topic has subscribers (None: it cannot know, with an
        external broker it publishes to every standard topic); who subscribes to what is the operator's to see."""
        subscribed = self.subscribed
        return {t: None if subscribed is None else t in subscribed for t in topics}

    def publish_through(self, client: BufferedClient | None) -> None:
        """Publish through `client` from now on (one whose subscriptions are No Local: the broker does not send it
        back the notifications, which share the creates' topics), or through the notifier's own again (None)."""
        self.client = client if client is not None else self.own
        self.outbox = self._outbox(self.client)

    def _outbox(self, client: BufferedClient) -> Outbox:
        known = client.outbox
        return known if known is not None and known.qos == self.qos else Outbox(client, self.qos)

    def serve_relay(self, path: str) -> RelayServer | None:
        """Publish what other processes hand over at the Unix socket `path` (their `relay`) as this notifier's own;
        None when the socket cannot be made (no abstract namespace off Linux): they publish themselves then."""
        try:
            return RelayServer(path, self._relayed, lambda mids: self.outbox.unacknowledged(mids))
        except OSError as exc:
            log.warning("no notifications relay at %s (%s): each worker publishes its own", path, exc)
            return None

    def _relayed(self, messages: list[tuple[str, bytes]]) -> tuple[int, list[int]]:
        mids: list[int] = []
        return self._deliver(messages, mids), mids

    def announce(self, topic: str, payload: bytes) -> None:
        """Publish a message of the platform's own beside the SensorThings notifications (citizen feedback)."""
        self._deliver([(topic, payload)])

    def close(self) -> None:
        """Publish what is queued, then disconnect."""
        self.queue.put(None)
        self.thread.join(10)
        if self.relay is not None:
            self.relay.close()
        if self.owns_client:
            self.own.loop_stop()
            self.own.disconnect()

    def _on_message(self, msg: Incoming) -> None:
        if msg.topic == SUBSCRIPTIONS_TOPIC:
            try:
                self.subscribed = set(orjson.loads(msg.payload))
            except orjson.JSONDecodeError:
                log.warning("bad subscription list from the broker")

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = list(first)
            # take whatever else is waiting, so that a burst is read with few queries
            while len(batch) < 5000:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)
                    break
                batch.extend(more)
            try:
                self.publish(batch)
            except Exception:  # a failed notification must not stop later ones
                log.exception("publishing %d notifications failed", len(batch))
            finally:
                with self._count_lock:
                    self._backlog -= len(batch)

    def publish(self, changes: list[Change]) -> None:
        """Read the changed entities and publish them to their topics."""
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        written: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for change in changes:
            groups[(change.entity.name, change.kind)].append(change.id)
            if change.row is not None:
                written[(change.entity.name, change.kind)].append(change.row)
        subscribed = self.subscribed
        queries = [q for q in (parse_topic(t, self.limits) for t in subscribed or ())
                   if q is not None and (q.options != QueryOptions() or q.resource.prop is not None)]
        everything = subscribed is None or any("#" in t or "+" in t for t in subscribed)
        # the entity sets someone follows: a bulk write of Observations nobody follows costs nothing per row here
        followed = everything or {_set_named(t) for t in subscribed}  # type: ignore[union-attr]
        asked = {q.resource.entity.name for q in queries}
        wanted = [(name, kind) for name, kind in groups
                  if followed is True or BY_NAME[name].set_name in followed or name in asked]
        # internal entities (config.yml `access: internal`) are never announced on the broker, which anyone may read
        with self._count_lock:  # the writers' thread notes such changes too (`__call__`)
            force = self._internal_changed or any(name in _MAKES_INTERNAL for name, _ in groups)
            self._internal_changed = force and not wanted  # read below when wanted, else before the next one
        if wanted:  # else no connection taken: with nobody subscribed (the embedded broker), a write costs nothing here
            self.internal.refresh(force=force)
            with self.store.read() as conn:
                reader = Reader(self.store, self.base, hide_internal=True)
                for name, kind in wanted:
                    entity = BY_NAME[name]
                    ids = groups[(name, kind)]
                    if followed is True or entity.set_name in followed:
                        self._publish_standard(conn, entity, kind, ids, written[(name, kind)],
                                               None if everything else subscribed)
                    for q in queries:
                        self._publish_query(conn, reader, entity, kind, ids, q)
        out, self._out = self._out, []
        self._deliver(out)

    def _publish_standard(self, conn: Any, entity: EntityType, kind: str, ids: list[int],
                          rows: list[dict[str, Any]], only: set[str] | None) -> None:
        """Publish changed entities to their standard topics: all of them, or those in `only` (the subscribed)."""
        if len(rows) != len(ids):
            table = TABLES[entity.table]
            rows = [dict(r) for r in conn.execute(
                select(*readable_columns(table)).where(table.c.id.in_(ids))).mappings()]
        write = serializer(entity, self.base, None)
        for row in rows:
            if self.internal.hidden(entity, row):
                continue
            topics = standard_topics(entity, row, kind)
            if only is not None:
                topics = [t for t in topics if t in only]
            if topics:
                payload = orjson.dumps(write(row))
                for topic in topics:
                    self._send(topic, payload)

    def _publish_query(self, conn: Any, reader: Reader, entity: EntityType, kind: str, ids: list[int],
                       q: TopicQuery) -> None:
        res = q.resource
        if res.entity is not entity:
            return
        wants_update = res.single or res.prop is not None
        if wants_update != (kind == "update"):
            return
        where = condition(res)

        def scoped(t: Any) -> Any:
            cond = where(t)
            return t.c.id.in_(ids) if cond is None else (t.c.id.in_(ids) & cond)

        opts = QueryOptions(filter=q.options.filter, select=q.options.select, expand=q.options.expand, top=len(ids))
        try:
            rows, _, _ = reader.page(conn, entity, scoped, opts)
            docs = reader.serialize_rows(conn, entity, rows, opts)
        except QueryError:
            return
        for doc in docs:
            if res.prop is not None:
                key = "@iot.id" if res.prop == "id" else res.prop
                doc = {key: doc.get(key)}
            self._send(q.topic, orjson.dumps(doc))

    def _send(self, topic: str, payload: bytes) -> None:
        self._out.append((topic, payload))
        if len(self._out) >= SEND_EVERY:
            out, self._out = self._out, []
            self._deliver(out)

    def _deliver(self, out: list[tuple[str, bytes]], mids: list[int] | None = None) -> int:
        # a broker slower than the writes: the later notifications wait here, in order, for it to make room (handed
        # to the relay, all are taken: what the other side does not take is counted from its answers, `stats`)
        if self.relay is not None and self.relay.send(out):
            taken = len(out)
        else:
            taken = self.outbox.send(out, mids=mids)
        with self._count_lock:  # the writers' thread counts the backlog's drops too; announce comes from others
            self.published += taken
            lost = len(out) - taken
            self.dropped += lost
            dropped = self.dropped
        if lost and (dropped == lost or (dropped - lost) // 1000 < dropped // 1000):  # the first, every 1,000th
            log.warning("the broker does not take the notifications: %d dropped so far", dropped)
        return taken
