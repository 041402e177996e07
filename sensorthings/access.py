"""What is hidden from anyone without the `read` role: Things marked `properties.udpAccess = "internal"`
(config.yml `access: internal`), with their Datastreams, MultiDatastreams, Observations, Locations,
HistoricalLocations and the FeaturesOfInterest made from those Locations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, FromClause, and_, or_, select, text

from sensorthings.model import EntityType
from sensorthings.query.sql import SqlDialect
from sensorthings.store.schema import TABLES

INTERNAL = "internal"
INDEX = "things_internal"
# what marks a Thing internal, its constants written out: a partial index (`install`) answers only the very condition
# it was made with. With the path bound as a parameter every read without the read role scanned all the Things in
# each statement (50,000 Things: 13-14 ms a statement on SQLite, 6.4 on PostgreSQL; 0.05 and 0.17 with the index)
_MARKED = {"sqlite": f"json_extract(things.properties, '$.\"udpAccess\"') = '{INTERNAL}'",
           "postgresql": f"(things.properties #>> '{{udpAccess}}') = '{INTERNAL}'"}


def internal_things(dialect: SqlDialect) -> Any:
    """SELECT the ids of internal Things."""
    return select(TABLES["things"].c.id).where(text(_MARKED[dialect.name]))


def install(conn: Connection) -> None:
    """Create the partial index of the internal Things where it is missing (on PostgreSQL looked up first: even
    CREATE INDEX IF NOT EXISTS waits for the writers' lock on the table)."""
    name = conn.dialect.name
    if name == "postgresql" and conn.exec_driver_sql(
            f"SELECT 1 FROM pg_indexes WHERE indexname = '{INDEX}' AND schemaname = current_schema()").first():
        return
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {INDEX} ON things (id) WHERE {_MARKED[name]}")


def _streams(name: str, dialect: SqlDialect) -> Any:
    table = TABLES[name]
    return select(table.c.id).where(table.c.thing_id.in_(internal_things(dialect)))


def _hidden_locations(dialect: SqlDialect) -> Any:
    tl = TABLES["thing_locations"]
    return select(tl.c.location_id).where(tl.c.thing_id.in_(internal_things(dialect)))


def visible(entity: EntityType, table: FromClause, dialect: SqlDialect) -> ColumnElement | None:
    """The condition a row of `entity` must meet to be shown without the read role (None: all are)."""
    c = table.c
    name = entity.table
    if name == "things":
        return c.id.not_in(internal_things(dialect))
    if name in ("datastreams", "multi_datastreams", "historical_locations"):
        return c.thing_id.not_in(internal_things(dialect))
    if name == "observations":
        return and_(or_(c.datastream_id.is_(None), c.datastream_id.not_in(_streams("datastreams", dialect))),
                    or_(c.multi_datastream_id.is_(None),
                        c.multi_datastream_id.not_in(_streams("multi_datastreams", dialect))))
    if name == "locations":
        return c.id.not_in(_hidden_locations(dialect))
    if name == "features_of_interest":
        return or_(c.generated_from.is_(None), c.generated_from.not_in(_hidden_locations(dialect)))
    return None


class InternalIndex:
    """The ids of what is internal, for filtering rows in Python (MQTT notifications); refreshed when asked
    after `ttl` seconds, or at once after a change to Things, Datastreams or Locations."""

    def __init__(self, store: Any, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self.loaded = -1e9
        self.things: set[int] = set()
        self.datastreams: set[int] = set()
        self.multi: set[int] = set()
        self.locations: set[int] = set()

    def refresh(self, force: bool = False) -> None:
        """Read the ids again when they may be stale."""
        import time

        if not force and time.monotonic() - self.loaded < self.ttl:
            return
        dialect = self.store.dialect
        with self.store.read() as conn:
            self.things = {r[0] for r in conn.execute(internal_things(dialect))}
            self.datastreams = {r[0] for r in conn.execute(_streams("datastreams", dialect))} if self.things else set()
            self.multi = {r[0] for r in conn.execute(_streams("multi_datastreams", dialect))} if self.things else set()
            self.locations = {r[0] for r in conn.execute(_hidden_locations(dialect))} if self.things else set()
        self.loaded = time.monotonic()

    def hidden(self, entity: EntityType, row: dict[str, Any]) -> bool:
        """Whether a row is internal."""
        if not self.things:
            return False
        name = entity.table
        if name == "things":
            return row.get("id") in self.things
        if name in ("datastreams", "multi_datastreams", "historical_locations"):
            return row.get("thing_id") in self.things
        if name == "observations":
            return row.get("datastream_id") in self.datastreams or row.get("multi_datastream_id") in self.multi
        if name == "locations":
            return row.get("id") in self.locations
        if name == "features_of_interest":
            return row.get("generated_from") in self.locations
        return False
