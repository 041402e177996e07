"""Writers of one SQLite file take turns by an operating-system lock, in every process, instead of SQLite's
busy handler.

SQLite lets one writer in at a time; the others retry on its busy handler, which sleeps 1, 2, 5 … up to 100 ms
between looks. With two HTTP workers (and the bridge) each committing hundreds of times a second, a writer could
sleep through many turns: single POSTs on SQLite had p99 873 ms at 1,445 a second. A writer waiting here looks
again within a millisecond. The lock (`flock` on a file beside the database) is taken before `BEGIN IMMEDIATE` and
let go when the connection returns to the pool (after its commit or rollback), or when its process ends.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event

try:
    import fcntl
except ImportError:  # not on Windows: there SQLite's busy handler alone orders the writers
    fcntl = None  # type: ignore[assignment]

HELD = "udp_write_turn"  # in a pooled connection's info while it holds the lock: (waited from, taken at)
_FD = "udp_write_turn_fd"
WAIT_S = 30.0  # as long as the busy timeout: then the writer gives up as SQLite would


@dataclass
class Turns:
    """This process's write turns on one file: how many, how long they waited for the lock and how long they held it
    (the lock bounds SQLite's ingest: held most of the time, the writers wait on each other, not on the CPU)."""

    turns: int = 0
    waited_s: float = 0.0
    held_s: float = 0.0
    longest_s: float = 0.0

    def stats(self) -> dict[str, Any]:
        """What /health shows under `ingest.write_turns`."""
        return {"turns": self.turns, "waited_ms": round(self.waited_s * 1000, 1),
                "held_ms": round(self.held_s * 1000, 1), "longest_held_ms": round(self.longest_s * 1000, 1)}


def take_turns(engine: Engine, database: str) -> None:
    """Make `engine`'s write transactions (those marked `conn.info["write"]`) take turns with every other
    process's on the file `database`, counted in its `turns_of`."""
    if fcntl is None:
        return
    path = f"{database}-write.lock"
    turns = Turns()

    @event.listens_for(engine, "begin")
    def _take(conn: Any) -> None:
        # registered before the engine's own BEGIN IMMEDIATE listener: the turn first, then the transaction
        if not conn.info.get("write"):
            return
        info = conn.connection.info
        fd = info.get(_FD)
        if fd is None:
            fd = info[_FD] = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        asked = time.perf_counter()
        _lock(fd)
        info[HELD] = (asked, time.perf_counter())

    @event.listens_for(engine, "checkin")
    def _give(_dbapi_conn: Any, record: Any) -> None:
        held = record.info.pop(HELD, None)
        if held is not None:
            fcntl.flock(record.info[_FD], fcntl.LOCK_UN)
            # counted without a lock: a statistic (the GIL keeps each sum whole; a lost turn under a race is harmless)
            asked, taken = held
            holding = time.perf_counter() - taken
            turns.turns += 1
            turns.waited_s += taken - asked
            turns.held_s += holding
            turns.longest_s = max(turns.longest_s, holding)

    @event.listens_for(engine, "close")
    def _close(_dbapi_conn: Any, record: Any) -> None:
        record.info.pop(HELD, None)
        fd = record.info.pop(_FD, None)
        if fd is not None:
            os.close(fd)  # lets go of the lock too

    _TURNS[engine] = turns


_TURNS: WeakKeyDictionary[Engine, Turns] = WeakKeyDictionary()


def turns_of(engine: Engine) -> Turns | None:
    """The write turns `take_turns` counts for `engine` (None: it takes none: an in-memory database, or no file
    locks on the platform)."""
    return _TURNS.get(engine)


def _lock(fd: int) -> None:
    """Take the exclusive lock on `fd`, looking again every millisecond at most (a blocking flock cannot time
    out), within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    delay = 0.0001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            # what SQLite says when its busy timeout runs out
            raise sqlite3.OperationalError(f"database is locked (waited {WAIT_S:g} s for another writer)")
        time.sleep(delay)
        delay = min(delay * 2, 0.001)
