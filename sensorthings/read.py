"""Reading entities: query options turned into SQL, rows into SensorThings JSON, expands batched.

An expanded set is fetched for all parents of a level at once (one LATERAL join on PostgreSQL, one
correlated subquery per parent row on SQLite), so `$top=1` inside `$expand` reads one index entry
per parent instead of every Observation, in one statement per level.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY

from sensorthings.access import visible
from sensorthings.appended import (
    SNAPSHOT,
    KeptPage,
    KeptPages,
    Mark,
    Snapshot,
    appends_by_id,
    basis,
    kinds,
    merged,
    no_newer,
    seeks,
    sort_keys,
    unseen,
)
from sensorthings.fragments import Fragment, FragmentCache, keeps, keeps_rows, navigates
from sensorthings.keptrows import KeptRowsCache
from sensorthings.model import EntityType, Kind, Nav, NavKind, target_of
from sensorthings.query.limits import Limits
from sensorthings.query.sql import Translator, distance_to_constant
from sensorthings.query.tree import Call, Expand, QueryError, QueryOptions
from sensorthings.query.unparse import next_link
from sensorthings.results import JSON, STRING, decode_result
from sensorthings.store.base import Store
from sensorthings.store.schema import TABLES, series_index_columns
from sensorthings.store.versions import ALL, NOW_KEY, READ_KEY, REWRITTEN, noting_reads
from sensorthings.times import format_instant, format_time

ESTIMATE_COUNT_ABOVE = 1_000_000  # rows of a whole table (PostgreSQL's reltuples) whose `$count` is estimated
# the nearest first (`$orderby=geo.distance(location, geography'POINT(…)')`): the radius, in the coordinates' degrees,
# tried first for a page's rows and the last before every row is sorted; each try four times the one before
NEAREST_FIRST_RADIUS = 0.001
NEAREST_LAST_RADIUS = 360.0


class Estimate(int):
    """A count that is the planner's estimate, not counted."""


def count_annotations(count: int) -> dict[str, Any]:
    """`@iot.count`, and `@udp.countEstimated` when it is an estimate (`Prefer: count=exact` counts)."""
    return {"@iot.count": int(count), "@udp.countEstimated": True} if isinstance(count, Estimate) \
        else {"@iot.count": count}


@dataclass
class Reader:
    """Reads one request's entities from a store, writing links under `base` (…/v1.1)."""

    store: Store
    base: str
    default_top: int = Limits.default_top
    hide_internal: bool = False  # for a reader without the read role: see sensorthings.access
    exact_count: bool = False  # count a huge set too (else its `$count` is the planner's estimate)
    fragments: FragmentCache | None = None  # entities' JSON kept across answers (sensorthings.fragments)
    pages: KeptPages | None = None  # pages of Observations kept with their rows (sensorthings.appended)
    kept_rows: KeptRowsCache | None = None  # pages of rows of other sets (sensorthings.keptrows)

    def __post_init__(self) -> None:
        self.translator = Translator(self.store.dialect)

    # -- public --------------------------------------------------------------------------------
    def page(
        self,
        conn: Connection,
        entity: EntityType,
        where: Callable[[FromClause], ColumnElement | None],
        options: QueryOptions,
        after: tuple[Any, ...] | None = None,
        shape: Hashable | None = None,
    ) -> tuple[list[Mapping[str, Any]], str | None, int | None]:
        """One page of rows of a set: (rows, a skiptoken when more follow, the count when `$count=true`: an
        `Estimate` on a huge set unless the reader counts exactly).

        `after` continues from a skiptoken: the sort keys of the previous page's last row, so that
        deep pages seek through the index instead of counting past every earlier row. `shape` names
        what `where` selects (a request path's steps): the statement is then built once per shape.
        """
        top = self.default_top if options.top is None else options.top
        key = self._rows_key(conn, entity, options, after, shape, top)
        if key is None:
            count = self._count(conn, entity, where, options) if options.count else None
            rows = self._rows(conn, entity, where, options, top, after, shape)
            return rows[:top], _token(rows, top), count
        assert self.kept_rows is not None
        now = conn.info[NOW_KEY]
        tracked = conn.info.get(READ_KEY)
        kept = self.kept_rows.get(key, now)
        if kept is None:
            read: set[str] = set()
            with noting_reads(conn, read):
                count = self._count(conn, entity, where, options) if options.count else None
                rows = self._rows(conn, entity, where, options, top, after, shape)
            self.kept_rows.put(key, rows, count, read, now)
        else:
            rows, count, read = list(kept.rows), kept.count, kept.read
        if tracked is not None:  # the answer depends on what the rows were read from
            tracked |= read
        return rows[:top], _token(rows, top), count

    def _rows_key(self, conn: Connection, entity: EntityType, options: QueryOptions, after: tuple[Any, ...] | None,
                  shape: Hashable | None, top: int) -> Hashable | None:
        """What a page's rows are kept by (sensorthings.keptrows): a first page read in a read the response cache
        keeps (versions known), of a set other than the Observations, whose filter does not call now(); else None."""
        if self.kept_rows is None or entity.table == "observations" or not _first_page_kept(conn, options, after,
                                                                                                shape):
            return None
        return entity.name, shape, self.hide_internal, self.exact_count, options, top

    def _count(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
               options: QueryOptions, above: int | None = None) -> int:
        """The rows of a set (`above`: of them, those with a higher id); an `Estimate` on a huge set unless the
        reader counts exactly."""
        table = TABLES[entity.table]
        path = where(table)
        conds = [c for c in (path, self._filter(entity, table, options)) if c is not None]
        if above is not None:
            conds.append(table.c.id > above)
        elif path is None and options.filter is None and not self.exact_count:  # a whole set
            estimate = self._estimate(conn, table, conds)
            if estimate is not None:
                return estimate
        return conn.execute(select(func.count()).select_from(table).where(*conds)).scalar_one()

    def _rows(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
              options: QueryOptions, top: int, after: tuple[Any, ...] | None, shape: Hashable | None,
              above: int | None = None) -> list[Mapping[str, Any]]:
        """A page's rows and one more (whether more follow), with their sort keys (`_k0`, `_k1` …); `above`: every
        row of the set with a higher id, unsorted."""
        if top <= 0:
            return []
        table = TABLES[entity.table]
        nearest = None if after is not None or options.skip or above is not None else _nearest(entity, table, options)
        radius = None if nearest is None else self._radius(conn, entity, table, where, options, top, *nearest)

        def build() -> Select:
            keys = self._keys(entity, table, options)
            extra = []
            if after is not None:
                extra.append(_after(keys, after))
            if above is not None:
                extra.append(table.c.id > bindparam("above", type_=BigInteger))
            if radius is not None:
                assert nearest is not None
                near = self.store.dialect.near(*nearest, bindparam("radius", type_=Float))
                if self.store.dialect.name == "sqlite":
                    # SQLite sorts a NULL first: the rows without a geometry (a Location of another encoding) lead the
                    # page; found by id, as the R-tree's are (`…_no_geom`), so that neither side scans the table
                    col = nearest[0]
                    near = or_(near, table.c.id.in_(select(table.c.id).where(col.is_(None))))
                extra.append(near)
            q = self._page_select(entity, table, where, options, keys, extra)
            if above is not None:  # a few new rows, sought by id and sorted by the caller
                return q
            return q.order_by(*_directed(keys)).limit(top + 1).offset(options.skip if after is None else 0)

        if shape is None or after is not None:
            q = build()
        else:
            q = self._statement(("page", entity.name, shape, options, top, above is not None, radius is not None),
                                options, build)
        params: dict[str, Any] = {} if above is None else {"above": above}
        if radius is not None:
            params["radius"] = radius
        return list(conn.execute(q, params).mappings().all())

    def _radius(self, conn: Connection, entity: EntityType, table: FromClause,
                where: Callable[[FromClause], ColumnElement | None], options: QueryOptions, top: int, col: Any,
                wkt: str) -> float | None:
        """For a first page of the nearest first: a distance within which more than `top` rows of the set lie, found
        through the spatial index (each try four times as far); then the page's rows are sought within it, not every
        row measured and sorted (the 10 Locations nearest a point of 50,000: 316 ms on SQLite, 96 on PostgreSQL).
        None: the set holds no more than `top` rows that near, and is sorted whole."""
        distance = self.translator.order(entity, table, options.orderby[:1])[0][0]
        conds = [c for c in (where(table), self._filter(entity, table, options)) if c is not None]
        radius = NEAREST_FIRST_RADIUS
        while radius <= NEAREST_LAST_RADIUS:
            near = self.store.dialect.near(col, wkt, radius)
            found = conn.execute(select(table.c.id).where(*conds, near, distance <= radius).limit(top + 1)).all()
            if len(found) > top:
                # every row of the page, and the one after it, is at most this far: the ties at the edge too
                return radius
            radius *= 4
        return None

    def _page_select(self, entity: EntityType, table: FromClause, where: Callable[[FromClause], ColumnElement | None],
                     options: QueryOptions, keys: list[tuple[Any, bool]], extra: list[Any]) -> Select:
        """A page's statement before its order: its columns and its sort keys (`_k0`, `_k1` …) where the set's
        conditions and `extra` hold."""
        conds = [c for c in (where(table), self._filter(entity, table, options)) if c is not None]
        labels = [k.label(f"_k{i}") for i, (k, _) in enumerate(keys)]
        columns = readable_columns(table) if options.expand else selected_columns(entity, table, options.select)
        covered = _covered(table, columns, labels, self.store.dialect) \
            if self.store.dialect.name == "postgresql" else None
        return (select(*columns, *labels) if covered is None else covered).where(*conds, *extra)

    def _estimate(self, conn: Connection, table: FromClause, shown: list[ColumnElement]) -> Estimate | None:
        """A whole set's count as PostgreSQL's planner knows it, when its table is over ESTIMATE_COUNT_ABOVE rows
        (counting would read every row of an index); None: count it. `shown`: what a reader without the read role
        may see (the planner's estimate of the rows that meet it)."""
        if self.store.dialect.name != "postgresql":
            return None
        rows = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                            {"t": getattr(table, "name", "")}).scalar()
        if rows is None or rows <= ESTIMATE_COUNT_ABOVE:
            return None
        if shown:
            # the visibility conditions hold only names and constants: written out, EXPLAIN can plan them
            sql = select(literal(1)).select_from(table).where(*shown).compile(
                dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}".replace("%", "%%")).scalar()
            rows = (orjson.loads(plan) if isinstance(plan, (str, bytes)) else plan)[0]["Plan"]["Plan Rows"]
        return Estimate(rows)

    def collection(
        self,
        conn: Connection,
        entity: EntityType,
        where: Callable[[FromClause], ColumnElement | None],
        options: QueryOptions,
        next_url: Callable[[str | None], str],
        after: tuple[Any, ...] | None = None,
        shape: Hashable | None = None,
    ) -> dict[str, Any]:
        """A set: `{"@iot.count"?, "value": [...], "@iot.nextLink"?}`; next_url gets the skiptoken."""
        kept = self._kept_page(conn, entity, where, options, shape) if self._keeps_page(conn, entity, options, after,
                                                                                      shape) else None
        if kept is None:
            rows, token, count = self.page(conn, entity, where, options, after, shape)
            values = self._serialize_page(conn, entity, rows, options)
        else:
            top = self.default_top if options.top is None else options.top
            token, count, values = _token(list(kept.rows), top), kept.count, list(kept.values)
        out: dict[str, Any] = {}
        if count is not None:
            out.update(count_annotations(count))
        out["value"] = values
        if token is not None:
            out["@iot.nextLink"] = next_url(token or None)
        return out

    def _keeps_page(self, conn: Connection, entity: EntityType, options: QueryOptions,
                    after: tuple[Any, ...] | None, shape: Hashable | None) -> bool:
        """True when a page is read through `pages` (sensorthings.appended): the first page of Observations with
        nothing expanded, in a read the response cache keeps (versions known), where new rows are told by id
        (SQLite) or sought by transaction among those sorting before the page's last (PostgreSQL: no count, whose
        new rows that seek would not find)."""
        if not (self.pages is not None and entity.table == "observations" and not options.expand
                and not options.skip and _first_page_kept(conn, options, after, shape)):
            return False
        if appends_by_id(conn):
            return True
        if conn.dialect.name != "postgresql" or options.count or not self.store.seeks_pages:
            return False
        found = _SEEKS.get((entity.name, options))
        if found is None:  # building the keys costs more than the rest of the decision
            if len(_SEEKS) > 512:
                _SEEKS.clear()
            found = _SEEKS[(entity.name, options)] = seeks(self._keys(entity, TABLES[entity.table], options))
        return found

    def _kept_page(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
                   options: QueryOptions, shape: Hashable) -> KeptPage | None:
        """A page from its kept rows and those written since (sensorthings.appended), read whole when it has none
        that stands; kept again. None when it cannot be kept: `page` reads it."""
        assert self.pages is not None
        now = conn.info[NOW_KEY]
        top = self.default_top if options.top is None else options.top
        key = (self.base, self.hide_internal, self.exact_count, shape, options, top)
        read: set[str] = set()
        with noting_reads(conn, read):
            page: KeptPage | None = None
            mark: Mark | None = None
            if appends_by_id(conn):
                high: int = conn.execute(_HIGHEST).scalar_one()
                mark, kept = high, self.pages.get(key, now, high)
                if kept is not None:
                    page = self._extend_page(conn, entity, where, options, shape, top, high, kept)
            else:
                # the snapshot comes with the rows it did not see, read in one statement
                kept = self.pages.get(key, now)
                if kept is not None:
                    mark, new = self._unseen_rows(conn, entity, where, options, top, shape, kept)
                    if no_newer(kept.mark, mark):
                        page = self._extend_page(conn, entity, where, options, shape, top, mark, kept, new)
            if page is None:
                page = self._read_page(conn, entity, where, options, shape, top,
                                       _snapshot(conn) if mark is None else mark, now, read)
        tracked = conn.info.get(READ_KEY)
        if tracked is not None:  # the answer depends on what the page was read from
            tracked |= read
            if page is not None:
                tracked |= page.read
        if page is not None:
            self.pages.put(key, page)
        return page

    def _read_page(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
                   options: QueryOptions, shape: Hashable, top: int, mark: Mark, now: Mapping[str, int],
                   read: set[str]) -> KeptPage | None:
        """A page read whole, to be kept; None when it cannot be (its JSON not all encoded, raw SQL read)."""
        assert self.pages is not None
        self.pages.read += 1
        count = self._count(conn, entity, where, options) if options.count else None
        rows = self._rows(conn, entity, where, options, top, None, shape)
        values = self._serialize_page(conn, entity, rows[:top], options)
        hidden = self.hide_internal and not any(
            navigates(entity, e) for e in (options.filter, *(o.expr for o in options.orderby)))
        stands_on = basis(read, now, hidden)
        if stands_on is None or any(not isinstance(v, orjson.Fragment) for v in values):
            return None
        directions = tuple(d for _, d in self._keys(entity, TABLES[entity.table], options))
        return KeptPage(stands_on, mark, tuple(rows), sort_keys(rows, len(directions)), tuple(values), count,
                        directions, kinds(rows, len(directions)) if rows else None, frozenset(read))

    def _extend_page(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
                     options: QueryOptions, shape: Hashable, top: int, mark: Mark, kept: KeptPage,
                     new: list[Mapping[str, Any]] | None = None) -> KeptPage | None:
        """A kept page with the rows written since it was read (`new`, or SQLite: read here by id); None when it must
        be read whole (more new rows than a page, or rows that cannot be sorted in)."""
        assert self.pages is not None
        count = kept.count
        if new is None:
            assert isinstance(mark, int) and isinstance(kept.mark, int)
            if mark == kept.mark:
                return kept
            if mark - kept.mark > top:  # ids follow one another here: more new rows than a page, read it whole
                return None
            new = self._rows(conn, entity, where, options, top, None, shape, above=kept.mark)
            count = None if kept.count is None else kept.count + self._count(conn, entity, where, options, kept.mark)
        if not new:
            self.pages.extended += 1
            return replace(kept, mark=mark, count=count)
        entries = merged(kept, new, top + 1)
        if entries is None:
            return None
        fresh = self._serialize_page(conn, entity, [new[-1 - i] for _, i in entries[:top] if i < 0], options)
        if any(not isinstance(v, orjson.Fragment) for v in fresh):
            return None
        written = iter(fresh)
        # the row read one over has no JSON: rows only move down the page as new ones come in before them
        values = [kept.values[i] if i >= 0 else next(written) for _, i in entries[:top]]
        rows = [kept.rows[i] if i >= 0 else new[-1 - i] for _, i in entries]
        self.pages.extended += 1
        return replace(kept, mark=mark, rows=tuple(rows), keys=tuple(k for k, _ in entries), values=tuple(values),
                       count=count)

    def _unseen_rows(self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
                     options: QueryOptions, top: int, shape: Hashable,
                     kept: KeptPage) -> tuple[Snapshot, list[Mapping[str, Any]]]:
        """PostgreSQL: the snapshot now, and the first rows in the page's order that the snapshot `kept` was read at
        did not see, of those sorting up to its last row (all, when the set was shorter than a page), but the ones
        it holds already. One statement: the snapshot, joined to the rows (none: one row of NULLs beside it)."""
        table = TABLES[entity.table]
        full = len(kept.rows) > top  # the page read one over: rows past its last cannot come onto it
        last = f"_k{len(kept.directions) - 1}"  # the id, the last sort key

        def build() -> Select:
            keys = self._keys(entity, table, options)
            extra = [unseen(table)]
            if full:  # the index on the sort keys finds them: the rows after the last are never read
                extra.append(~_seek(keys, [bindparam(f"seek{i}", type_=k.type) for i, (k, _) in enumerate(keys)]))
            rows = (self._page_select(entity, table, where, options, keys, extra)
                    .order_by(*_directed(keys)).limit(top + 1).lateral("unseen"))
            snap = SNAPSHOT.subquery("snap")
            return (select(snap.c[0].label("_snapshot"), *rows.c).select_from(snap.outerjoin(rows, true()))
                    .order_by(*(rows.c[f"_k{i}"].desc() if d else rows.c[f"_k{i}"]
                                for i, d in enumerate(kept.directions))))

        q = self._statement(("unseen", entity.name, shape, options, top, full), options, build)
        assert isinstance(kept.mark, Snapshot)
        params = kept.mark.unseen_params()
        if full:
            params.update({f"seek{i}": v for i, v in enumerate(kept.keys[-1])})
        held = {k[-1] for k in kept.keys}  # the rows read again that the page holds
        found = conn.execute(q, params).mappings().all()
        return (Snapshot.parse(found[0]["_snapshot"]),
                [r for r in found if r[last] is not None and r[last] not in held])

    def entity(
        self, conn: Connection, entity: EntityType, where: Callable[[FromClause], ColumnElement | None],
        options: QueryOptions,
    ) -> dict[str, Any] | None:
        """One entity, or None."""
        table = TABLES[entity.table]
        shown = visible(entity, table, self.store.dialect) if self.hide_internal else None
        conds = [c for c in (where(table), shown) if c is not None]
        row = conn.execute(select(*readable_columns(table)).where(*conds).limit(1)).mappings().first()
        if row is None:
            return None
        return self.serialize_rows(conn, entity, [row], options)[0]

    def serialize_rows(self, conn: Connection, entity: EntityType, rows: Sequence[Mapping[str, Any]],
                       options: QueryOptions) -> list[dict[str, Any]]:
        """Rows as SensorThings JSON with links, `$select` applied and `$expand` filled in."""
        write = serializer(entity, self.base, options.select)
        out = [write(row) for row in rows]
        for item in options.expand:
            self._expand(conn, entity, rows, out, item)
        return out

    # -- pieces ----------------------------------------------------------------------------------
    def _serialize_page(self, conn: Connection, entity: EntityType, rows: Sequence[Mapping[str, Any]],
                        options: QueryOptions) -> list[Any]:
        """A page's entities as `serialize_rows` writes them; in a read the response cache keeps (versions known),
        the JSON of every entity nothing under it has changed since is taken from its fragment
        (sensorthings.fragments) and only the others are read."""
        now = conn.info.get(NOW_KEY)
        if self.fragments is None or now is None or not rows:
            return self.serialize_rows(conn, entity, rows, options)
        if keeps(entity, options):
            with noting_reads(conn, None):  # what the streams are is not part of the answer
                owned = self.fragments.owned(conn, entity, [r["id"] for r in rows])
            depends = {entity.table}  # the rows themselves came from the page's statement
        elif keeps_rows(entity, options):
            owned = {}
            depends = {REWRITTEN}
        else:
            return self.serialize_rows(conn, entity, rows, options)
        shape = self.fragments.shape((entity.table, self.base, self.hide_internal, options.select, options.expand))
        found: dict[int, Fragment] = {}
        missing = []
        for row in rows:
            fragment = self.fragments.get((shape, row["id"]), owned.get(row["id"], ()), now)
            if fragment is None:
                missing.append(row)
            else:
                found[row["id"]] = fragment
        docs: dict[int, Any] = {}
        read = set(depends)
        if missing:
            with noting_reads(conn, read):
                written = self.serialize_rows(conn, entity, missing, options)
            basis = self.fragments.basis(read, now)
            for row, doc in zip(missing, written, strict=True):
                if ALL in read:  # raw SQL: what it depends on is unknown
                    docs[row["id"]] = doc
                else:
                    found[row["id"]] = self.fragments.put((shape, row["id"]), owned.get(row["id"], ()), basis,
                                                          orjson.dumps(doc))
        tracked = conn.info.get(READ_KEY)
        if tracked is not None:  # the answer depends on what its fragments were read from
            tracked |= read
            for fragment in found.values():
                tracked |= fragment.read
        return [orjson.Fragment(found[id_].body) if id_ in found else docs[id_] for id_ in (r["id"] for r in rows)]

    def _filter(self, entity: EntityType, table: FromClause, options: QueryOptions) -> ColumnElement | None:
        conds = []
        if options.filter is not None:
            conds.append(self.translator.where(entity, table, options.filter))
        if self.hide_internal:
            shown = visible(entity, table, self.store.dialect)
            if shown is not None:
                conds.append(shown)
        if not conds:
            return None
        return conds[0] if len(conds) == 1 else and_(*conds)

    def _keys(self, entity: EntityType, table: FromClause, options: QueryOptions) -> list[tuple[Any, bool]]:
        keys = self.translator.order(entity, table, options.orderby) if options.orderby else []
        # the id breaks ties in the direction of the last key, so one index scan serves the whole order
        return [*keys, (table.c.id, keys[-1][1] if keys else False)]

    def _order(self, entity: EntityType, table: FromClause, options: QueryOptions) -> list[Any]:
        return _directed(self._keys(entity, table, options))

    def _expand(self, conn: Connection, entity: EntityType, rows: Sequence[Mapping[str, Any]],
                out: list[dict[str, Any]], item: Expand) -> None:
        # the names were checked against the model as the query was parsed (sensorthings.query.options)
        nav = entity.nav_by_name[item.name]
        if not rows:
            return
        target = target_of(nav)
        opts = item.options
        if nav.kind is NavKind.FK:
            self._expand_one(conn, nav, target, rows, out, opts)
            return
        # $top inside $expand was held to server.max_top by the parser
        top = self.default_top if opts.top is None else opts.top
        parent_ids = [r["id"] for r in rows]
        children: dict[int, list[Mapping[str, Any]]] = {pid: [] for pid in parent_ids}
        for row in self._per_parent(conn, nav, target, parent_ids, opts, top):
            children[row["_parent"]].append(row)
        counts = self._counts(conn, nav, target, parent_ids, opts) if opts.count else None
        # serialize every parent's children in one go, so that nested expands run once per level
        spans: list[tuple[int, int, bool]] = []
        flat: list[Mapping[str, Any]] = []
        for row in rows:
            kids = children[row["id"]]
            spans.append((len(flat), len(flat) + min(len(kids), top), len(kids) > top))
            flat.extend(kids[:top])
        docs = self.serialize_rows(conn, target, flat, opts)
        # the next page's options are the same for every parent: written once per level, not once per parent
        query = next_link("", opts, top=top, skip=opts.skip + top)
        prefix = f"{self.base}/{entity.set_name}("
        for row, doc, (start, end, more) in zip(rows, out, spans, strict=True):
            if counts is not None:
                doc[f"{nav.name}@iot.count"] = counts.get(row["id"], 0)
            doc[nav.name] = docs[start:end]
            if more:
                doc[f"{nav.name}@iot.nextLink"] = f"{prefix}{row['id']})/{nav.name}{query}"

    def _expand_one(self, conn: Connection, nav: Nav, target: EntityType, rows: Sequence[Mapping[str, Any]],
                    out: list[dict[str, Any]], opts: QueryOptions) -> None:
        ids = {r[nav.column] for r in rows if r[nav.column] is not None}
        if not ids:
            return
        table = TABLES[target.table]
        conds = [table.c.id.in_(ids)]
        flt = self._filter(target, table, opts)
        if flt is not None:
            conds.append(flt)
        found = conn.execute(select(*readable_columns(table)).where(*conds)).mappings().all()
        docs = dict(zip((r["id"] for r in found), self.serialize_rows(conn, target, found, opts), strict=True))
        for row, doc in zip(rows, out, strict=True):
            child = docs.get(row[nav.column])
            if child is not None:
                doc[nav.name] = child

    def _arm(self, nav: Nav, target: EntityType, parent: Any, opts: QueryOptions,
             table: FromClause | None = None) -> tuple[Select, FromClause]:
        """The query for one parent's children (parent is a literal id or a column), over `table` (an alias of
        the target's table, or the table itself)."""
        table = TABLES[target.table] if table is None else table
        if nav.kind is NavKind.REVERSE:
            q = select(*readable_columns(table), parent.label("_parent"))
            q = q.where(table.c[nav.column] == parent)
        else:
            link = TABLES[nav.link_table]
            q = select(*readable_columns(table), parent.label("_parent")).select_from(
                table.join(link, link.c[nav.link_target] == table.c.id)).where(link.c[nav.link_self] == parent)
        flt = self._filter(target, table, opts)
        if flt is not None:
            q = q.where(flt)
        return q.order_by(*self._order(target, table, opts)), table

    def _statement(self, key: tuple[Any, ...], opts: QueryOptions, build: Callable[[], Select]) -> Select:
        """A statement built once per query shape: rebuilding per request costs more than running it.
        Filters that call now() are built afresh, since a kept statement would freeze the time."""
        if opts.filter is not None and _calls_now(opts.filter):
            return build()
        # what a reader may see is built into the statement: a statement for one must never serve the other;
        # and one store's SQL is not the other's (a process may serve both, as the tests do)
        key = (self.store.dialect.name, self.hide_internal, *key)
        found = _STATEMENTS.get(key)
        if found is None:
            found = build()
            if len(_STATEMENTS) > 512:
                _STATEMENTS.clear()
            _STATEMENTS[key] = found
        return found

    def _lateral(self, nav: Nav, target: EntityType, opts: QueryOptions, top: int) -> Select:
        """One LATERAL statement for the children of all parents (ids bound as `pids`)."""

        def build() -> Select:
            parents = select(func.unnest(bindparam("pids", type_=ARRAY(BigInteger))).label("pid")).subquery()
            arm, _ = self._arm(nav, target, parents.c.pid, opts)
            lat = arm.limit(top + 1).offset(opts.skip).lateral()
            return select(lat).select_from(parents).join(lat, true())

        return self._statement(("lateral", *self._shape(nav, target, opts, top)), opts, build)

    def _correlated(self, nav: Nav, target: EntityType, opts: QueryOptions, top: int) -> Select:
        """SQLite: the children of all parents (ids bound as a JSON array `pids`) in one statement; a correlated
        subquery picks each parent's first rows by seeking its own index range, as LATERAL does on PostgreSQL.
        Ordered by parent, then as asked."""

        def build() -> Select:
            parents = func.json_each(bindparam("pids")).table_valued("key", "value").alias("parents")
            inner = TABLES[target.table].alias("picked")
            arm, _ = self._arm(nav, target, parents.c.value, opts, inner)
            picked = arm.with_only_columns(inner.c.id).limit(top + 1).offset(opts.skip)
            table = TABLES[target.table]
            return (select(*readable_columns(table), parents.c.value.label("_parent"))
                    .select_from(parents).join(table, table.c.id.in_(picked))
                    .order_by(parents.c.key, *self._order(target, table, opts)))

        return self._statement(("correlated", *self._shape(nav, target, opts, top)), opts, build)

    @staticmethod
    def _shape(nav: Nav, target: EntityType, opts: QueryOptions, top: int) -> tuple[Any, ...]:
        return (nav.name, target.name, nav.column, nav.link_table, opts.filter, opts.orderby, opts.skip, top)

    def _per_parent(self, conn: Connection, nav: Nav, target: EntityType, parent_ids: list[int],
                    opts: QueryOptions, top: int) -> list[Mapping[str, Any]]:
        if top == 0 and not opts.skip:
            return []
        if self.store.dialect.name == "postgresql":
            return list(conn.execute(self._lateral(nav, target, opts, top), {"pids": parent_ids}).mappings().all())
        pids = orjson.dumps(parent_ids).decode()
        return list(conn.execute(self._correlated(nav, target, opts, top), {"pids": pids}).mappings().all())

    def _counts(self, conn: Connection, nav: Nav, target: EntityType, parent_ids: list[int],
                opts: QueryOptions) -> dict[int, int]:
        table = TABLES[target.table]
        if nav.kind is NavKind.REVERSE:
            key = table.c[nav.column]
            q = select(key, func.count()).where(key.in_(parent_ids))
        else:
            link = TABLES[nav.link_table]
            key = link.c[nav.link_self]
            q = select(key, func.count()).select_from(table.join(link, link.c[nav.link_target] == table.c.id)) \
                .where(key.in_(parent_ids))
        flt = self._filter(target, table, opts)
        if flt is not None:
            q = q.where(flt)
        return {k: n for k, n in conn.execute(q.group_by(key)).all()}


_STATEMENTS: dict[tuple[Any, ...], Select] = {}


def _calls_now(expr: Any) -> bool:
    """True when a filter calls now(), whose value a cached statement would freeze."""
    if isinstance(expr, Call):
        return expr.name == "now" or any(_calls_now(a) for a in expr.args)
    return any(_calls_now(getattr(expr, f)) for f in ("left", "right", "operand") if hasattr(expr, f))


def _directed(keys: list[tuple[Any, bool]]) -> list[Any]:
    return [k.desc() if desc else k.asc() for k, desc in keys]


def _nearest(entity: EntityType, table: FromClause, options: QueryOptions) -> tuple[Any, str] | None:
    """The entity's own geometry column and the constant geometry (WKT) when its order begins with the distance
    between them, nearest first; None otherwise."""
    if not options.orderby or options.orderby[0].descending:
        return None
    if (found := distance_to_constant(options.orderby[0].expr)) is None:
        return None
    path, wkt = found
    prop = entity.prop_by_name.get(path.segments[0]) if len(path.segments) == 1 else None
    if prop is None or prop.kind is not Kind.GEOJSON:
        return None
    return table.c.geom, wkt


def _first_page_kept(conn: Connection, options: QueryOptions, after: tuple[Any, ...] | None,
                     shape: Hashable | None) -> bool:
    """True when a page may be kept across reads (sensorthings.appended, sensorthings.keptrows): a first page (no
    skiptoken) of a known request shape, in a read the response cache keeps (versions known), whose filter does not
    call now() (then it depends on the clock, not only on the data)."""
    return (after is None and shape is not None and NOW_KEY in conn.info
            and not (options.filter is not None and _calls_now(options.filter)))


def _token(rows: Sequence[Mapping[str, Any]], top: int) -> str | None:
    """The skiptoken after a page of `top` of `rows` (read one over) when more follow: the sort keys of its last row;
    "" where one is NULL (NULLs cannot be sought past portably: such pages continue by $skip)."""
    if len(rows) <= top or top <= 0:
        return None
    last = rows[top - 1]
    values = [last[f"_k{i}"] for i in range(sum(1 for k in last.keys() if k.startswith("_k")))]
    return "" if any(v is None for v in values) else encode_token(values)


_SEEKS: dict[tuple[str, QueryOptions], bool] = {}  # PostgreSQL: whether a page's order seeks (appended.seeks)
_HIGHEST = select(func.coalesce(func.max(TABLES["observations"].c.id), 0))


def _snapshot(conn: Connection) -> Snapshot:
    """PostgreSQL: the snapshot a page read whole is kept at (sensorthings.appended), taken before its rows are read
    (a row read that it did not see is sought again, and found held)."""
    return Snapshot.parse(conn.execute(SNAPSHOT).scalar_one())


def _after(keys: list[tuple[Any, bool]], values: tuple[Any, ...]) -> ColumnElement:
    """Rows after the given sort-key values in the order `keys` gives."""
    if len(values) != len(keys):
        raise QueryError("the $skiptoken does not belong to this $orderby", "$skiptoken", 0)
    bound = [literal(v, k.type) for (k, _), v in zip(keys, values, strict=True)]
    if any(v is None for v in values):
        raise QueryError("the $skiptoken holds an empty sort key", "$skiptoken", 0)
    return _seek(keys, bound)


def _seek(keys: list[tuple[Any, bool]], bound: list[Any]) -> ColumnElement:
    """Rows after the sort-key values `bound` (SQL expressions) in the order `keys` gives."""
    directions = {desc for _, desc in keys}
    if len(directions) == 1:
        lhs = tuple_(*(k for k, _ in keys))
        rhs = tuple_(*bound)
        return lhs < rhs if directions.pop() else lhs > rhs
    terms = []
    for i, (k, desc) in enumerate(keys):
        eqs = [keys[j][0] == bound[j] for j in range(i)]
        terms.append(and_(*eqs, k < bound[i] if desc else k > bound[i]))
    return or_(*terms)


def encode_token(values: list[Any]) -> str:
    """A skiptoken: the last row's sort keys, typed, in URL-safe base64."""
    out = []
    for v in values:
        if isinstance(v, datetime):
            out.append({"t": v.isoformat()})
        elif isinstance(v, Decimal):
            out.append(float(v))
        else:
            out.append(v)
    return base64.urlsafe_b64encode(orjson.dumps(out)).decode().rstrip("=")


def decode_token(token: str) -> tuple[Any, ...]:
    """The sort keys a skiptoken carries; QueryError when it is not one of ours."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(raw, list):
            raise ValueError
        return tuple(datetime.fromisoformat(v["t"]) if isinstance(v, dict) else v for v in raw)
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise QueryError("not a valid $skiptoken", "$skiptoken", 0) from None


def readable_columns(table: FromClause) -> list[Any]:
    """Every column an entity is written from (the stored geometry is derived from its GeoJSON)."""
    return [c for c in table.c if c.name != "geom"]


def selected_columns(entity: EntityType, table: FromClause, select_: tuple[str, ...] | None) -> list[Any]:
    """The columns a page's rows need for `$select` (every readable one without it): the id and the selected
    properties' columns (navigation links are written from the id). A chart of 1,440 Observations reads 7 of 15."""
    if select_ is None:
        return readable_columns(table)
    names = {"id"}
    for name in select_:
        prop = entity.prop_by_name.get(name)
        if prop is None:
            nav = entity.nav_by_name.get(name)
            if nav is not None and nav.kind is NavKind.FK:
                names.add(nav.column)  # its link is written from the id; its key is for whoever reads the rows
            continue  # the id, the selfLink or a navigation link: the id above
        if prop.kind in (Kind.INTERVAL, Kind.TIME_OR_INTERVAL):
            names |= {f"{prop.column}_start", f"{prop.column}_end"}
        elif prop.kind is Kind.RESULT:
            names |= {"result_type", "result_number", "result_string", "result_json"}
        else:
            names.add(prop.column)
    return [c for c in readable_columns(table) if c.name in names]


# the Observation columns the (Datastream, phenomenonTime) index holds (schema.py), and the results it cannot
_IN_SERIES_INDEX = frozenset(name for names in series_index_columns() for name in names)
_TEXT_RESULTS = ("result_string", "result_json")


def _covered(table: FromClause, columns: list[Any], labels: list[Any], dialect: Any) -> Select | None:
    """PostgreSQL: a page of Observations that needs no column but the series index's and the results, read from
    that index alone (an index-only scan: some ten pages for a day's chart, where the table would give a page per
    row). A text or JSON result, which the index cannot hold, comes from its row by id: a subquery that CASE runs
    only for a row whose result is one. None when the page needs other columns."""
    names = {c.name for c in columns}
    if getattr(table, "name", None) != "observations" or not set(_TEXT_RESULTS) <= names \
            or not names <= _IN_SERIES_INDEX | set(_TEXT_RESULTS):
        return None
    row = table.alias("text_result")

    def looked_up(name: str, kind: int) -> Any:
        found = select(row.c[name]).where(row.c.id == table.c.id).scalar_subquery()
        return type_coerce(case((table.c.result_type == kind, found)), table.c[name].type).label(name)

    # the times as text written by the database: a third of a chart's time in Python went to reading and writing them
    indexed = [dialect.instant_text(c).label(c.name) if c.name.startswith("phenomenon_time") else c
               for c in columns if c.name not in _TEXT_RESULTS]
    return select(*indexed, looked_up("result_string", STRING), looked_up("result_json", JSON), *labels)


# -- serialization ---------------------------------------------------------------------------------
Writer = Callable[[Mapping[str, Any]], dict[str, Any]]


def _value_reader(entity: EntityType, name: str) -> Callable[[Mapping[str, Any]], Any]:
    prop = entity.prop_by_name[name]
    col = prop.column
    if prop.kind is Kind.TIME:
        return lambda r: None if r[col] is None else format_instant(r[col])
    if prop.kind is Kind.INTERVAL:
        s, e = f"{col}_start", f"{col}_end"
        return lambda r: None if r[s] is None else f"{format_instant(r[s])}/{format_instant(r[e] or r[s])}"
    if prop.kind is Kind.TIME_OR_INTERVAL:
        s, e = f"{col}_start", f"{col}_end"
        return lambda r: format_time(r[s], r[e])
    if prop.kind is Kind.RESULT:
        return lambda r: decode_result(r["result_type"], r["result_number"], r["result_string"], r["result_json"])
    return lambda r: r[col]


_WRITERS: dict[tuple[str, str, tuple[str, ...] | None], Writer] = {}


def serializer(entity: EntityType, base: str, select_: tuple[str, ...] | None) -> Writer:
    """A function from a row to the entity's JSON; built once per entity, base and $select."""
    key = (entity.name, base, select_)
    found = _WRITERS.get(key)
    if found is not None:
        return found
    names = set(select_) if select_ is not None else None
    want_id = names is None or bool(names & {"id", "@iot.id"})
    want_self = names is None or bool(names & {"@iot.selfLink", "selfLink"})
    props = [(p.name, _value_reader(entity, p.name)) for p in entity.props if names is None or p.name in names]
    # each navigation link's key and the end of its URL made once, not for every row
    navs = [(f"{n.name}@iot.navigationLink", f")/{n.name}") for n in entity.navs if names is None or n.name in names]
    prefix = f"{base}/{entity.set_name}("
    # a null `properties` is left out unless $select names it, as FROST does: FROST's Python client
    # fails on `"properties": null` (its Sensor refuses anything but a dict)
    omit_null = frozenset({"properties"}) if names is None else frozenset()

    def write(row: Mapping[str, Any]) -> dict[str, Any]:
        id_ = row["id"]
        doc: dict[str, Any] = {}
        if want_self:
            doc["@iot.selfLink"] = f"{prefix}{id_})"
        if want_id:
            doc["@iot.id"] = id_
        for name, read in props:
            value = read(row)
            if value is None and name in omit_null:
                continue
            doc[name] = value
        for link, tail in navs:
            doc[link] = f"{prefix}{id_}{tail}"
        return doc

    if len(_WRITERS) > 2048:
        _WRITERS.clear()
    _WRITERS[key] = write
    return write
