"""Which node runs what only one node may (the indicator engine, the re-imports, the demo's replay, a node's bridge
session): the holder of a named lock in the store, taken again by another node within seconds when its holder
dies.

PostgreSQL: a session advisory lock on a connection of its own, named after the node (`application_name`), so
that any node can tell who holds it and the lock goes with the holder's process or its database connection.
SQLite (nodes on one machine): an exclusive `flock` on a file beside the store, holding the holder's name.
A holder whose lock connection fails stops its work at once: the lock may be another node's already.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sensorthings.store.postgres import libpq_url

log = logging.getLogger("sensorthings.store.leadership")

EVERY_S = 2.0  # how often a node that does not hold a lock tries it, and a holder checks it still has it
_SPACE = 0x7564706C  # "udpl": the first key of the platform's advisory locks


def node_name(port: int | None = None) -> str:
    """This node's name: UDP_NODE, else the host's name and the HTTP port (stable across restarts)."""
    return os.environ.get("UDP_NODE") or f"{socket.gethostname()}:{port or 0}"


def _key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31  # a signed int4, as pg_advisory_lock(int, int) takes


def _is_postgres(store_url: str) -> bool:
    return store_url.startswith(("postgresql", "postgres://"))


def _lock_file(store_url: str, name: str) -> Path | None:
    """The SQLite store's lock file for `name`; None for an in-memory store (one process: always the holder)."""
    path = store_url.split("///", 1)[1] if "///" in store_url else ""
    if not path or path == ":memory:":
        return None
    return Path(path.split("?", 1)[0]).with_name(Path(path).name + f".{name}.lock")


class _PgLock:
    def __init__(self, store_url: str, name: str, node: str) -> None:
        self.dsn, self.key, self.node = libpq_url(store_url), _key(name), node
        self.conn: Any = None

    def _session(self) -> Any:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, autocommit=True, application_name=f"udp {self.node}",
                                        connect_timeout=5, keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                        keepalives_count=2)
        return self.conn

    def try_take(self, shared: bool = False) -> bool:
        how = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        return bool(self._session().execute(f"SELECT {how}(%s, %s)", (_SPACE, self.key)).fetchone()[0])

    def take(self, within: float) -> bool:
        """Wait for the lock, at most `within` seconds: meanwhile the holder sees it wanted."""
        import psycopg

        conn = self._session()
        try:
            conn.execute(f"SET lock_timeout = {int(within * 1000)}")
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (_SPACE, self.key))
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.execute("SET lock_timeout = 0")

    def still_held(self) -> None:
        """Raises when the session is gone (a session's advisory lock lasts as long as the session)."""
        self.conn.execute("SELECT 1")

    def wanted(self) -> bool:
        """Whether another session waits for the lock."""
        row = self.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = "
                                "%s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 2 AND NOT granted",
                                (_SPACE, self.key & 0xFFFFFFFF)).fetchone()
        return bool(row[0])

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()  # the session ends: its advisory locks go with it
            self.conn = None


class _FileLock:
    def __init__(self, path: Path, node: str) -> None:
        self.path, self.node = path, node
        self.fh: Any = None

    def try_take(self, shared: bool = False) -> bool:
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        if not shared:  # the holder's name, for `holders`
            fh.seek(0)
            fh.truncate()
            fh.write(self.node)
            fh.flush()
        self.fh = fh
        return True

    def take(self, within: float) -> bool:
        """As `try_take` (nobody can see a wait on a file lock)."""
        return self.try_take()

    def still_held(self) -> None:
        """A lock on an open file lasts while it is open."""

    def wanted(self) -> bool:
        return False  # flock tells nobody who waits; the SQLite store runs its nodes on one machine

    def release(self) -> None:
        if self.fh is not None:
            with contextlib.suppress(OSError):
                self.fh.close()
            self.fh = None


class _NoLock:
    """An in-memory store: one process, always the holder."""

    def try_take(self, shared: bool = False) -> bool:
        return True

    def take(self, within: float) -> bool:
        return True

    def still_held(self) -> None:
        """Always."""

    def wanted(self) -> bool:
        return False

    def release(self) -> None:
        pass


def _lock(store_url: str, name: str, node: str) -> _PgLock | _FileLock | _NoLock:
    if _is_postgres(store_url):
        return _PgLock(store_url, name, node)
    path = _lock_file(store_url, name)
    return _FileLock(path, node) if path is not None else _NoLock()


class Lease:
    """Runs `start` while this node holds the lock `name`, and what `start` returned (how to stop what it started)
    when it loses it or stops; polled in a thread of its own. `yield_when_wanted`: hand the lock over as soon as
    another node waits for it (a dead node's bridge session, wanted back by that node restarted); `wait`: wait for
    the lock, so that a holder that yields when wanted sees this node wants it."""

    def __init__(self, store_url: str, name: str, start: Callable[[], Callable[[], None]],
                 node: str | None = None, every: float = EVERY_S, yield_when_wanted: bool = False,
                 wait: bool = False) -> None:
        self.name, self.node, self.every = name, node or node_name(), every
        self._start = start
        self._stop: Callable[[], None] | None = None  # while held
        self._lock = _lock(store_url, name, self.node)
        self._yield, self._wait = yield_when_wanted, wait
        self._failed = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"udp-lease-{name}", daemon=True)

    @property
    def held(self) -> bool:
        """Whether this node holds the lock (and runs the work)."""
        return self._stop is not None

    def start(self) -> Lease:
        """Try for the lock now (a node alone runs the work before it serves), then from the thread."""
        self._attempt()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the work if it runs here and give the lock up."""
        self._done.set()
        self._thread.join(30)

    def _run(self) -> None:
        # waiting for the lock already takes its time; after a failure (the database away), the interval
        while not self._done.wait(0 if self._wait and not self.held and not self._failed else self.every):
            self._attempt()
        if self.held:
            self._lose()
        self._lock.release()

    def _attempt(self) -> None:
        self._failed = False
        try:
            self._step()
        except Exception as exc:  # the database away: whatever ran here may now run elsewhere
            self._failed = True
            if self.held:
                log.warning("%s: lost the lock %r (%s); stopping it here", self.node, self.name, exc)
                self._lose()
            self._lock.release()

    def _step(self) -> None:
        if not self.held:
            if self._lock.take(self.every) if self._wait else self._lock.try_take():
                log.info("%s: holds %r", self.node, self.name)
                try:
                    self._stop = self._start()
                except Exception:
                    log.exception("%s: starting %r", self.node, self.name)
                    self._lock.release()  # another node may do better
            return
        self._lock.still_held()
        if self._yield and self._lock.wanted():
            log.info("%s: hands %r over", self.node, self.name)
            self._lose()
            self._lock.release()

    def _lose(self) -> None:
        stop, self._stop = self._stop, None
        try:
            if stop is not None:
                stop()
        except Exception:
            log.exception("%s: stopping %r", self.node, self.name)


def holders(store_url: str, names: list[str]) -> dict[str, str | None]:
    """The node holding each lock now (None: no one)."""
    if _is_postgres(store_url):
        import psycopg

        with psycopg.connect(libpq_url(store_url), autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT l.objid::bigint, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = %s::bigint::oid AND l.objsubid = 2 AND l.granted",
                (_SPACE,)).fetchall()
        found = {int(objid): str(app).removeprefix("udp ") for objid, app in rows}
        return {n: found.get(_key(n) & 0xFFFFFFFF) for n in names}
    return {n: _file_holder(store_url, n) for n in names}


def _file_holder(store_url: str, name: str) -> str | None:
    path = _lock_file(store_url, name)
    if path is None:
        return node_name()
    try:
        fh = path.open("r")
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read() or None  # held: the holder wrote its name
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


class Taken(Exception):
    """The lock is another node's in a way that excludes this one."""


class Claim:
    """A lock held for as long as this process lives or until `close()`: exclusive, or shared with the other nodes
    that claim it shared (`pg_try_advisory_lock_shared`, `LOCK_SH`); Taken when another node's excludes it."""

    def __init__(self, store_url: str, name: str, node: str, shared: bool) -> None:
        self._lock = _lock(store_url, name, node)
        if not self._lock.try_take(shared):
            self._lock.release()
            raise Taken(name)

    def close(self) -> None:
        """Give it up."""
        self._lock.release()


@contextlib.contextmanager
def exclusive(store_url: str, name: str) -> Iterator[None]:
    """One node at a time in the block (waits for the others): start-up work that must not run twice at once,
    such as making the `sensors:` Things."""
    if _is_postgres(store_url):
        import psycopg

        with psycopg.connect(libpq_url(store_url), autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (_SPACE, _key(name)))
            yield  # the lock goes with the connection
        return
    path = _lock_file(store_url, name)
    if path is None:
        yield
        return
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
