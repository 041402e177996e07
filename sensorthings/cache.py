"""A response cache for reads, exact under concurrent writers.

Each entry remembers the database state it was computed in (a store-given token: on PostgreSQL
the text of `pg_current_snapshot()`, which changes whenever any transaction begins writing or
commits). A read whose token matches an entry's is answered from memory; any commit anywhere
changes the token, so no process ever serves data older than the database's. Dashboards that
poll the same URLs get their answers at memory speed; under constant ingest the cache simply
misses.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """A cached response and the database state it belongs to."""

    token: str
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    etag: str


class ResponseCache:
    """A bounded LRU of responses keyed by request, checked against the current database token."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entry: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, token: str) -> Entry | None:
        """The entry for `key` if it was computed in the state `token` names."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.token != token:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple, token: str, status: int, body: bytes, headers: dict[str, str]) -> Entry:
        """Remember a response; large ones are not kept."""
        etag = '"' + hashlib.blake2b(token.encode() + b"\0" + body, digest_size=12).hexdigest() + '"'
        entry = Entry(token, status, body, tuple(headers.items()), etag)
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
