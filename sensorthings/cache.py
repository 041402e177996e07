"""A response cache for reads, exact under concurrent writers.

Each entry remembers the change versions of the tables its answer was read from
(sensorthings.store.versions: kept by the database, raised by every commit that writes a table,
in any process). A read finds an entry while those versions stand: a new Observation makes
every answer built from Observations fresh at once and leaves the cached Things alone.

While writes keep coming, an answer that every write changes (the newest Observations of all) is computed
again and again. Requests for it share the computations in flight (`Flight`): one that gathers the
requests arriving until it starts reading (then the versions it reads are at least as new as theirs), and
those already reading at the very versions a request saw. Computations overlap, two at a time for one answer
(`turn`): a request never queues behind one that began before it came, and a large answer every write changes
cannot take every thread and the CPU from the writers (measured: writes stored under the expanded Things 266–268 of
300/s with no bound, 296 with two).

Only a client that says it takes an answer behind the data (`Cache-Control: max-stale`) gets one: `recent`, the
entry as it stands if it was known current within the seconds it allows, whatever was written since; keyed as every
entry is (who may see internal data among it), so such an answer is never one its client could not have read then.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from apicommon.lru import SizedLRU
from sensorthings.appended import KeptPages
from sensorthings.fragments import FragmentCache
from sensorthings.keptrows import KeptRowsCache
from sensorthings.store.versions import Versions, holds


@dataclass(eq=False)
class Entry:
    """A cached response and the table versions it was read at."""

    versions: Versions
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    etag: str
    # time.monotonic() when the answer was last known to be current: computed (at versions read moments before), or
    # found standing by `get`
    checked: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Flight:
    """One computation of a request's answer and the requests that take it: its future gives the entry (None
    when the answer is not one to keep: those who waited compute their own)."""

    key: tuple
    future: Future[Entry | None] = field(default_factory=Future)
    basis: tuple | None = None  # the versions it reads at, once it has begun (None: still gathering)
    seen: dict[str, int] | None = None  # the newest versions the requests that joined it while gathering had read


def newest(a: Mapping[str, int] | None, b: Mapping[str, int]) -> dict[str, int]:
    """The newer of two reads of the versions, key by key (versions only rise: the data read after both is at
    least as new as either)."""
    if a is None:
        return dict(b)
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, -1):
            out[k] = v
    return out


def basis(now: Mapping[str, int], rows: tuple[str, ...]) -> tuple:
    """What of `now` a request's answer can depend on: every table's version and those of its row keys (`now`
    may hold other requests' row keys too: they were read together)."""
    return (tuple(sorted((k, v) for k, v in now.items() if "@" not in k)), tuple(now.get(r, 0) for r in rows))


class ResponseCache:
    """A bounded LRU of responses keyed by request, checked against the tables' current versions."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_entry: int = 4 * 1024 * 1024, overlap: int = 2) -> None:
        self.max_entry = max_entry
        # the JSON of single entities of a page, for answers computed again (a quarter of the budget)
        self.fragments = FragmentCache(max_bytes // 4)
        # pages of Observations with their rows, extended by the rows written since (an eighth)
        self.pages: KeptPages | None = KeptPages(max_bytes // 8)
        # pages of rows of other sets, while what they were read from stands (a sixteenth)
        self.rows = KeptRowsCache(max_bytes // 16)
        self.overlap = overlap  # computations of one answer at once, at most
        self._entries: SizedLRU[Entry] = SizedLRU(max_bytes, lambda e: len(e.body))
        self._lock = threading.Lock()  # the counters and the flights
        self._gathering: dict[tuple, Flight] = {}
        self._reading: dict[tuple, list[Flight]] = {}
        self._slots: dict[tuple, list] = {}  # key -> [a semaphore of `overlap`, how many hold or wait for it]
        self.hits = 0
        self.misses = 0
        self.shared = 0  # misses answered by another request's computation
        self.stale = 0  # answers given behind the data, to clients taking them (`recent`)
        self._costs: dict[tuple, float] = {}  # key -> the CPU seconds its last computation took

    def get(self, key: tuple, now: Mapping[str, int]) -> Entry | None:
        """The entry for `key` if no table it was read from has been written since (counted as a hit)."""
        entry = self._entries.get(key, lambda e: holds(e.versions, now))
        if entry is not None:
            entry.checked = time.monotonic()
            with self._lock:
                self.hits += 1
        return entry

    def recent(self, key: tuple, max_age: float) -> tuple[Entry, float] | None:
        """The entry for `key` and its age (seconds since it was last known current) if that is at most `max_age`,
        whatever has been written since (counted as stale): for a client that said it takes such an answer."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = time.monotonic() - entry.checked
        if age > max_age:
            return None
        with self._lock:
            self.stale += 1
        return entry, age

    def join(self, key: tuple, now: Mapping[str, int], rows: tuple[str, ...]) -> Flight | None:
        """The computation of `key` whose answer is fresh for a request that read the versions `now`, joined (a
        miss): one reading at those versions, or the one still gathering; None when there is none."""
        with self._lock:
            return self._join(key, basis(now, rows), now)

    def board(self, key: tuple, now: Mapping[str, int], rows: tuple[str, ...]) -> tuple[Flight, bool]:
        """A computation of `key` to take the answer from (False) or, when none can serve, a new one that this
        request leads (True): then `turn`, `depart`, `read_at` and `land` it."""
        with self._lock:
            flight = self._join(key, basis(now, rows), now)
            if flight is not None:
                return flight, False
            flight = self._gathering[key] = Flight(key)
            return flight, True

    def _join(self, key: tuple, seen: tuple, now: Mapping[str, int]) -> Flight | None:
        # under the lock; one reading already ends sooner than one still gathering
        self.misses += 1
        flight = next((f for f in self._reading.get(key, ()) if f.basis == seen), None)
        if flight is None and (flight := self._gathering.get(key)) is not None:
            flight.seen = newest(flight.seen, now)
        if flight is not None:
            self.shared += 1
        return flight

    @contextmanager
    def turn(self, key: tuple) -> Iterator[None]:
        """Held by a leader from before it departs until it lands: at most `overlap` computations of one answer
        run at once. Waiting for a turn keeps the flight gathering, so a bigger crowd shares it, and an answer that
        every write changes (a large one above all) cannot take every thread and the CPU from the writers."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = [threading.Semaphore(self.overlap), 0]
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._slots[key]

    def depart(self, flight: Flight) -> dict[str, int] | None:
        """Stop gathering requests for `flight` (later ones start another); the newest versions those who joined
        had read (None: nobody joined): the leader reads at versions no older than theirs (`newest`)."""
        with self._lock:
            if self._gathering.get(flight.key) is flight:
                del self._gathering[flight.key]
            return flight.seen

    def read_at(self, flight: Flight, now: Mapping[str, int], rows: tuple[str, ...]) -> None:
        """Note the versions `flight` reads at: a request that saw the same ones takes its answer."""
        with self._lock:
            flight.basis = basis(now, rows)
            self._reading.setdefault(flight.key, []).append(flight)

    def land(self, flight: Flight, entry: Entry | None) -> None:
        """End `flight` with its entry (None: an answer not kept, or a failure): those who joined go on."""
        with self._lock:
            if self._gathering.get(flight.key) is flight:
                del self._gathering[flight.key]
            reading = self._reading.get(flight.key)
            if reading is not None and flight in reading:
                reading.remove(flight)
                if not reading:
                    del self._reading[flight.key]
        flight.future.set_result(entry)

    def note_cost(self, key: tuple, seconds: float) -> None:
        """Note the CPU seconds a computation of `key` took."""
        if len(self._costs) > 4096 and key not in self._costs:
            self._costs.clear()  # bounded: a client inventing requests must not grow it
        self._costs[key] = seconds

    def cost_of(self, key: tuple) -> float | None:
        """The CPU seconds the last computation of `key` took (None: none noted)."""
        return self._costs.get(key)

    def computing(self, key: tuple) -> bool:
        """True while a computation of `key` gathers, reads, or waits for its turn."""
        with self._lock:
            return key in self._slots or key in self._gathering or key in self._reading

    def put(self, key: tuple, versions: Versions, status: int, body: bytes, headers: dict[str, str]) -> Entry:
        """Remember a response; large ones are not kept."""
        # the versions tell the data apart; the body's CRC only answers at the same versions (another configuration,
        # another release): hashing a large body cost more than a third of computing it again after a write (the
        # expanded Things: 0.56 ms of their 531 kB, of 1.6 ms)
        etag = '"' + hashlib.blake2b(f"{versions!r}\0{zlib.crc32(body)}".encode(), digest_size=12).hexdigest() + '"'
        entry = Entry(versions, status, body, tuple(headers.items()), etag)
        if len(body) <= self.max_entry:
            self._entries.put(key, entry)
        return entry

    def stats(self) -> dict[str, Any]:
        """Hits, misses (of them shared: answered by another request's computation), stale answers given to clients
        taking them, entries and bytes held; the same of the fragments; pages read whole and extended
        (sensorthings.appended); kept rows (sensorthings.keptrows)."""
        entries, size = self._entries.stats()
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "shared": self.shared, "stale": self.stale,
                    "entries": entries, "bytes": size, "fragments": self.fragments.stats(),
                    "pages": None if self.pages is None else self.pages.stats(), "rows": self.rows.stats()}
