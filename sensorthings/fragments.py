"""Entity fragments: each entity of a page kept as its JSON with its expansions, while what it was read from stands.

A write changes a whole answer but seldom a whole page: an Observation posted to one Datastream changes the
expanded Things (`Things?$expand=Locations,Datastreams($expand=Observations($top=1))`) in one Thing of a hundred.
So an answer the response cache must compute again reuses the JSON of every entity nothing under it has changed,
and reads only the others.

What stands under an entity is told in two parts:
- its *own* streams: a Thing owns its Datastreams and MultiDatastreams and their Observations, a (Multi)Datastream
  itself and its Observations. Those are told by the row versions the database keeps per stream
  (sensorthings.store.versions: `datastreams@7`, `observations@d7`), read for the streams the entity has now: a
  stream added, moved or deleted changes the list, a write to one changes its versions;
- every other table the fragment was read from: by the tables' versions, as the response cache does.

Observations without expansions are kept by row too: an Observation's JSON is its row's, and rows once written
change only by an update or a delete (each raises the version `observations_rewritten`): a chart read again after a
write reads one Observation's JSON anew, not two hundred.

A fragment may reach its own streams only along the way down from its entity (`Thing → Datastreams → Observations`):
one that reads Datastreams or Observations any other way (`Datastreams/Thing/Datastreams`, a `$filter` inside
`$expand` that navigates) depends on streams the entity does not own, and is not kept in fragments.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    CompoundSelect,
    Connection,
    MetaData,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY

from apicommon.lru import SizedLRU
from sensorthings.model import EntityType, target_of
from sensorthings.query.tree import BinaryOp, Call, Expand, Expr, OrderBy, Path, QueryOptions, UnaryOp
from sensorthings.store.driver import run
from sensorthings.store.schema import TABLES
from sensorthings.store.versions import ROW_VERSIONS, Versions, confined, holds

_row_versions = Table(ROW_VERSIONS, MetaData(), Column("key", Text, primary_key=True), Column("version", BigInteger))

# per entity: its own streams, as (stream table, the column naming their owner, the stream kind in row keys)
_STREAMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "things": (("datastreams", "thing_id", "d"), ("multi_datastreams", "thing_id", "m")),
    "datastreams": (("datastreams", "id", "d"),),
    "multi_datastreams": (("multi_datastreams", "id", "m"),),
}
# the steps down from an entity to what it owns
_OWNING_STEPS = frozenset({("things", "datastreams"), ("things", "multi_datastreams"),
                           ("datastreams", "observations"), ("multi_datastreams", "observations")})
OWNED_TABLES = frozenset({"datastreams", "multi_datastreams", "observations"})

_NUMBERS = itertools.count()
ENTRY_OVERHEAD = 250  # bytes per kept fragment besides its JSON: 226 measured with tracemalloc for an Observation
Owned = tuple[tuple[str, int, int, int], ...]  # (kind, stream id, its row's version, its Observations' version)


def keeps(entity: EntityType, options: QueryOptions) -> bool:
    """True when `entity`'s JSON under `options` can be kept as fragments: it owns streams, something is expanded
    (else reading it costs no more than finding a fragment), and every expansion reaches owned tables only down
    from the entity."""
    return entity.table in _STREAMS and bool(options.expand) and _within(entity, options.expand, True)


def keeps_rows(entity: EntityType, options: QueryOptions) -> bool:
    """True when `entity`'s JSON under `options` is its row's alone and can be kept by row: Observations with nothing
    expanded. Observations are written once and seldom changed: such a fragment stands while no Observation
    already written is updated or deleted (sensorthings.store.versions.REWRITTEN), however many are added."""
    return entity.table == "observations" and not options.expand


def _within(entity: EntityType, items: Iterable[Expand], owning: bool) -> bool:
    for item in items:
        nav = entity.nav_by_name[item.name]
        target = target_of(nav)
        down = owning and (entity.table, target.table) in _OWNING_STEPS
        if target.table in OWNED_TABLES and not down:
            return False
        opts = item.options
        exprs = [opts.filter, *(o.expr for o in opts.orderby)]
        if any(navigates(target, e) for e in exprs if e is not None):
            return False
        if not _within(target, opts.expand, down):
            return False
    return True


def navigates(entity: EntityType, expr: Expr | OrderBy | None) -> bool:
    """True when an expression reads another entity (a path through a navigation property)."""
    if isinstance(expr, Path):
        return expr.segments[0] in entity.nav_by_name
    if isinstance(expr, BinaryOp):
        return navigates(entity, expr.left) or navigates(entity, expr.right)
    if isinstance(expr, UnaryOp):
        return navigates(entity, expr.operand)
    if isinstance(expr, Call):
        return any(navigates(entity, a) for a in expr.args)
    return False


def owned_versions(conn: Connection, entity: EntityType, ids: list[int]) -> dict[int, Owned]:
    """Per entity id: its own streams now and their row versions (read before the fragments they stand for)."""
    dialect = conn.dialect.name
    statement = _OWNED.get((dialect, entity.table))
    if statement is None:
        statement = _OWNED[(dialect, entity.table)] = _owned_statement(dialect, entity.table)
    out: dict[int, list[tuple[str, int, int, int]]] = {id_: [] for id_ in ids}
    bound = ids if dialect == "postgresql" else orjson.dumps(ids).decode()
    for owner_id, kind, id_, row_version, obs_version in conn.execute(statement, {"ids": bound}).all():
        out[owner_id].append((kind, id_, row_version or 0, obs_version or 0))
    return {id_: tuple(sorted(streams_)) for id_, streams_ in out.items()}


class StreamIndex:
    """SQLite: every stream's owner and row versions, kept in this process and brought up to date from the row
    versions changed since (sensorthings.store.versions.ROW_SEQUENCE), so that the owned versions of a page's
    entities are looked up, not read by a statement over all their streams (the expanded Things: 0.6 of 1.9 ms).
    `owned` answers as `owned_versions` does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = -1  # the sequence's number it is up to date with (-1: nothing read yet)
        self._versions: dict[str, int] = {}
        self._owners: dict[tuple[str, int], int] = {}  # (kind, stream id) -> its Thing
        self._owned_by: dict[int, set[tuple[str, int]]] = {}  # Thing -> its streams
        self._made: dict[tuple[str, int], Owned] = {}  # what `owned` answered, by (kind, id) of the entity

    def owned(self, conn: Connection, entity: EntityType, ids: list[int]) -> dict[int, Owned] | None:
        """Per entity id: its own streams and their row versions in `conn`'s snapshot; None when this index is
        ahead of that snapshot (another thread read a later one): then `owned_versions` reads them."""
        with self._lock:
            # the rows changed since, and the sequence's number: the highest row version there is (keyed '')
            changed = []
            seq = 0
            for key, version in run(conn, _CHANGED, {"seq": self.seq}).fetchall():
                if key:
                    changed.append((key, version))
                else:
                    seq = version or 0
            if seq < self.seq:
                return None
            if seq > self.seq:
                self._catch_up(conn, changed, seq)
            kind = _KINDS[entity.table]
            made = self._made
            out = {}
            for id_ in ids:
                found = made.get((kind, id_))
                if found is None:
                    found = made[(kind, id_)] = self._owned(kind, id_)
                out[id_] = found
            return out

    def _owned(self, kind: str, id_: int) -> Owned:
        if kind == "t":
            streams = sorted(self._owned_by.get(id_, ()))
        else:
            streams = [(kind, id_)] if (kind, id_) in self._owners else []
        out = []
        for k, sid in streams:
            keys = confined(_TABLE_OF[k], sid)  # the row keys as the triggers spell them
            out.append((k, sid, self._versions.get(keys[_TABLE_OF[k]], 0), self._versions.get(keys["observations"], 0)))
        return tuple(out)

    def _catch_up(self, conn: Connection, changed: list[Any], seq: int) -> None:
        """Take the row versions `changed` since `self.seq` (every one, the first time), as of `seq`, and read
        again whose streams those whose rows changed are (added, moved, gone)."""
        first = self.seq < 0
        self._versions.update(changed)
        touched: set[tuple[str, int]] = set()
        rows: dict[str, list[tuple[str, int]]] = {"d": [], "m": []}
        for key, _version in changed:
            table, _, rest = key.partition("@")
            if table == "observations":
                touched.add((rest[0], int(rest[1:])))
            else:
                stream = (_KIND_OF[table], int(rest))
                touched.add(stream)
                rows[stream[0]].append(stream)
        for kind, table_name in _TABLE_OF.items():
            if not first and not rows[kind]:
                continue
            for stream in rows[kind]:
                self._own(stream, None)
            owners = _OWNERS[table_name] if first else _OWNERS_OF[table_name]
            for sid, thing in conn.execute(owners, {} if first else {"ids": [sid for _k, sid in rows[kind]]}).all():
                self._own((kind, sid), thing)
        for kind, sid in touched:  # what `owned` answered for them and their Things is answered anew
            self._made.pop((kind, sid), None)
            thing = self._owners.get((kind, sid))
            if thing is not None:
                self._made.pop(("t", thing), None)
        self.seq = seq

    def _own(self, stream: tuple[str, int], thing: int | None) -> None:
        before = self._owners.pop(stream, None)
        if before is not None:
            self._owned_by[before].discard(stream)
            self._made.pop(("t", before), None)
        if thing is not None:
            self._owners[stream] = thing
            self._owned_by.setdefault(thing, set()).add(stream)
            self._made.pop(("t", thing), None)


_KINDS = {"things": "t", "datastreams": "d", "multi_datastreams": "m"}
_KIND_OF = {"datastreams": "d", "multi_datastreams": "m"}
_TABLE_OF = {"d": "datastreams", "m": "multi_datastreams"}
# one statement: the row versions above `seq` and the highest of all, keyed '' (the sequence's number: the last one
# given is the row's it was given to, as nothing gives lower numbers after)
_CHANGED = union_all(
    select(_row_versions.c.key, _row_versions.c.version).where(_row_versions.c.version > bindparam("seq")),
    select(literal_column("''", Text), func.max(_row_versions.c.version)))
_OWNERS = {name: select(TABLES[name].c.id, TABLES[name].c.thing_id) for name in _TABLE_OF.values()}
_OWNERS_OF = {name: q.where(TABLES[name].c.id.in_(bindparam("ids", expanding=True))) for name, q in _OWNERS.items()}


_OWNED: dict[tuple[str, str], Select | CompoundSelect] = {}


def _owned_statement(dialect: str, table_name: str) -> Select | CompoundSelect:
    """The streams of the entities whose ids are bound as `ids` (an array on PostgreSQL, a JSON array on SQLite)
    and their row versions: built once, since building it cost more than running it."""
    if dialect == "postgresql":
        def among(column: Any) -> Any:
            return column == any_(bindparam("ids", type_=ARRAY(BigInteger)))
    else:
        def among(column: Any) -> Any:
            return column.in_(select(func.json_each(bindparam("ids")).table_valued("value").c.value))
    parts = []
    for stream_table, owner, kind in _STREAMS[table_name]:
        table = TABLES[stream_table]
        row, obs = _row_versions.alias(f"{kind}_row_version"), _row_versions.alias(f"{kind}_observations_version")
        # the keys spelled as the triggers spell them (sensorthings.store.versions), constants written out so that
        # the planner looks each up in the primary key
        id_text = cast(table.c.id, Text)
        parts.append(
            select(table.c[owner].label("owner"), literal_column(f"'{kind}'", Text).label("kind"), table.c.id,
                   row.c.version.label("row_version"), obs.c.version.label("observations_version"))
            .select_from(table.outerjoin(row, row.c.key == literal_column(f"'{stream_table}@'", Text) + id_text)
                         .outerjoin(obs, obs.c.key == literal_column(f"'observations@{kind}'", Text) + id_text))
            .where(among(table.c[owner])))
    return union_all(*parts) if len(parts) > 1 else parts[0]


@dataclass(frozen=True, slots=True)
class Fragment:
    """One entity's JSON, the streams it owned and the versions of the other tables it was read from."""

    owned: Owned
    versions: Versions
    body: bytes
    read: frozenset[str]  # the tables it was read from: an answer built from it depends on them too


class FragmentCache:
    """Fragments by (request shape, entity id), bounded by their bytes."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        # counted with what Python spends on each entry besides its JSON (the key, the Fragment, the LRU's node):
        # two thirds of an Observation's JSON again, which the budget would otherwise leave out
        self._items: SizedLRU[Fragment] = SizedLRU(max_bytes, lambda f: len(f.body) + ENTRY_OVERHEAD)
        self._shapes: dict[Hashable, int] = {}
        self.streams = StreamIndex()
        self.hits = 0
        self.misses = 0

    def owned(self, conn: Connection, entity: EntityType, ids: list[int]) -> dict[int, Owned]:
        """Per entity id: its own streams now and their row versions (`owned_versions`; on SQLite looked up)."""
        if conn.dialect.name == "sqlite":
            found = self.streams.owned(conn, entity, ids)
            if found is not None:
                return found
        return owned_versions(conn, entity, ids)

    def shape(self, shape: Hashable) -> int:
        """A number for a request shape (its options are deep: hashed once per request, not once per entity)."""
        found = self._shapes.get(shape)
        if found is None:
            if len(self._shapes) > 1024:
                # numbers are never given twice: the fragments of forgotten shapes age out of the LRU
                self._shapes.clear()
            found = self._shapes[shape] = next(_NUMBERS)
        return found

    def get(self, key: Hashable, owned: Owned, now: Mapping[str, int]) -> Fragment | None:
        """The fragment for `key` if its entity owns the same streams at the same versions and nothing else it was
        read from has been written since."""
        found = self._items.get(key, lambda f: f.owned == owned and holds(f.versions, now))
        # counted without a lock: a statistic, and a lost increment under a race does no harm
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    @staticmethod
    def basis(read: set[str], now: Mapping[str, int]) -> tuple[frozenset[str], Versions]:
        """What fragments read together at `now` (the versions read before them) from the tables `read` depend on:
        those tables, and the versions of the ones not owned. Made once for them all: shared, not copied per entry."""
        return frozenset(read), tuple((name, now.get(name, 0)) for name in sorted(read - OWNED_TABLES))

    def put(self, key: Hashable, owned: Owned, basis: tuple[frozenset[str], Versions], body: bytes) -> Fragment:
        """Keep an entity's JSON with the streams it owned and its `basis`."""
        read, versions = basis
        fragment = Fragment(owned, versions, body, read)
        self._items.put(key, fragment)
        return fragment

    def stats(self) -> dict[str, Any]:
        """Hits, misses, entries and bytes held."""
        entries, size = self._items.stats()
        return {"hits": self.hits, "misses": self.misses, "entries": entries, "bytes": size}
