"""The bridge's MQTT sessions when several nodes share an external broker and a store: each node has a persistent
session of its own in one shared subscription group, so the broker hands each device message to one node; a node
that is gone has its session adopted by a live node until it comes back.

Why adopt: a broker such as Mosquitto goes on handing a shared subscription's messages to a persistent session
whose client is away, and keeps them, with those sent and not yet acknowledged, for that session (measured here:
half of the messages of two nodes queued for the one killed). A live node that connects with the session's client
id receives them, stores them and acknowledges them, and keeps taking that session's share; when the node comes
back it waits for its session's lock, the adopter sees it waiting and hands the session back (what it has not
committed is not acknowledged: the broker sends it again to the owner).

Each session is a lock in the store (sensorthings/store/leadership.py); the nodes that ever had a session are
listed in `bridge_sessions`, so that the others know which to adopt. Sessions of nodes taken out of service for good
stay adopted: `DELETE FROM bridge_sessions WHERE node = …` once the session is drained ends that.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from sensorthings.store.base import Store
from sensorthings.store.leadership import EVERY_S, Lease
from sensorthings.times import now

log = logging.getLogger("udp.bridge")

_meta = MetaData()
bridge_sessions = Table(
    "bridge_sessions", _meta,
    Column("node", String(200), primary_key=True),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)


class Session(Protocol):
    """A connected session taking its messages until closed."""

    def close(self) -> None:
        """Write what it holds, acknowledge it, disconnect (the broker keeps the session)."""


def store_key(store_url: str) -> str:
    """The store's short name: one platform's group and sessions are not another's on the same broker."""
    return hashlib.sha1(store_url.encode()).hexdigest()[:10]


def group(store_url: str) -> str:
    """The shared subscription group of the platform's nodes."""
    return f"udp-{store_key(store_url)}"


def client_id(store_url: str, node: str) -> str:
    """A node's bridge session's client id."""
    return f"udp-bridge-{store_key(store_url)}-{node}"[:200]


def creates_client_id(store_url: str) -> str:
    """The session in which one node takes the SensorThings creates (`v1.1/…/Observations`) for all."""
    return f"udp-sta-create-{store_key(store_url)}"


def register(store: Store, node: str) -> None:
    """List the node's session (once)."""
    _meta.create_all(store.engine, checkfirst=True)
    try:
        with store.write() as (conn, _):
            if conn.execute(select(bridge_sessions.c.node).where(bridge_sessions.c.node == node)).first() is None:
                conn.execute(insert(bridge_sessions).values(node=node, registered_at=now()))
    except IntegrityError:
        pass  # listed meanwhile by the same node starting twice


def nodes(store: Store) -> list[str]:
    """Every node that has had a session."""
    with store.read() as conn:
        return [str(n) for n in conn.execute(select(bridge_sessions.c.node)).scalars()]


class Sessions:
    """This node's session, and those of absent nodes adopted (PostgreSQL: the locks show who waits for them;
    on SQLite, nodes on one machine, only the own session)."""

    def __init__(self, store: Store, node: str, open_session: Callable[[str], Session],
                 every: float = EVERY_S) -> None:
        self.store, self.node, self.every = store, node, every
        self._open = open_session
        self._leases: dict[str, Lease] = {}
        self._adopt = store.dialect.name == "postgresql"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="udp-bridge-sessions", daemon=True)

    def _lease(self, node: str) -> Lease:
        own = node == self.node

        def start() -> Callable[[], None]:
            if not own:
                log.warning("%s: adopting the bridge session of node %s (away)", self.node, node)
            session = self._open(node)

            def stop() -> None:
                if not own:
                    log.warning("%s: handing the bridge session of node %s back", self.node, node)
                session.close()

            return stop

        return Lease(self.store.url, f"bridge-session:{node}", start, node=self.node, every=self.every,
                     yield_when_wanted=not own, wait=own)

    def start(self) -> Sessions:
        """Register this node and open its session (waiting for an adopter to hand it back); adopt from a thread."""
        register(self.store, self.node)
        self._leases[self.node] = self._lease(self.node).start()
        if self._adopt:
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self.every):
            try:
                for node in nodes(self.store):
                    if node not in self._leases and not self._done.is_set():
                        self._leases[node] = self._lease(node).start()
            except Exception:  # the store away: the leases say so themselves
                log.debug("listing the bridge sessions", exc_info=True)

    def close(self) -> None:
        """Hand the adopted sessions back, then close this node's own."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for node in sorted(self._leases, key=lambda n: n == self.node):
            self._leases[node].close()
