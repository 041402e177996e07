"""Pages of Observations kept with their rows, so that a page read again after new Observations were written
reads only those.

`Observations?$orderby=phenomenonTime desc&$top=100` changes with every Observation written, to any Datastream:
under a city's steady writes the response cache computes it again after nearly every one. Read again, its page is
the old page and the rows written since, sorted together and cut to size, provided that
- no Observation already written was updated or deleted since (sensorthings.store.versions.REWRITTEN),
- nothing else the page was read from has changed (its tables' versions),
- the rows written since can be told apart from the others, and
- Python orders the sort keys as the database does (numbers, times, text; no NULLs; one kind per key).

On SQLite the rows written since are those above the highest id the page saw: one writer at a time, and each new
row's id is above every committed one (sensorthings.store.sqlite.insert_observations, SQLite's own rowid). On
PostgreSQL a sequence hands out ids before commit, so a row committed later may have a lower id: there the page
keeps the snapshot it was read after (`Snapshot`), and the rows written since are those whose writing transaction
(`xmin`) that snapshot did not see, sought among the rows that sort before the page's last one (`unseen`),
where an index on the sort keys finds them. That needs sort keys the database and Python order alike without a
collation and that are never NULL (a NULL sorts first there and would escape the seek): `seeks`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    String,
    Text,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from apicommon.lru import SizedLRU
from sensorthings.store.versions import ALL, REWRITTEN, SHOWN, Versions, holds

HIDING = frozenset({"things", "datastreams", "multi_datastreams"})  # what sensorthings.access reads for Observations
ROW_BYTES = 2_000  # per kept row: a row mapping of 15 columns and its sort keys, and an Observation's JSON


def appends_by_id(conn: Connection) -> bool:
    """True where new Observations have ids above every committed one (one writer at a time: SQLite)."""
    return conn.dialect.name == "sqlite"


def seeks(keys: Sequence[tuple[Any, bool]]) -> bool:
    """PostgreSQL: True when a page ordered by `keys` (expression, descending) can be extended by `Snapshot.unseen`:
    every key a column that holds no NULLs and no text (compared by a collation Python does not know)."""
    return all(getattr(k, "table", None) is not None and not getattr(k, "nullable", True)
               and not isinstance(k.type, String) for k, _ in keys)


_WRAP = 1 << 32  # PostgreSQL's xmin is a transaction id modulo 2^32; a snapshot's are whole (xid8)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """PostgreSQL: the transactions a snapshot sees: those below `xmax` but the ones in progress (`xip`)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, value: str) -> Snapshot:
        """From `pg_current_snapshot()`'s text, `xmin:xmax:xip,xip…`."""
        low, high, running = value.split(":")
        return cls(int(low), int(high), frozenset(int(x) for x in running.split(",") if x))

    def within(self, other: Snapshot) -> bool:
        """True when every transaction this snapshot sees, `other` sees too."""
        return self.xmax <= other.xmax and all(x in self.xip for x in other.xip if x < self.xmax)

    def unseen_params(self) -> dict[str, Any]:
        """The values `unseen`'s condition is bound to."""
        return {"snap_xmax": self.xmax % _WRAP, "snap_xip": [x % _WRAP for x in self.xip]}


def unseen(table: FromClause) -> ColumnElement[bool]:
    """The rows of `table` whose writing transaction a snapshot did not see (bound by `Snapshot.unseen_params`):
    begun at or after its `xmax` or in progress then. Compared as PostgreSQL compares transaction ids, modulo 2^32
    within half of it: a row frozen long ago may pass for unseen too, which costs a row read again and taken for one
    the page has already, never a row missed."""
    xid = f"CAST(CAST({table.name}.xmin AS TEXT) AS BIGINT)"
    return text(f"(mod({xid} - :snap_xmax + {_WRAP}, {_WRAP}) < {_WRAP // 2} OR {xid} = ANY(:snap_xip))").bindparams(
        bindparam("snap_xmax", type_=BigInteger), bindparam("snap_xip", type_=ARRAY(BigInteger)))


# the snapshot a page's rows are read after (no table read: it stands on nothing)
SNAPSHOT: Select = select(cast(func.pg_current_snapshot(), Text))
Mark = int | Snapshot  # what a kept page was read at: SQLite the highest Observation id, PostgreSQL a snapshot


def no_newer(page: Mark, now: Mark) -> bool:
    """True when a page read at `page` holds nothing a read at `now` cannot see."""
    if isinstance(page, Snapshot):
        return isinstance(now, Snapshot) and page.within(now)
    return isinstance(now, int) and page <= now


@dataclass(frozen=True, slots=True)
class KeptPage:
    """A page's rows (one more than the page: whether more follow) and their JSON, as read at `mark`."""

    basis: Versions  # the versions of what the page was read from besides the Observations table
    mark: Mark
    rows: tuple[Mapping[str, Any], ...]
    keys: tuple[tuple[Any, ...], ...]  # each row's sort keys (`sort_keys`)
    values: tuple[Any, ...]  # the JSON of rows[:top], encoded (orjson.Fragment)
    count: int | None  # `@iot.count`, when asked for
    directions: tuple[bool, ...]  # per sort key (`_k0`, `_k1` …): descending
    kinds: tuple[str, ...] | None  # per sort key: the kind of its values (None: Python cannot sort them in)
    read: frozenset[str]  # the tables it was read from: an answer built from it depends on them too


def basis(read: set[str], now: Mapping[str, int], hidden: bool) -> Versions | None:
    """The versions a page read from `read` at `now` stands on (every table but the Observations, whose new rows
    are read as they come, and REWRITTEN); None when it cannot be kept (raw SQL: what it read is unknown).
    `hidden`: the page read the Things and (Multi)Datastreams only to hide what a reader without the read role may
    not see (sensorthings.access): it stands on SHOWN instead of them."""
    if ALL in read:
        return None
    names = (read - {"observations"}) | {REWRITTEN}
    if hidden:
        names = (names - HIDING) | {SHOWN}
    return tuple((name, now.get(name, 0)) for name in sorted(names))


def kinds(rows: Sequence[Mapping[str, Any]], keys: int) -> tuple[str, ...] | None:
    """The kind of each sort key (`_k0`, `_k1` …) of `rows` when Python orders them as the database does: one kind
    per key, no NULLs; None otherwise."""
    out = []
    for i in range(keys):
        found = {_kind(r[f"_k{i}"]) for r in rows}
        if len(found) != 1 or None in found:
            return None
        out.append(found.pop())  # type: ignore[arg-type]
    return tuple(out)


def sort_keys(rows: Sequence[Mapping[str, Any]], keys: int) -> tuple[tuple[Any, ...], ...]:
    """Each row's sort keys (`_k0`, `_k1` …) as a tuple."""
    names = [f"_k{i}" for i in range(keys)]
    return tuple(tuple(r[n] for n in names) for r in rows)


def merged(kept: KeptPage, new: Sequence[Mapping[str, Any]], size: int) -> list[tuple[tuple[Any, ...], int]] | None:
    """The first `size` of a kept page's rows and new rows sorted in by the same keys, each as (its keys, its index
    in `kept.rows`, or -1 - its index in `new`); None when Python cannot order the new rows' keys as the database
    did (see `kinds`)."""
    if kept.kinds is None or kinds(new, len(kept.directions)) != kept.kinds:
        return None
    entries = [*zip(kept.keys, range(len(kept.keys)), strict=True),
               *((k, -1 - j) for j, k in enumerate(sort_keys(new, len(kept.directions))))]
    directions = set(kept.directions)
    if len(directions) == 1:  # the common case: one sort, on rows mostly in order already
        entries.sort(key=lambda e: e[0], reverse=directions.pop())
    else:  # least significant key first: Python's sort is stable, reversed or not
        for i in reversed(range(len(kept.directions))):
            entries.sort(key=lambda e: e[0][i], reverse=kept.directions[i])
    return entries[:size]


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, datetime):
        return "time" if value.tzinfo is not None else None
    if isinstance(value, str):
        return "text"  # SQLite's BINARY collation orders UTF-8 as Python orders code points
    return None


class KeptPages:
    """Kept pages by request shape, bounded by their bytes."""

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._items: SizedLRU[KeptPage] = SizedLRU(max_bytes, lambda p: ROW_BYTES * len(p.rows))
        self.extended = 0
        self.read = 0

    def get(self, key: Hashable, now: Mapping[str, int], mark: Mark | None = None) -> KeptPage | None:
        """The page kept for `key` if nothing it stands on has changed at `now` and it is no newer than a read at
        `mark` (None: the caller asks `no_newer` itself)."""
        return self._items.get(key, lambda p: (mark is None or no_newer(p.mark, mark)) and holds(p.basis, now))

    def put(self, key: Hashable, page: KeptPage) -> None:
        """Keep a page, unless one read later on the same basis is kept already (after a delete, a page read later
        may have a lower highest id: its basis tells it apart)."""
        found = self._items.get(key)
        if found is None or found.basis != page.basis or no_newer(found.mark, page.mark):
            self._items.put(key, page)

    def stats(self) -> dict[str, int]:
        """Pages read whole, pages extended by new rows, entries and bytes held."""
        entries, size = self._items.stats()
        return {"read": self.read, "extended": self.extended, "entries": entries, "bytes": size}
