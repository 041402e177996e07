"""SQLite: the WAL copied back into the database file by a thread of its own while writers commit, so that the
commit that reaches the automatic checkpoint finds little left to copy.

In WAL mode each commit appends its pages to the WAL; the commit after which the WAL holds `wal_autocheckpoint`
pages copies them all into the database file and syncs both, while its writer waits (SQLite's automatic checkpoint
runs in the committing connection). A bulk import dirties pages all over the time index, so those checkpoints are
large: single POSTs beside one had p99 50-66 ms. Here a thread of the process copies what has been committed, at
most every PERIOD_S while writes go on, with passive checkpoints: they take no lock a writer or a reader waits for.
The automatic checkpoint stays, and bounds the WAL as before: only SQLite's own checkpoint, run where a write has
just committed, can start the WAL over (it does so once every frame is in the database file, which a checkpoint
beside a writer that begins again at once never sees).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event

log = logging.getLogger("udp.sensorthings.checkpoints")
PERIOD_S = 0.03  # the most often a passive checkpoint runs while writes go on (each syncs the WAL and the file)


class Checkpointer:
    """Passive checkpoints of one database file from a thread of its own, woken by this process's writes."""

    def __init__(self, database: str, period: float = PERIOD_S) -> None:
        self.database = database
        self.period = period
        self.runs = 0  # checkpoints run
        self._woken = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the running thread's

    @property
    def running(self) -> bool:
        """True while its thread runs (from the first write until the engine is disposed)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wake(self) -> None:
        """A write committed (or is committing): checkpoint within `period`; the thread starts on the first."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._stop = threading.Event()
                    self._thread = threading.Thread(target=self._run, args=(self._stop,), name="sqlite-checkpoints",
                                                    daemon=True)
                    self._thread.start()
        self._woken.set()

    def stop(self) -> None:
        """End the thread (after a checkpoint under way); a later write starts another."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._woken.set()
        if thread is not None:
            thread.join(10)

    def _run(self, stop: threading.Event) -> None:
        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._woken.wait()
                # the commit that woke it ends meanwhile, and later ones share this checkpoint
                if stop.wait(self.period):
                    return
                self._woken.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # another process checkpointing, the file gone: the next write wakes it
                    log.debug("passive checkpoint of %s: %s", self.database, exc)
                    continue
                self.runs += 1
        finally:
            conn.close()


_CHECKPOINTERS: WeakKeyDictionary[Engine, Checkpointer] = WeakKeyDictionary()


def checkpoint_beside_writes(engine: Engine, database: str) -> Checkpointer:
    """Give `engine`'s write transactions (those marked `conn.info["write"]`) a Checkpointer of `database`, stopped
    when the engine is disposed."""
    checkpointer = Checkpointer(database)

    @event.listens_for(engine, "commit")
    def _written(conn: Any) -> None:
        if conn.info.get("write"):
            checkpointer.wake()

    @event.listens_for(engine, "engine_disposed")
    def _disposed(_engine: Engine) -> None:
        checkpointer.stop()

    _CHECKPOINTERS[engine] = checkpointer
    return checkpointer


def checkpointer_of(engine: Engine) -> Checkpointer | None:
    """The Checkpointer `checkpoint_beside_writes` gave `engine` (None: an in-memory database)."""
    return _CHECKPOINTERS.get(engine)
