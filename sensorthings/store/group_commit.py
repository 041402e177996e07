"""Group commit: the one writer per process that every single Observation and every CreateObservations request
goes through.

Requests hand their rows to `ObservationWriter.submit` and wait on the future it returns. A thread of its own
takes whatever has queued up meanwhile and writes it all through `Store.write_observations` in one transaction,
so concurrent writers share one commit: the cost of a transaction (its round trips, its fsync) is paid per
batch, not per Observation. A future is resolved only after its rows are committed, so an HTTP 201 or an MQTT
PUBACK sent on it means stored. It adds no wait of its own: a lone request is written at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sensorthings.pending import Pending
from sensorthings.store.observations import ObservationRow, Prepared

if TYPE_CHECKING:
    from sensorthings.store.base import Store

log = logging.getLogger("udp.sensorthings.writer")
YIELD_S = 0.05  # the longest a read to be computed waits for this process's writer (`yield_to`)


@dataclass(slots=True)
class Written:
    """What became of a submission's rows, in its order: the new id and the row as written (columns and id),
    or None and the reason (in `reasons`, by index) where a row was refused."""

    ids: list[int | None]
    rows: list[dict[str, Any] | None]
    reasons: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    rows: list[ObservationRow]
    together: bool  # refuse all of the rows when one is refused (one POSTed Observation, one device message)
    future: Pending[Written]
    # made by the submitting thread: the writer's thread is the one that cannot be doubled, and a bulk write's
    # preparing (its driver values, times as text) took a fifth of its time there (SQLite: 1,000 rows 7-8 ms of ~38)
    prepared: Prepared


class ObservationWriter:
    """Writes submitted Observation rows in shared transactions from a thread of its own."""

    def __init__(self, store: Store, max_rows: int = 50_000) -> None:
        self.store = store
        self.max_rows = max_rows  # rows per transaction at most; a larger submission is written alone
        self.queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.submitted = 0
        self.transactions = 0
        self.written = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # set while nothing is queued or being written: reads that must be computed wait for it (`yield_to`)
        self.idle = threading.Event()
        self.idle.set()
        self._when_idle: list[Callable[[], object]] = []  # called once it is idle next (`when_idle`)

    def submit(self, rows: list[ObservationRow], together: bool = False) -> Pending[Written]:
        """Queue rows for the next transaction; the future is resolved once they are committed (or raises what
        the database raised). `together`: one refused row refuses them all."""
        if not rows:
            return Pending.of(Written([], []))
        future: Pending[Written] = Pending()
        prepared = self.store.prepare_observations(rows)
        self._start()
        self.submitted += 1
        with self._lock:  # with the writer's emptiness check below: idle is never set while a job waits
            if self.idle.is_set():  # clearing takes the Event's own lock: under load it is clear already
                self.idle.clear()
            self.queue.put(_Job(rows, together, future, prepared))
        return future

    def yield_to(self, at_most: float = YIELD_S) -> None:
        """Wait (at most `at_most` seconds) while this process has Observations to write: a read computed meanwhile
        would take the interpreter and the CPU from the writer, and devices' writes must keep their pace under
        any read load."""
        if not self.idle.is_set():
            self.idle.wait(at_most)

    def when_idle(self, callback: Callable[[], object]) -> None:
        """Call `callback` once nothing is queued or being written: from the writer's thread when it gets there, or
        here at once when it is idle now (an event loop's reads wait for it so, without polling)."""
        with self._lock:
            if not self.idle.is_set():
                self._when_idle.append(callback)
                return
        callback()

    def stats(self) -> dict[str, int]:
        """What /health shows: submissions taken, transactions committed, Observations written, submissions waiting."""
        return {"submitted": self.submitted, "transactions": self.transactions, "written": self.written,
                "queued": self.queue.qsize()}

    def write(self, rows: list[ObservationRow], together: bool = False) -> Written:
        """Submit rows and wait until they are committed."""
        return self.submit(rows, together).result()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        thread = self._thread
        if thread is not None:
            self.queue.put(None)
            thread.join(30)
            self._thread = None

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="observation-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            size = len(job.rows)
            stop = False
            # whatever queued up while the last transaction ran goes into this one: no waiting for more
            while size < self.max_rows:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                size += len(more.rows)
            self._commit(batch)
            idle: list[Callable[[], object]] = []
            with self._lock:
                if self.queue.empty():
                    self.idle.set()
                    idle, self._when_idle = self._when_idle, []
            for callback in idle:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a waiter gone (its event loop closed) must not stop the writes
                    log.exception("a callback waiting for the writer to be idle failed")
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        try:
            results = self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - the waiting requests must hear of any failure
            if len(batch) > 1:
                # one submission the database refuses (a Datastream deleted meanwhile) must not fail the others
                for job in batch:
                    # the failed write filled in its rows' prepared columns (ids, FeatureOfInterest): afresh
                    job.prepared = self.store.prepare_observations(job.rows)
                    self._commit([job])
                return
            batch[0].future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)

    def _write(self, batch: list[_Job]) -> list[Written]:
        rows: list[ObservationRow] = []
        owner: list[tuple[int, int]] = []  # (job, index in the job) of each row
        for k, job in enumerate(batch):
            for i, row in enumerate(job.rows):
                if job.together:
                    row.group = k
                rows.append(row)
                owner.append((k, i))
        results = [Written([None] * len(job.rows), [None] * len(job.rows)) for job in batch]

        def refused(index: int, reason: str) -> None:
            k, i = owner[index]
            results[k].reasons[i] = reason

        prepared = batch[0].prepared if len(batch) == 1 else Prepared(
            [v for job in batch for v in job.prepared.values], [b for job in batch for b in job.prepared.bound])
        with self.store.write() as (conn, changes):
            ids = self.store.write_observations(conn, rows, changes, refused=refused, prepared=prepared,
                                               commits=True)
            written = iter(changes)
            for (k, i), id_ in zip(owner, ids, strict=True):
                if id_ is not None:
                    results[k].ids[i] = id_
                    results[k].rows[i] = next(written).row
        self.transactions += 1
        self.written += sum(1 for i in ids if i is not None)
        return results
