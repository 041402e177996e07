"""Writing mapped messages in batches, one transaction a batch: what arrived while the last one was written.

No wait for more by default (`max_wait` 0), as the HTTP group commit: under load the messages that came during a
transaction make the next batch (up to `batch_size`), and a quiet stream's message is written at once. Waiting
2 ms for company cost latency and throughput alike (`bench/mqtt_ingest.py`: notification p99 at 1,000 messages/s
24.9 → 12.4–13.7 ms; sustained bridge 5,002 → 6,110–6,346 Observations/s).

A message is acknowledged only after the transaction holding its Observations (or its dead
letter) has committed, so a crash or a database outage loses nothing: the broker delivers the
unacknowledged messages again, and the fingerprints of committed ones keep those from being
stored twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

from mqtt_bridge import deadletters
from mqtt_bridge.forward import Forwarder, ForwardUnavailable
from mqtt_bridge.mapping import Reading
from sensorthings.store.base import Store, StoreError
from sensorthings.store.observations import ObservationRow
from sensorthings.store.schema import TABLES

log = logging.getLogger("udp.bridge")


@dataclass
class Message:
    """A received message and what its mapping gave: readings, or the reason it has none."""

    topic: str
    payload: bytes
    received: datetime
    readings: list[Reading] = field(default_factory=list)
    error: str | None = None
    dup: bool = False
    ack: Callable[[], None] | None = None  # acknowledges it to the broker (`Writer`'s default `acknowledge` calls it)
    mid: int = 0  # its packet identifier, for an `acknowledge` of the batch (the bridge's): QoS 0 has none
    qos: int = 0


def acknowledge_each(batch: list[Message]) -> None:
    """Acknowledge the messages of a committed batch one by one, through their `ack`."""
    for message in batch:
        if message.ack is not None:
            message.ack()


class Writer:
    """Collects messages and writes them in batches from a thread of its own.

    It keeps the fingerprints of the newest `keep_seen` committed messages (by default twenty times what
    can be queued and written at once, at least `deadletters.KEEP_SEEN`) and drops older ones every
    `prune_every` seconds (None: only when `prune` is called), in a thread of its own: pruned between two
    batches, the writes waited for it (a DELETE of ~10,000 fingerprints after finding the 100,000th newest, every
    10 s), and notifications at 1,000 messages/s after a burst came with p99 27.5-74.8 ms instead of 14.5-17.0.
    """

    def __init__(self, store: Store, batch_size: int = 1000, max_wait: float = 0.0,
                 keep_seen: int | None = None, prune_every: float | None = 10.0,
                 acknowledge: Callable[[list[Message]], None] = acknowledge_each) -> None:
        """`acknowledge`: called with each batch once committed (or dead-lettered)."""
        self.store = store
        self.acknowledge = acknowledge
        self.batch_size = batch_size
        self.max_wait = max_wait
        # bounded: when writing falls behind, the MQTT callback waits and the broker keeps the backlog
        self.queue: queue.Queue[Message | None] = queue.Queue(maxsize=4 * batch_size)
        # only a message committed but not acknowledged can come again, and the broker sends those first
        # when the session resumes: never more than the queue and a batch behind the newest
        self.keep_seen = keep_seen if keep_seen is not None else max(deadletters.KEEP_SEEN, 20 * 5 * batch_size)
        self.forgotten = 0
        self._stopping = threading.Event()
        # (name or id, by id, multi) → the (Multi)Datastream's id
        self.streams: dict[tuple[str, bool, bool], int] = {}
        self.stored = 0
        self.dead = 0
        self.duplicates = 0
        self.failures = 0
        self.forwarded = 0
        self.forwarder = Forwarder()
        deadletters.create_tables(store)
        self.thread = threading.Thread(target=self._run, name="bridge-writer", daemon=True)
        self.thread.start()
        self.pruner: threading.Thread | None = None
        if prune_every is not None:
            self.pruner = threading.Thread(target=self._prune_every, args=(prune_every,), name="bridge-prune",
                                           daemon=True)
            self.pruner.start()

    def submit(self, message: Message) -> None:
        """Queue a mapped message for the next batch."""
        self.queue.put(message)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self.thread.join(30)
        self._stopping.set()
        if self.pruner is not None:
            self.pruner.join(30)
        self.forwarder.close()

    def _prune_every(self, seconds: float) -> None:
        while not self._stopping.wait(seconds):
            try:
                self.prune()
            except DBAPIError as exc:  # the database away: the next turn prunes what this one left
                log.warning("pruning the bridge's fingerprints failed: %s", exc.orig)
            except Exception:  # a failed turn must not end the pruning
                log.exception("pruning the bridge's fingerprints failed")

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write_until_done(batch)

    def _write_until_done(self, batch: list[Message]) -> None:
        delay = 0.5
        while True:
            try:
                self.write(batch)
                break
            except IntegrityError as exc:
                # a Datastream deleted since it was looked up: look again, one message at a time
                log.warning("bridge batch refused (%s): writing its messages one by one", exc.orig)
                self.streams.clear()
                self._write_singly(batch)
                break
            except (DBAPIError, ForwardUnavailable) as exc:
                # the database or the external server is down: hold the batch, unacknowledged, and try again
                self.failures += 1
                # ... but the connection may have dropped after the server committed it: check the next try's
                # messages against the committed fingerprints, as the broker's redeliveries are
                for message in batch:
                    message.dup = True
                log.warning("bridge write failed, retrying in %.1f s: %s", delay, getattr(exc, "orig", exc))
                time.sleep(delay)
                delay = min(delay * 2, 10)
        self.acknowledge(batch)

    def _write_singly(self, batch: list[Message]) -> None:
        for message in batch:
            try:
                self.write([message])
            except IntegrityError as exc:
                message.readings, message.error = [], f"refused by the database: {exc.orig}"
                self.write([message])

    def write(self, batch: list[Message]) -> None:
        """One transaction for a batch: Observations, dead letters and fingerprints together.
        Readings for an external server are posted there first; what it refuses is dead-lettered here."""
        remote = [(i, r) for i, m in enumerate(batch) if m.error is None for r in m.readings if r.forward]
        if remote:
            for i, reason in self.forwarder.send(remote).items():
                batch[i].readings, batch[i].error = [], reason
            for i in {i for i, _ in remote}:
                if batch[i].error is None:
                    batch[i].readings = [r for r in batch[i].readings if not r.forward]
                    self.forwarded += 1
        prints = [deadletters.fingerprint(m.topic, m.payload) for m in batch]
        with self.store.write() as (conn, changes):
            seen = deadletters.already_seen(conn, [p for p, m in zip(prints, batch, strict=True) if m.dup])
            rows: list[ObservationRow] = []
            owners: list[Message] = []  # the message of each group of rows
            dead: list[tuple[str, bytes, str, datetime]] = []
            committed: list[str] = []
            for message, fp in zip(batch, prints, strict=True):
                if fp in seen:
                    self.duplicates += 1
                    continue
                committed.append(fp)
                if message.error is not None:
                    dead.append((message.topic, message.payload, message.error, message.received))
                    continue
                try:
                    mine = self._rows(conn, message, len(owners))
                except StoreError as exc:
                    dead.append((message.topic, message.payload, str(exc), message.received))
                    continue
                rows.extend(mine)
                owners.append(message)
            refused: set[int] = set()

            def refuse(i: int, reason: str) -> None:
                group = rows[i].group
                if group not in refused:  # a message's rows are refused together: one dead letter
                    refused.add(group)  # type: ignore[arg-type]
                    m = owners[group]  # type: ignore[index]
                    dead.append((m.topic, m.payload, reason, m.received))

            ids = self.store.write_observations(conn, rows, changes, refused=refuse)
            if refused:
                self.streams.clear()  # one may have been deleted: look them up again
            deadletters.add(conn, dead)
            deadletters.remember(conn, committed, batch[-1].received)
        self.stored += sum(1 for i in ids if i is not None)
        self.dead += len(dead)

    def prune(self) -> int:
        """Forget the fingerprints no redelivery can need any more; how many were dropped."""
        with self.store.write() as (conn, _):
            dropped = deadletters.forget_old(conn, self.keep_seen)
        self.forgotten += dropped
        return dropped

    def _rows(self, conn: Any, message: Message, group: int) -> list[ObservationRow]:
        out = []
        for reading in message.readings:
            stream = self._stream(conn, reading)
            out.append(ObservationRow.of(
                reading.result, phenomenon_time_start=reading.phenomenon_start,
                phenomenon_time_end=reading.phenomenon_end, result_time=reading.result_time,
                parameters=reading.parameters, datastream_id=None if reading.multi else stream,
                multi_datastream_id=stream if reading.multi else None, group=group))
        return out

    def _stream(self, conn: Any, reading: Reading) -> int:
        key = (reading.stream, reading.by_id, reading.multi)
        found = self.streams.get(key)
        if found is not None:
            return found
        table = TABLES["multi_datastreams" if reading.multi else "datastreams"]
        what = "MultiDatastream" if reading.multi else "Datastream"
        if reading.by_id:
            if not reading.stream.isdigit():
                raise StoreError(f"unknown {what}: id {reading.stream!r} is not a number")
            cond = table.c.id == int(reading.stream)
        else:
            cond = table.c.name == reading.stream
        stream = conn.execute(select(table.c.id).where(cond).order_by(table.c.id).limit(1)).scalar()
        if stream is None:
            raise StoreError(f"unknown {what} {reading.stream!r}")
        self.streams[key] = stream
        return stream
