"""Change tokens per table: a version that every committed write to a table raises, seen by every process.

The database keeps them itself (triggers), so no way of writing can forget to: single POSTs, deep
inserts, COPY, cascading deletes and whatever writer comes next. A read remembers the versions of
the tables it read; while they stand, its answer stands (sensorthings.cache).

- PostgreSQL: a statement trigger notes the table in a transaction-local setting; at commit a
  deferred trigger raises the noted tables' versions in name order, so that writers never lock
  version rows in crossing orders (no deadlock) and hold them only while committing. The rows are
  sharded by transaction id and summed by readers, so that concurrent writers to one table rarely
  wait for each other. The versions become visible in the same commit as the data.
- SQLite: one writer at a time, so a row trigger raises the version inside the writing transaction (the store's own
  bulk inserts of Observations raise them once for the statement instead: `raising_once`).

Besides the tables, `observations_rewritten` (REWRITTEN): raised by updates and deletes of Observations only.

On SQLite every row version is a number of one rising sequence (ROW_SEQUENCE), so that the rows changed since a
moment can be read as those above its number (sensorthings.fragments.StreamIndex).

Besides the tables, rows: each (Multi)Datastream has a version of its own row and one of its Observations
(`sta_row_versions`, keys `datastreams@7`, `observations@d7`; `m` for a MultiDatastream), kept the same way
(PostgreSQL: statement triggers read the rows from their transition tables). A read confined to one
Datastream's Observations (a chart) depends on those instead of the whole tables, so devices writing to
other Datastreams leave its answer standing. Nothing truncates these tables; a TRUNCATE would raise the
table versions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.sql.util import find_tables

VERSIONS = "sta_versions"
ROW_VERSIONS = "sta_row_versions"
ROW_TABLES = ("observations", "datastreams", "multi_datastreams")  # the tables whose rows have versions
SHARDS = 8
# raised by every change to Observations already written (an update, a delete), not by new ones: while it stands, an
# Observation's JSON stands (sensorthings.fragments)
REWRITTEN = "observations_rewritten"
# raised by every change that may show or hide Observations already written from a reader without the read
# role (sensorthings.access): a Thing changed (its `udpAccess`), a (Multi)Datastream moved to another Thing. Deletes
# take their Observations along (REWRITTEN). What a hidden page stands on besides its rows (sensorthings.appended),
# where the tables themselves change with every Observation (each widens its Datastream's phenomenonTime).
SHOWN = "observations_shown"
# what raises SHOWN: a Thing changed, a (Multi)Datastream moved to another Thing
_SHOWN_BY = (("things", "UPDATE"), ("datastreams", "UPDATE OF thing_id"), ("multi_datastreams", "UPDATE OF thing_id"))
ALL = "*"  # a read whose tables are unknown (raw SQL): it depends on every table
Versions = tuple[tuple[str, int], ...]  # (table or row key, version), sorted

def _row_key(table: str, row: str = "") -> str:
    """The SQL of a row's version key (`confined` makes the same keys): an Observation's stream, a stream's id.
    `row`: the row's qualifier (SQLite's NEW or OLD); none for a transition table's columns."""
    at = f"{row}." if row else ""
    if table == "observations":
        return (f"'observations@' || CASE WHEN {at}datastream_id IS NOT NULL THEN 'd' || {at}datastream_id "
                f"ELSE 'm' || {at}multi_datastream_id END")
    return f"'{table}@' || {at}id"


_PG_FUNCTIONS = f"""
CREATE TABLE IF NOT EXISTS {VERSIONS} (
    name text NOT NULL, shard integer NOT NULL, version bigint NOT NULL, PRIMARY KEY (name, shard));
CREATE UNLOGGED TABLE IF NOT EXISTS sta_version_flush (xid bigint NOT NULL);
CREATE OR REPLACE FUNCTION sta_note_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    noted text := coalesce(current_setting('sta.written', true), '');
    -- the version to raise: the table's, or the one the trigger names (REWRITTEN)
    written text := coalesce(TG_ARGV[0], TG_TABLE_NAME);
BEGIN
    IF noted = '' THEN
        PERFORM set_config('sta.written', written, true);
        -- a row here fires sta_flush_versions once, at commit
        INSERT INTO sta_version_flush VALUES (txid_current());
    ELSIF position(',' || written || ',' IN ',' || noted || ',') = 0 THEN
        PERFORM set_config('sta.written', noted || ',' || written, true);
    END IF;
    RETURN NULL;
END $$;
CREATE TABLE IF NOT EXISTS {ROW_VERSIONS} (key text PRIMARY KEY, version bigint NOT NULL);
CREATE OR REPLACE FUNCTION sta_note_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    noted text := coalesce(current_setting('sta.rows', true), '');
BEGIN
    -- `changed`: the rows after (before, for a DELETE); an UPDATE may also move Observations away from a
    -- stream (`changed_before`). Repeated keys are harmless: the flush takes each once.
    IF TG_TABLE_NAME = 'observations' THEN
        noted := noted || ',' || coalesce((SELECT string_agg(DISTINCT {_row_key("observations")}, ',')
                                           FROM changed), '');
        IF TG_OP = 'UPDATE' THEN
            noted := noted || ',' || coalesce((SELECT string_agg(DISTINCT {_row_key("observations")}, ',')
                                               FROM changed_before), '');
        END IF;
    ELSE
        noted := noted || ',' || coalesce((SELECT string_agg(TG_TABLE_NAME || '@' || id, ',') FROM changed), '');
    END IF;
    PERFORM set_config('sta.rows', noted, true);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION sta_flush_versions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    table_name text;
    row_key text;
    my_shard integer := mod(txid_current(), {SHARDS})::integer;
BEGIN
    FOR table_name IN
        SELECT DISTINCT unnest(string_to_array(current_setting('sta.written', true), ',')) ORDER BY 1
    LOOP
        INSERT INTO {VERSIONS} AS v (name, shard, version) VALUES (table_name, my_shard, 1)
        ON CONFLICT (name, shard) DO UPDATE SET version = v.version + 1;
    END LOOP;
    PERFORM set_config('sta.written', '', true);
    -- after the tables, in key order: every writer locks version rows in one order
    FOR row_key IN
        SELECT DISTINCT k FROM unnest(string_to_array(current_setting('sta.rows', true), ',')) AS k WHERE k <> ''
        ORDER BY 1
    LOOP
        INSERT INTO {ROW_VERSIONS} AS v (key, version) VALUES (row_key, 1)
        ON CONFLICT (key) DO UPDATE SET version = v.version + 1;
    END LOOP;
    PERFORM set_config('sta.rows', '', true);
    DELETE FROM sta_version_flush WHERE xid = NEW.xid;
    RETURN NULL;
END $$;
"""
_PG_FLUSH_TRIGGER = """CREATE CONSTRAINT TRIGGER sta_flush_versions AFTER INSERT ON sta_version_flush
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sta_flush_versions()"""


def pg_triggers(conn: Connection, names: tuple[str, ...]) -> set[tuple[str, str]]:
    """PostgreSQL: the triggers of those `names` there are, as (table, trigger), on the tables the search path
    shows: an installer creates only the missing ones (creating one locks its table against writers)."""
    return {(t, n) for t, n in conn.exec_driver_sql(
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = ANY(%s) AND pg_table_is_visible(c.oid)", (list(names),)).all()}


def install(conn: Connection, tables: Iterable[str]) -> None:
    """The version table and the triggers that keep it, on every table in `tables` (idempotent)."""
    names = sorted(tables)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_FUNCTIONS)
        # only the triggers missing: creating one locks its table against writers (SHARE ROW EXCLUSIVE), and a
        # process opening the store while others write (`udp seed`, a re-import) deadlocked with them
        have = pg_triggers(conn, ("sta_note_write", "sta_flush_versions", "sta_note_rewrite", "sta_note_shown"))
        if ("sta_version_flush", "sta_flush_versions") not in have:
            conn.exec_driver_sql(_PG_FLUSH_TRIGGER)
        for name in names:
            if (name, "sta_note_write") not in have:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER sta_note_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {name} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION sta_note_write()")
        if "observations" in names and ("observations", "sta_note_rewrite") not in have:
            conn.exec_driver_sql(
                "CREATE TRIGGER sta_note_rewrite AFTER UPDATE OR DELETE OR TRUNCATE ON observations "
                f"FOR EACH STATEMENT EXECUTE FUNCTION sta_note_write('{REWRITTEN}')")
        for name, change in _SHOWN_BY:
            if name in names and (name, "sta_note_shown") not in have:
                conn.exec_driver_sql(f"CREATE TRIGGER sta_note_shown AFTER {change} ON {name} "
                                     f"FOR EACH STATEMENT EXECUTE FUNCTION sta_note_write('{SHOWN}')")
        row_triggers = pg_triggers(conn, tuple(f"sta_rows_{op}" for op in ("insert", "delete", "update")))
        for name in ROW_TABLES:
            if name not in names:
                continue
            # a trigger with transition tables takes one event
            for op, tables in (("insert", "NEW TABLE AS changed"), ("delete", "OLD TABLE AS changed"),
                               ("update", "OLD TABLE AS changed_before NEW TABLE AS changed")):
                if (name, f"sta_rows_{op}") not in row_triggers:
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER sta_rows_{op} AFTER {op.upper()} ON {name} REFERENCING {tables} "
                        "FOR EACH STATEMENT EXECUTE FUNCTION sta_note_rows()")
        return
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {VERSIONS} (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    conn.exec_driver_sql(f"INSERT OR IGNORE INTO {VERSIONS} (name, version) VALUES "
                         + ", ".join(f"('{name}', 0)" for name in [*names, REWRITTEN, SHOWN]))
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {QUIET} (held INTEGER NOT NULL)")
    _replace_unquiet(conn)
    bump = f"BEGIN UPDATE {VERSIONS} SET version = version + 1 WHERE name = '{{name}}'; END"
    for name in names:
        for op in ("INSERT", "UPDATE", "DELETE"):
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS sta_version_{op.lower()}_{name} AFTER {op} ON {name} "
                                 + _QUIET_WHEN.get((name, op), "") + bump.format(name=name))
    if "observations" in names:
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS sta_rewrite_{op.lower()}_observations AFTER {op} "
                                 "ON observations " + bump.format(name=REWRITTEN))
    for name, change in _SHOWN_BY:
        if name in names:
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS sta_shown_{name} AFTER {change} ON {name} "
                                 + bump.format(name=SHOWN))
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {ROW_VERSIONS} (key TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {ROW_VERSIONS}_version ON {ROW_VERSIONS} (version)")
    # above every version given before the sequence was (each key counted for itself then)
    conn.exec_driver_sql(f"INSERT OR IGNORE INTO {VERSIONS} (name, version) "
                         f"SELECT '{ROW_SEQUENCE}', coalesce(max(version), 0) FROM {ROW_VERSIONS}")
    _replace_outdated(conn, [f"sta_rows_{op}_{name}" for name in ROW_TABLES for op in ("insert", "delete", "update")],
                      ROW_SEQUENCE)
    for name in ROW_TABLES:
        if name not in names:
            continue
        for op, rows in (("insert", ("NEW",)), ("delete", ("OLD",)), ("update", ("OLD", "NEW"))):
            bumps = "".join(f"{_NEXT_ROW_VERSION}; {_row_upsert(_row_key(name, row))}; " for row in rows)
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS sta_rows_{op}_{name} AFTER {op.upper()} ON {name} "
                                 f"{_QUIET_WHEN.get((name, op.upper()), '')}BEGIN {bumps}END")


# SQLite: every row version is a number of one rising sequence, so that the rows changed since a moment are those
# above the sequence's number then (sensorthings.fragments.StreamIndex); the version table keeps its last number
ROW_SEQUENCE = "sta_row_sequence"
_NEXT_ROW_VERSION = f"UPDATE {VERSIONS} SET version = version + 1 WHERE name = '{ROW_SEQUENCE}'"


def _row_upsert(key: str) -> str:
    """SQLite: the statement giving the row key `key` (SQL) the sequence's number."""
    return (f"INSERT INTO {ROW_VERSIONS} (key, version) VALUES "
            f"({key}, (SELECT version FROM {VERSIONS} WHERE name = '{ROW_SEQUENCE}')) "
            "ON CONFLICT (key) DO UPDATE SET version = excluded.version")


# -- SQLite: Observations inserted in bulk raise their versions once ----------------------------------------------
# SQLite has row triggers only: two version bumps per row were a fifth of inserting 1,000 Observations, while the
# writer holds the one write lock. Inside the store's bulk insert a row in QUIET (seen only by that transaction:
# SQLite has one writer, readers see what is committed) makes the insert triggers of observations stand aside, and
# `raising_once` raises the same versions once for the statement. Every other writer, this program's or not,
# finds QUIET empty and the triggers at work.
QUIET = "sta_quiet_inserts"
_QUIET_WHEN = {("observations", "INSERT"): f"WHEN NOT EXISTS (SELECT 1 FROM {QUIET}) "}


def _replace_unquiet(conn: Connection) -> None:
    """Drop the triggers of `_QUIET_WHEN` made before they could stand aside (made again by `install`)."""
    _replace_outdated(conn, [f"sta_{kind}_{op.lower()}_{table}" for table, op in _QUIET_WHEN
                             for kind in ("version", "rows")], QUIET)


def _replace_outdated(conn: Connection, names: list[str], marker: str) -> None:
    """Drop the triggers among `names` whose SQL lacks `marker`: made by an older release (made again by `install`)."""
    for name, sql in conn.exec_driver_sql(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({', '.join('?' * len(names))})",
            tuple(names)).all():
        if marker not in sql:
            conn.exec_driver_sql(f"DROP TRIGGER {name}")


@contextmanager
def raising_once(conn: Connection, streams: Iterable[tuple[str, int]]) -> Iterator[None]:
    """SQLite: Observations inserted within raise the versions of observations and of the `streams` they belong to
    ((entity table, id): `confined`'s) once, after, instead of once per row."""
    conn.exec_driver_sql(f"INSERT INTO {QUIET} (held) VALUES (1)")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"DELETE FROM {QUIET}")
    conn.exec_driver_sql(f"UPDATE {VERSIONS} SET version = version + 1 WHERE name = 'observations'")
    keys = sorted({confined(table, id_)["observations"] for table, id_ in streams})
    conn.exec_driver_sql(_NEXT_ROW_VERSION)
    conn.exec_driver_sql(_row_upsert("?"), [(k,) for k in keys])


_TABLES_SQL = {
    "postgresql": f"SELECT name, sum(version)::bigint FROM {VERSIONS} GROUP BY name",
    "sqlite": f"SELECT name, version FROM {VERSIONS}",
}


def current_sql(dialect: str, rows: int) -> str:
    """The statement reading every table's version and those of `rows` row keys (parameters: the keys)."""
    if not rows:
        return _TABLES_SQL[dialect]
    mark = "%s" if dialect == "postgresql" else "?"
    keys = ", ".join([mark] * rows)
    return f"{_TABLES_SQL[dialect]} UNION ALL SELECT key, version FROM {ROW_VERSIONS} WHERE key IN ({keys})"


def current(conn: Connection, rows: tuple[str, ...] = ()) -> dict[str, int]:
    """Every table's version now, and the versions of the row keys `rows` (a table or row never written may be
    missing: its version is 0)."""
    return dict(conn.exec_driver_sql(current_sql(conn.dialect.name, len(rows)), rows).all())  # type: ignore[arg-type]


def confined(entity_table: str, id_: int) -> dict[str, str]:
    """For a read confined to one (Multi)Datastream (`entity_table`, `id_`) and its Observations: the version
    key that stands for each table it reads there."""
    kind = "d" if entity_table == "datastreams" else "m"
    return {entity_table: f"{entity_table}@{id_}", "observations": f"observations@{kind}{id_}"}


def stamp(read: set[str], now: Mapping[str, int], every: Iterable[str],
          scope: Mapping[str, str] | None = None) -> Versions:
    """The versions a read depends on: of the tables it read (of `every` table when it read raw SQL, or
    when nothing was noted: an answer is never kept as if it depended on nothing); with `scope` (`confined`),
    of the row keys standing for the tables it names."""
    names = every if ALL in read or not read else read
    if scope:
        names = {scope.get(name, name) for name in names}
    return tuple(sorted((name, now.get(name, 0)) for name in names))


def holds(versions: Versions, now: Mapping[str, int]) -> bool:
    """True while no table in `versions` has been written since."""
    get = now.get
    for name, version in versions:  # a loop, not all() over a generator: twice as fast, and hits call it often
        if get(name, 0) != version:
            return False
    return True


# -- which tables a read touched -------------------------------------------------------------------
_TABLES_OF: dict[Any, frozenset[str]] = {}  # statement -> the tables it reads (statements are reused)
READ_KEY = "udp_tables_read"
NOW_KEY = "udp_versions_now"  # conn.info: the versions a cached read reads at (sensorthings.fragments uses them)


@contextmanager
def noting_reads(conn: Connection, into: set[str] | None) -> Iterator[None]:
    """Within, the tables the statements on `conn` read are noted in `into` (with None: not noted); whatever noted
    them before notes again after."""
    before = conn.info.pop(READ_KEY, None)
    if into is not None:
        conn.info[READ_KEY] = into
    try:
        yield
    finally:
        conn.info.pop(READ_KEY, None)
        if before is not None:
            conn.info[READ_KEY] = before


def track_reads(engine: Engine) -> None:
    """Record in `conn.info[READ_KEY]` (when a set is there) the tables each statement reads."""

    @event.listens_for(engine, "before_execute")
    def _note(conn: Connection, clause: Any, _multiparams: Any, _params: Any, _options: Any) -> None:
        read = conn.info.get(READ_KEY)
        if read is None:
            return
        names = _TABLES_OF.get(clause)
        if names is None:
            names = _tables_of(clause)
            if len(_TABLES_OF) > 256:
                _TABLES_OF.clear()
            _TABLES_OF[clause] = names
        read |= names


def _tables_of(clause: Any) -> frozenset[str]:
    if isinstance(clause, str) or not hasattr(clause, "get_children"):
        return frozenset({ALL})
    names = set()
    for table in find_tables(clause, check_columns=True, include_crud=True):
        if table is None:  # a column of no table: `count(*)`, a literal
            continue
        name = getattr(table, "name", None)
        if name is None:
            return frozenset({ALL})
        names.add(name.removeprefix("rtree_"))
    return frozenset(names)
