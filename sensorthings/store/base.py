"""The store interface: one class over SQLAlchemy Core for both SQLite and PostgreSQL.

Writes take typed drafts (see sensorthings.body) and run in one transaction, so a failed deep
insert leaves nothing behind. Reads are built by sensorthings.read from the query tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, literal, select, update

from sensorthings import access
from sensorthings.body import Draft, Ref
from sensorthings.model import (
    HISTORICAL_LOCATION,
    LOCATION,
    MULTI_DATASTREAM,
    OBSERVATION,
    OBSERVED_PROPERTY,
    THING,
    EntityType,
    NavKind,
    target_of,
)
from sensorthings.query.sql import SqlDialect
from sensorthings.store import observations, references, versions
from sensorthings.store.group_commit import ObservationWriter
from sensorthings.store.observations import ObservationRow
from sensorthings.store.replicas import Replicas
from sensorthings.store.schema import NAME_INDEXES, TABLES, metadata
from sensorthings.store.sqlite_checkpoints import Checkpointer, checkpointer_of
from sensorthings.store.sqlite_turns import Turns, turns_of
from sensorthings.times import now

COMPLEX_OBSERVATION = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation"


class StoreError(ValueError):
    """A write that the data does not allow (a link to a missing entity, a bad MultiDatastream)."""


class NotFound(LookupError):
    """The entity addressed does not exist."""


class QueryTimeout(Exception):
    """A statement ran longer than the store's statement timeout: the request asked too much."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the query ran longer than {seconds:g} s (server.statement_timeout_s)")
        self.seconds = seconds


@dataclass
class Change:
    """One entity created or updated in a transaction; listeners hear of it after commit."""

    entity: EntityType
    id: int
    kind: str  # "create" or "update"
    # the row as written, every readable column, when the writer has it: notifying then needs no read-back
    row: dict[str, Any] | None = None


def _refuse(_index: int, reason: str) -> None:
    raise StoreError(reason)


# an Observation's columns that the rules of a new one apply to again when they change
OBSERVATION_CHECKED = ("phenomenon_time_start", "phenomenon_time_end", "result_time", "result_type", "result_number",
                       "result_string", "result_json", "datastream_id", "multi_datastream_id", "feature_of_interest_id")


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Store:
    """SensorThings persistence over one SQLAlchemy engine."""

    def __init__(self, engine: Engine, dialect: SqlDialect, url: str,
                 spatial_indexes: Callable[[Connection], None],
                 bulk_insert: observations.BulkInsert, bind_observation: observations.Bind) -> None:
        self.engine = engine
        self.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT") \
            if dialect.name == "postgresql" else engine
        self.spatial_indexes = spatial_indexes
        self.bulk_insert = bulk_insert
        self.bind_observation = bind_observation
        self.dialect = dialect
        self.url = url
        self.listeners: list[Callable[[list[Change]], None]] = []
        self.statement_timeout: float | None = None
        self.replicas: Replicas | None = None
        # PostgreSQL: pages of Observations are extended by seeking on their sort keys, the phenomenonTime NOT NULL
        # (postgres.require_phenomenon_time, at create_schema)
        self.seeks_pages = dialect.name == "postgresql"
        versions.track_reads(engine)
        # the process's group-commit writer of Observations (its thread starts on first use)
        self.writer = ObservationWriter(self)

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, statement_timeout: float | None = None, replicas: tuple[str, ...] = ()) -> Store:
        """A store for `sqlite:///path.db` or `postgresql://…`; the schema is created if missing.

        With `statement_timeout` (seconds), a statement running longer is cancelled and raises QueryTimeout.
        `replicas`: PostgreSQL streaming replicas of `url` that take the reads (sensorthings/store/replicas.py).
        """
        if statement_timeout and url not in ("sqlite://", "sqlite:///:memory:"):
            # the schema first, without the limit: creating it (or waiting for another worker to) is no client's query
            schema = cls.open(url)
            schema.close()
            store = cls._connect(url, statement_timeout)
            store.seeks_pages = schema.seeks_pages
        else:
            store = cls._connect(url, statement_timeout)
            store.create_schema()
        if replicas:
            store.use_replicas(replicas)
        return store

    def use_replicas(self, urls: tuple[str, ...]) -> None:
        """Send reads to these streaming replicas of the store."""
        from sensorthings.store import postgres

        if self.dialect.name != "postgresql":
            raise ValueError("store replicas are PostgreSQL streaming replicas: the store must be PostgreSQL")
        engines = []
        for url in urls:
            engine = postgres.create_postgres_engine(url, _json_dumps, orjson.loads,
                                                     statement_timeout=self.statement_timeout)
            versions.track_reads(engine)
            engines.append((url, engine.execution_options(isolation_level="AUTOCOMMIT")))
        self.replicas = Replicas(self.read_engine, engines)

    @classmethod
    def _connect(cls, url: str, statement_timeout: float | None) -> Store:
        if url.startswith("sqlite"):
            from sensorthings.store import sqlite

            engine = sqlite.create_sqlite_engine(url, _json_dumps, orjson.loads, statement_timeout)
            store = cls(engine, sqlite.SqliteDialect(), url, sqlite.create_spatial_indexes,
                        sqlite.insert_observations, sqlite.observation_binder(engine.dialect))
        elif url.startswith(("postgresql", "postgres")):
            from sensorthings.store import postgres

            engine = postgres.create_postgres_engine(url, _json_dumps, orjson.loads,
                                                     statement_timeout=statement_timeout)
            store = cls(engine, postgres.PostgresDialect(), url, postgres.create_spatial_indexes,
                        postgres.insert_observations, postgres.bind_observation)
        else:
            raise ValueError(f"unsupported store URL {url!r}: use sqlite:///file.db or postgresql://…")
        store.statement_timeout = statement_timeout or None
        return store

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet."""
        with self.engine.connect() as conn:
            conn.info["write"] = True
            with conn.begin():
                # workers start together: one creates the schema while the others wait
                if self.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(8250001)")
                    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS postgis")
                metadata.create_all(conn)
                # made with their tables by create_all; into a database made before them, here
                for index in NAME_INDEXES:
                    index.create(conn, checkfirst=True)
                self.spatial_indexes(conn)
                access.install(conn)
                if self.dialect.name == "postgresql":
                    from sensorthings.store import postgres

                    postgres.warn_if_series_index_uncovered(conn)
                    self.seeks_pages = postgres.require_phenomenon_time(conn)
                    references.install(conn)
                versions.install(conn, TABLES)

    def close(self) -> None:
        """Write what is queued, then release every connection."""
        self.writer.close()
        self.engine.dispose()
        if self.replicas is not None:
            self.replicas.dispose()

    @property
    def write_turns(self) -> Turns | None:
        """SQLite: this process's turns at the write lock every process shares (sqlite_turns); None elsewhere."""
        return turns_of(self.engine)

    @property
    def checkpoints(self) -> Checkpointer | None:
        """SQLite: this process's thread of passive checkpoints beside the writes (sqlite_checkpoints); None
        elsewhere."""
        return checkpointer_of(self.engine)

    def versions(self, conn: Connection, rows: tuple[str, ...] = ()) -> dict[str, int]:
        """Every table's change version now, and those of the row keys `rows` (sensorthings.store.versions),
        read on `conn` before its data."""
        return versions.current(conn, rows)

    def healthy(self) -> bool:
        """True when the database answers."""
        # twice: after a database restart the first try finds a pooled connection the server dropped (and
        # makes the pool replace them all); only a second failure means the database is down
        for _ in range(2):
            try:
                with self.engine.connect() as conn:
                    conn.execute(select(literal(1))).scalar()
                return True
            except Exception:
                continue
        return False

    def reads_at_once(self) -> bool:
        """True when `read` would not wait for a connection (fewer taken than the pool keeps)."""
        pool = self.read_engine.pool
        size, taken = getattr(pool, "size", None), getattr(pool, "checkedout", None)
        return self.replicas is None and (size is None or taken is None or taken() < size())

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading (autocommit on PostgreSQL: no BEGIN/ROLLBACK round trips), on a replica when
        the store has them (one that has replayed every commit made before this call)."""
        if self.replicas is not None:
            with self.replicas.read() as conn:
                yield conn
            return
        with self.read_engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[tuple[Connection, list[Change]]]:
        """A transaction and the list of changes it makes; listeners hear of them after commit."""
        changes: list[Change] = []
        with self.engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn, changes
            finally:
                conn.info.pop("write", None)
        if changes:
            for listener in self.listeners:
                listener(changes)

    # -- create --------------------------------------------------------------------------------
    def create(self, draft: Draft, implied: dict[str, int] | None = None) -> int:
        """Insert a draft (deep insert) in its own transaction; returns its id."""
        with self.write() as (conn, changes):
            return self.insert(conn, draft, implied or {}, changes)

    def exists(self, conn: Connection, entity: EntityType, id_: int) -> bool:
        """True when entity `id_` exists."""
        return not self.missing(conn, entity, {id_})

    def missing(self, conn: Connection, entity: EntityType, ids: set[int]) -> set[int]:
        """Which of the entities `ids` do not exist (one query)."""
        if not ids:
            return set()
        table = TABLES[entity.table]
        return ids - set(conn.execute(select(table.c.id).where(table.c.id.in_(ids))).scalars())

    def _resolve(self, conn: Connection, item: Draft | Ref, implied: dict[str, int], changes: list[Change]) -> int:
        if isinstance(item, Ref):
            if not self.exists(conn, item.entity, item.id):
                raise StoreError(f"{item.entity.name} {item.id} does not exist")
            return item.id
        return self.insert(conn, item, implied, changes)

    def insert(self, conn: Connection, draft: Draft, implied: dict[str, int], changes: list[Change]) -> int:
        """Insert a draft and everything it carries inside an open transaction."""
        entity = draft.entity
        if entity is OBSERVATION:
            return self._insert_observations(conn, [draft], implied, changes)[0]
        values = self._values(conn, draft, implied, changes)
        if entity is MULTI_DATASTREAM:
            self._check_multi_datastream(draft, values)
        table = TABLES[entity.table]
        new_id = conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
        draft.id = new_id
        changes.append(Change(entity, new_id, "create"))
        rank = 0
        for name, items in draft.links.items():
            nav = entity.nav_by_name[name]
            if nav.kind is NavKind.REVERSE:
                embedded = []  # Observations, written together: a deep insert may carry thousands
                for item in items:
                    if isinstance(item, Ref):
                        self._relink(conn, target_of(nav), item.id, nav.column, new_id)
                    elif item.entity is OBSERVATION:
                        embedded.append(item)
                    else:
                        self.insert(conn, item, {nav.column: new_id}, changes)
                if embedded:
                    self._insert_observations(conn, embedded, {nav.column: new_id}, changes)
            elif nav.kind is NavKind.LINK:
                for item in items:
                    other = self._resolve(conn, item, {}, changes)
                    row = {nav.link_self: new_id, nav.link_target: other}
                    if nav.link_table == "multi_datastream_observed_properties":
                        row["rank"] = rank
                        rank += 1
                    conn.execute(insert(TABLES[nav.link_table]).values(**row))
        if entity is THING and draft.links.get("Locations"):
            self._historical_location(conn, new_id, changes)
        elif entity is LOCATION and draft.links.get("Things"):
            for item in draft.links["Things"]:
                self._historical_location(conn, _id_of(item), changes)
        return new_id

    def _values(self, conn: Connection, draft: Draft, implied: dict[str, int], changes: list[Change]) -> dict[str, Any]:
        """A draft's columns: its values, the implied ones and its to-one links (inserted when they are drafts)."""
        values = dict(draft.values)
        values.update(implied)
        for name, items in draft.links.items():
            nav = draft.entity.nav_by_name[name]
            if nav.kind is NavKind.FK:
                values[nav.column] = self._resolve(conn, items[0], {}, changes)
        return values

    def _insert_observations(self, conn: Connection, drafts: list[Draft], implied: dict[str, int],
                             changes: list[Change]) -> list[int]:
        """Observation drafts written in one call (an Observation links nothing that needs its id)."""
        rows = [ObservationRow(**self._values(conn, draft, implied, changes)) for draft in drafts]
        ids = self.write_observations(conn, rows, changes)
        for draft, new_id in zip(drafts, ids, strict=True):
            draft.id = new_id
        return ids  # type: ignore[return-value]  # a refused row raises

    def _relink(self, conn: Connection, target: EntityType, target_id: int, column: str, new_id: int) -> None:
        table = TABLES[target.table]
        if conn.execute(update(table).where(table.c.id == target_id).values({column: new_id})).rowcount == 0:
            raise StoreError(f"{target.name} {target_id} does not exist")

    def _historical_location(self, conn: Connection, thing_id: int, changes: list[Change]) -> None:
        hl = TABLES["historical_locations"]
        hl_id = conn.execute(insert(hl).values(time=now(), thing_id=thing_id).returning(hl.c.id)).scalar_one()
        tl = TABLES["thing_locations"]
        loc_ids = conn.execute(select(tl.c.location_id).where(tl.c.thing_id == thing_id)).scalars().all()
        if loc_ids:
            conn.execute(insert(TABLES["location_historical_locations"]),
                         [{"location_id": lid, "historical_location_id": hl_id} for lid in loc_ids])
        changes.append(Change(HISTORICAL_LOCATION, hl_id, "create"))

    def _check_multi_datastream(self, draft: Draft, values: dict[str, Any]) -> None:
        if values.get("observation_type") != COMPLEX_OBSERVATION:
            raise StoreError(f"MultiDatastream.observationType must be {COMPLEX_OBSERVATION}")
        types = values.get("multi_observation_data_types")
        units = values.get("unit_of_measurements")
        props = draft.links.get("ObservedProperties", [])
        if not isinstance(types, list) or not isinstance(units, list):
            raise StoreError("MultiDatastream needs multiObservationDataTypes and unitOfMeasurements arrays")
        if not (len(types) == len(units) == len(props)) or not props:
            raise StoreError(
                "MultiDatastream: multiObservationDataTypes, unitOfMeasurements and ObservedProperties "
                f"must have the same length ({len(types)}, {len(units)}, {len(props)})"
            )

    # -- observations --------------------------------------------------------------------------
    def write_observations(self, conn: Connection, rows: list[ObservationRow], changes: list[Change],
                           refused: Callable[[int, str], None] | None = None,
                           prepared: observations.Prepared | None = None, commits: bool = False) -> list[int | None]:
        """Write Observations, however they came in: the one way into the observations table.

        Each row's result must fit its Datastream's observationType (or its MultiDatastream's
        multiObservationDataTypes); a row without a FeatureOfInterest gets the one generated from its
        Thing's Location; rows without a phenomenonTime get now. The (Multi)Datastreams' phenomenonTime
        and resultTime are widened over the rows, and each row is recorded in `changes` (notifications).
        A row the rules refuse raises StoreError with the reason (nothing is written), or, with
        `refused`, is reported to it as (index, reason) and skipped. Returns the new ids in row order
        (None for a refused row). `prepared`: the rows' `prepare_observations`, made before the transaction began.
        `commits`: the rows are all that `conn`'s transaction writes, and it has not begun: a few rows may be
        written and committed at once (PostgreSQL: one round trip); the transaction's own commit then has nothing
        left to do.
        """
        ids, written = observations.write(conn, self.bulk_insert, rows, refused or _refuse,
                                          prepared or self.prepare_observations(rows), commits)
        changes.extend(Change(OBSERVATION, values["id"], "create", values) for values in written)
        return ids

    def prepare_observations(self, rows: list[ObservationRow]) -> observations.Prepared:
        """What `write_observations` needs of the rows beyond the database, done before a write transaction begins
        so that it holds the write lock for less (a bulk write's columns and driver values)."""
        return observations.Prepared.of(rows, self.bind_observation)

    def feature_for(self, conn: Connection, datastream_id: int | None, multi_datastream_id: int | None) -> int:
        """The FeatureOfInterest generated from the Thing's Location, made once and reused."""
        found = observations.feature_for(conn, datastream_id, multi_datastream_id)
        if found is None:
            raise StoreError(observations.NO_FEATURE)
        return found

    # -- update and delete ---------------------------------------------------------------------
    def update(self, conn: Connection, draft: Draft, id_: int, changes: list[Change]) -> None:
        """Apply a PATCH/PUT draft to entity `id_`; NotFound when it does not exist."""
        entity = draft.entity
        table = TABLES[entity.table]
        if not self.exists(conn, entity, id_):
            raise NotFound(f"{entity.name} {id_} does not exist")
        values = dict(draft.values)
        for name, items in draft.links.items():
            nav = entity.nav_by_name[name]
            if nav.kind is NavKind.FK:
                values[nav.column] = self._resolve(conn, items[0], {}, changes)
        if values:
            conn.execute(update(table).where(table.c.id == id_).values(**values))
        if entity is OBSERVATION and values.keys() & OBSERVATION_CHECKED:
            # the changed Observation meets the rules of a new one, and its (Multi)Datastream's times cover it
            cols = [table.c[k] for k in OBSERVATION_CHECKED]
            row = conn.execute(select(*cols).where(table.c.id == id_)).mappings().one()
            reason = observations.misfit(conn, ObservationRow(**row))
            if reason is not None:
                raise StoreError(reason)
            if row["phenomenon_time_start"] is not None:
                observations.cover(conn, [dict(row)])
        for name, items in draft.links.items():
            nav = entity.nav_by_name[name]
            if nav.kind is NavKind.REVERSE:
                for item in items:
                    self._relink(conn, target_of(nav), _id_of(item), nav.column, id_)
            elif nav.kind is NavKind.LINK:
                link = TABLES[nav.link_table]
                if entity is THING and name == "Locations":
                    # a Thing is where its Locations say: PATCHing them moves it
                    conn.execute(delete(link).where(link.c[nav.link_self] == id_))
                for item in items:
                    other = self._resolve(conn, item, {}, changes)
                    self.add_link(conn, entity, id_, name, other)
                if entity is THING and name == "Locations":
                    self._historical_location(conn, id_, changes)
        changes.append(Change(entity, id_, "update"))

    def add_link(self, conn: Connection, entity: EntityType, id_: int, nav_name: str, other: int) -> None:
        """Link entity `id_` to `other` through a many-to-many navigation property (idempotent)."""
        nav = entity.nav_by_name[nav_name]
        link = TABLES[nav.link_table]
        if not self.exists(conn, target_of(nav), other):
            raise StoreError(f"{nav.target} {other} does not exist")
        present = conn.execute(select(exists().where(and_(link.c[nav.link_self] == id_,
                                                          link.c[nav.link_target] == other)))).scalar()
        if not present:
            row = {nav.link_self: id_, nav.link_target: other}
            if "rank" in link.c:
                row["rank"] = conn.execute(select(func.count()).where(link.c[nav.link_self] == id_)).scalar()
            conn.execute(insert(link).values(**row))

    def remove_link(self, conn: Connection, entity: EntityType, id_: int, nav_name: str, other: int) -> bool:
        """Unlink a many-to-many pair; False when there was no such link."""
        nav = entity.nav_by_name[nav_name]
        link = TABLES[nav.link_table]
        done = conn.execute(delete(link).where(and_(link.c[nav.link_self] == id_, link.c[nav.link_target] == other)))
        return done.rowcount > 0

    def delete(self, conn: Connection, entity: EntityType, id_: int) -> None:
        """Delete an entity with the spec's cascades; NotFound when it does not exist."""
        table = TABLES[entity.table]
        if entity is OBSERVED_PROPERTY:
            link = TABLES["multi_datastream_observed_properties"]
            md = TABLES["multi_datastreams"]
            md_ids = select(link.c.multi_datastream_id).where(link.c.observed_property_id == id_)
            conn.execute(delete(md).where(md.c.id.in_(md_ids)))
        if conn.execute(delete(table).where(table.c.id == id_)).rowcount == 0:
            raise NotFound(f"{entity.name} {id_} does not exist")
        if entity is LOCATION:
            # a HistoricalLocation without any Location left records nothing
            hl = TABLES["historical_locations"]
            lhl = TABLES["location_historical_locations"]
            conn.execute(delete(hl).where(~exists().where(lhl.c.historical_location_id == hl.c.id)))


def _id_of(item: Draft | Ref) -> int:
    assert item.id is not None, "a draft has its id once inserted"
    return item.id



