"""A response cache for reads, exact under concurrent writers.

Each entry remembers the change versions of the tables its answer was read from
(sensorthings.store.versions: kept by the database, raised by every commit that writes a table,
in any process). A read finds an entry while those versions stand: a new Observation makes
every answer built from Observations fresh at once and leaves the cached Things alone.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from sensorthings.store.versions import holds

Versions = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Entry:
    """A cached response and the table versions it was read at."""

    versions: Versions
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    etag: str


class ResponseCache:
    """A bounded LRU of responses keyed by request, checked against the tables' current versions."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entry: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._flights: dict[tuple, tuple[threading.Lock, list[int]]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, now: Mapping[str, int]) -> Entry | None:
        """The entry for `key` if no table it was read from has been written since (counted as a hit)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not holds(entry.versions, now):
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    @contextmanager
    def computing(self, key: tuple) -> Iterator[None]:
        """Held while one request computes the answer for `key`, counted as a miss.

        The same request arriving meanwhile waits, then looks again (`get`): after a write, a crowd
        of readers costs one query, not one each. A waiter takes the answer only if it was read at
        the versions the waiter itself saw, so waiting never makes an answer stale.
        """
        with self._lock:
            self.misses += 1
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = (threading.Lock(), [0])
            flight[1][0] += 1
        try:
            with flight[0]:
                yield
        finally:
            with self._lock:
                flight[1][0] -= 1
                if flight[1][0] == 0:
                    del self._flights[key]

    def put(self, key: tuple, versions: Versions, status: int, body: bytes, headers: dict[str, str]) -> Entry:
        """Remember a response; large ones are not kept."""
        etag = '"' + hashlib.blake2b(repr(versions).encode() + b"\0" + body, digest_size=12).hexdigest() + '"'
        entry = Entry(versions, status, body, tuple(headers.items()), etag)
        if len(body) > self.max_entry:
            return entry
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[key] = entry
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)
        return entry

    def stats(self) -> dict[str, int]:
        """Hits, misses, entries and bytes held."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries), "bytes": self._bytes}
