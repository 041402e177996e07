"""The change versions read from the event loop, so that a cached answer is served without a thread.

A GET answered from the response cache needs only the tables' versions (sensorthings.store.versions).
Reading them in a worker thread costs two thread hops and a turn at the GIL on each side of a database
round trip: under load more than the answer itself. Here they are read on the event loop: PostgreSQL over
an asynchronous connection of the worker's own, SQLite from its file directly (a read in WAL mode never waits
for a writer). Every caller gets versions read after it asked, so an answer found with them is as fresh as
one computed then.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Protocol
from urllib.parse import quote

from sensorthings.store.versions import current_sql

log = logging.getLogger("udp.sensorthings.versions")


class VersionWatch(Protocol):
    """Reads every table's change version without blocking the event loop for a round trip."""

    async def current(self, rows: tuple[str, ...] = ()) -> dict[str, int]:
        """Every table's versions and those of the row keys `rows`, read after this call began."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class PostgresVersions:
    """The versions over one asynchronous connection; callers share a read that started after they asked.

    Requests arriving while a read is in flight wait for the next one, which starts as soon as it ends: one
    round trip serves every request of a busy moment, and none gets versions older than its arrival.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: object | None = None
        self._next: asyncio.Future[dict[str, int]] | None = None
        self._next_rows: set[str] = set()  # the row keys the callers of the next read ask for
        self._task: asyncio.Task[None] | None = None

    async def current(self, rows: tuple[str, ...] = ()) -> dict[str, int]:
        """Every table's versions and those of the row keys `rows`, read after this call began."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run())
        self._next_rows.update(rows)
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        import psycopg

        while self._next is not None:
            # callers from now on wait for the next read: this one may have been asked for before they came
            waiting, self._next = self._next, None
            rows, self._next_rows = tuple(self._next_rows), set()
            try:
                if self._conn is None:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, connect_timeout=5, options="-c timezone=UTC")
                cursor = await self._conn.execute(current_sql("postgresql", len(rows)), rows,  # type: ignore[attr-defined]
                                                  prepare=True)
                waiting.set_result(dict(await cursor.fetchall()))
            except Exception as exc:  # noqa: BLE001 - the callers fall back to reading in a thread
                await self.close()
                waiting.set_exception(exc)
                waiting.exception()  # retrieved: a caller may have gone meanwhile

    async def close(self) -> None:
        """Release the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - it was broken already
                log.debug("closing the versions connection", exc_info=True)


class SqliteVersions:
    """The versions from the database file, on the event loop's thread (a few tens of microseconds)."""

    def __init__(self, path: str) -> None:
        # read-only, and never waiting long for a lock: a caller that cannot read falls back to a thread
        self._conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=0.05, check_same_thread=False)
        self._data_version: int | None = None
        self._read: dict[tuple[str, ...], dict[str, int]] = {}  # what was read since `_data_version`, by row keys

    async def current(self, rows: tuple[str, ...] = ()) -> dict[str, int]:
        """Every table's versions and those of the row keys `rows`, read now: read again only when another connection
        has committed since (`PRAGMA data_version`: this one never writes), else as read then. Reading them took a
        tenth of a worker's event loop serving cached answers."""
        data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:
            self._read.clear()
            self._data_version = data_version
        found = self._read.get(rows)
        if found is None:
            if len(self._read) > 1024:  # bounded: row keys come from requests
                self._read.clear()
            found = self._read[rows] = dict(self._conn.execute(current_sql("sqlite", len(rows)), rows).fetchall())
        return dict(found)  # the caller's to keep

    async def close(self) -> None:
        """Release the connection."""
        self._conn.close()


def watch(url: str) -> VersionWatch | None:
    """A reader of the versions of the store at `url`; None for an in-memory SQLite database (no file to read)."""
    if url.startswith(("postgresql", "postgres")):
        from sensorthings.store.postgres import libpq_url

        return PostgresVersions(libpq_url(url))
    if url.startswith("sqlite:///") and url not in ("sqlite:///:memory:",):
        return SqliteVersions(url[len("sqlite:///"):])
    return None
