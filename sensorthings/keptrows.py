"""Pages of rows kept while every table they were read from stands, so that a page read again after a write
elsewhere reads no rows.

The expanded Things (`Things?$expand=Locations,Datastreams($expand=Observations($top=1))`) change with every
Observation written, but their page of Things does not: the response cache computes the answer again after each
write, the entities' JSON mostly from their fragments (sensorthings.fragments), and reading the page's rows was a
sixth of that. Kept here, the rows stand while the versions of every table their statement read hold (the Things
table, and what a filter or the hiding of internal entities reads). Pages of Observations are not kept here: their
table changes with every write (on SQLite sensorthings.appended extends them instead).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apicommon.lru import SizedLRU
from sensorthings.store.versions import ALL, Versions, holds, stamp

ROW_BYTES = 2_000  # per kept row: its row mapping, counted as sensorthings.appended counts a row with its JSON


@dataclass(frozen=True, slots=True)
class KeptRows:
    """A page's rows (one more than the page: whether more follow), its count when asked for, and the versions of
    the tables it was read from."""

    basis: Versions
    rows: tuple[Mapping[str, Any], ...]
    count: int | None
    read: frozenset[str]  # an answer built from them depends on these tables too


class KeptRowsCache:
    """Kept pages of rows by request shape, bounded by their rows."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._items: SizedLRU[KeptRows] = SizedLRU(max_bytes, lambda k: ROW_BYTES * (len(k.rows) + 1))
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, now: Mapping[str, int]) -> KeptRows | None:
        """The rows kept for `key` if no table they were read from has been written since, by the versions `now`."""
        found = self._items.get(key, lambda k: holds(k.basis, now))
        # counted without a lock: a statistic, and a lost increment under a race does no harm
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: Hashable, rows: Sequence[Mapping[str, Any]], count: int | None, read: set[str],
            now: Mapping[str, int]) -> None:
        """Keep a page's rows read from the tables `read` at the versions `now`; not when raw SQL was read (what it
        depends on is unknown)."""
        if ALL in read or not read:
            return
        self._items.put(key, KeptRows(stamp(read, now, ()), tuple(rows), count, frozenset(read)))

    def stats(self) -> dict[str, int]:
        """Hits, misses, entries and bytes held."""
        entries, size = self._items.stats()
        return {"hits": self.hits, "misses": self.misses, "entries": entries, "bytes": size}
