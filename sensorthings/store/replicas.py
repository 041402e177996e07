"""Reads sent to PostgreSQL streaming replicas (`store.replicas`), each one after its replica has replayed every
commit made before the read began: a client reads its own writes, and every read is as fresh as the primary's
at its start, on whichever worker or node it lands.

A read asks the primary for the position of its write-ahead log flushed so far (every committed transaction is
at or before it), then takes a connection to a replica and waits (polling, at most MAX_WAIT_S) until the replica
has replayed up to there. A replica that does not answer is left alone for DOWN_S; one that lags more than
MAX_WAIT_S gives the read to the next replica, and the primary reads when none can. With the primary down, a
replica reads without waiting: a read a little behind beats none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from sensorthings.store.reasons import reason

log = logging.getLogger("udp.store")

MAX_WAIT_S = 0.5  # a replica further behind than this gives its reads away
DOWN_S = 5.0  # how long a replica that failed is left alone
_POLL_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)  # the waits between two looks at a replica's replay


@dataclass
class _Replica:
    url: str
    engine: Engine
    down_until: float = 0.0
    replayed: int = 0  # the furthest log position seen replayed: a replica never goes back
    reads: int = 0
    given_away: int = 0  # reads it passed on, lagging or down


class Replicas:
    """The replicas of one store, in turn."""

    def __init__(self, primary: Engine, replicas: list[tuple[str, Engine]]) -> None:
        self.primary = primary
        self.replicas = [_Replica(url, engine) for url, engine in replicas]
        self._next = 0
        self._lock = threading.Lock()
        self.primary_reads = 0
        self._position = _Shared(self._ask_primary)

    def _flushed(self) -> int | None:
        """The primary's flushed write-ahead log position, read after this call began (shared with the reads of
        this process that arrive while it is read); None when the primary cannot tell now."""
        return self._position.get()

    def _ask_primary(self) -> int | None:
        try:
            with self.primary.connect() as conn:
                return _lsn(conn.execute(text("SELECT pg_current_wal_flush_lsn()::text")).scalar_one())
        except DBAPIError as exc:
            log.warning("the primary cannot tell its log position (%s): replicas read without waiting", reason(exc))
            return None

    def _order(self) -> list[_Replica]:
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.replicas)
        now = time.monotonic()
        turn = self.replicas[start:] + self.replicas[:start]
        return [r for r in turn if r.down_until <= now]

    @staticmethod
    def _caught_up(replica: _Replica, conn: Connection, lsn: int) -> bool:
        if replica.replayed >= lsn:  # seen already: no round trip
            return True
        deadline = time.monotonic() + MAX_WAIT_S
        waits = iter(_POLL_S)
        while True:
            replayed = _lsn(conn.execute(text("SELECT pg_last_wal_replay_lsn()::text")).scalar())
            replica.replayed = max(replica.replayed, replayed)
            if replayed >= lsn:
                return True
            wait = next(waits, _POLL_S[-1])
            if time.monotonic() + wait > deadline:
                return False
            time.sleep(wait)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection that sees every commit made before this call."""
        lsn = self._flushed()
        for replica in self._order():
            try:
                conn = replica.engine.connect()
            except DBAPIError as exc:
                self._failed(replica, exc)
                continue
            try:
                if lsn is not None and not self._caught_up(replica, conn, lsn):
                    replica.given_away += 1
                    conn.close()
                    continue
            except DBAPIError as exc:
                conn.close()
                self._failed(replica, exc)
                continue
            replica.reads += 1
            with conn:
                yield conn
            return
        self.primary_reads += 1
        with self.primary.connect() as conn:
            yield conn

    def _failed(self, replica: _Replica, exc: DBAPIError) -> None:
        replica.down_until = time.monotonic() + DOWN_S
        replica.replayed = 0  # restarted, it replays again from its last restart point: look again
        replica.given_away += 1
        log.warning("replica %s is down (%s): reads go elsewhere for %.0f s", _host(replica.url), reason(exc),
                    DOWN_S)

    def stats(self) -> list[dict[str, object]]:
        """What /health shows of each replica (this worker's counts)."""
        now = time.monotonic()
        return [{"replica": _host(r.url), "up": r.down_until <= now, "reads": r.reads, "given_away": r.given_away}
                for r in self.replicas]

    def dispose(self) -> None:
        """Release every replica connection."""
        for r in self.replicas:
            r.engine.dispose()


class _Shared:
    """A value read by `fetch`, shared by the callers that arrive while it is being read: each caller gets a value
    whose reading began after the caller arrived (so never one older than its own request), and concurrent
    callers share one reading instead of making one each."""

    def __init__(self, fetch: Callable[[], int | None]) -> None:
        self.fetch = fetch
        self._cond = threading.Condition()
        self._started = 0  # readings begun
        self._finished = 0  # the reading whose value is held
        self._running = False
        self._value: int | None = None
        self.readings = 0

    def get(self) -> int | None:
        """A value read after this call began."""
        with self._cond:
            need = self._started + 1  # a reading that begins from now on
            while self._finished < need:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                mine = self._started
                self._cond.release()
                try:
                    value = self.fetch()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._finished, self._value = mine, value
                self.readings += 1
            return self._value


def _lsn(text_form: str | None) -> int:
    """A log position `16/B374D848` as a number (0 for none: a server that is no replica)."""
    if not text_form:
        return 0
    high, _, low = text_form.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _host(url: str) -> str:
    """A replica's URL without its credentials."""
    return url.rsplit("@", 1)[-1]
