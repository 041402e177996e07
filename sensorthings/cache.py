"""A response cache for reads, exact under concurrent writers.

Each entry remembers the change versions of the tables its answer was read from
(sensorthings.store.versions: kept by the database, raised by every commit that writes a table,
in any process). A read finds an entry while those versions stand: a new Observation makes
every answer built from Observations fresh at once and leaves the cached Things alone.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from apicommon.lru import SizedLRU
from sensorthings.store.versions import as_new, holds

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
        self.max_entry = max_entry
        self._entries: SizedLRU[Entry] = SizedLRU(max_bytes, lambda e: len(e.body))
        self._lock = threading.Lock()  # the counters and the computations in flight
        self._flights: dict[tuple, tuple[threading.Lock, list[int]]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, now: Mapping[str, int], or_newer: bool = False) -> Entry | None:
        """The entry for `key` if no table it was read from has been written since (counted as a hit).

        `or_newer`: also an entry read at later versions than `now` (versions only grow), for a request that
        waited while another computed its answer: an answer read after the request came is fresh for it."""
        entry = self._entries.get(key, lambda e: holds(e.versions, now) or (or_newer and as_new(e.versions, now)))
        if entry is not None:
            with self._lock:
                self.hits += 1
        return entry

    @contextmanager
    def computing(self, key: tuple) -> Iterator[bool]:
        """Held while one request computes the answer for `key`, counted as a miss; yields whether it waited.

        The same request arriving meanwhile waits, then looks again (`get(or_newer=True)`): after a write, a
        crowd of readers costs one query, not one each. A waiter takes the answer only if it was read at the
        versions the waiter itself saw or later, so waiting never makes an answer stale. One that finds none
        (writes went on while it waited) computes with versions read anew, so that the crowd that gathered
        behind it takes its answer: while writes keep coming, a request costs one computation per crowd,
        not one each in a row.
        """
        with self._lock:
            self.misses += 1
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = (threading.Lock(), [0])
            flight[1][0] += 1
        try:
            waited = not flight[0].acquire(blocking=False)
            if waited:
                flight[0].acquire()
            try:
                yield waited
            finally:
                flight[0].release()
        finally:
            with self._lock:
                flight[1][0] -= 1
                if flight[1][0] == 0:
                    del self._flights[key]

    def put(self, key: tuple, versions: Versions, status: int, body: bytes, headers: dict[str, str]) -> Entry:
        """Remember a response; large ones are not kept."""
        etag = '"' + hashlib.blake2b(repr(versions).encode() + b"\0" + body, digest_size=12).hexdigest() + '"'
        entry = Entry(versions, status, body, tuple(headers.items()), etag)
        if len(body) <= self.max_entry:
            self._entries.put(key, entry)
        return entry

    def stats(self) -> dict[str, int]:
        """Hits, misses, entries and bytes held."""
        entries, size = self._entries.stats()
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": entries, "bytes": size}
