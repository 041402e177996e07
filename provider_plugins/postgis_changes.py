"""Where a department's PostGIS table changed, known exactly: statement triggers on the table (`changes: trigger`
in config) log each write's box in CRS84, so a vector tile made once is kept until a write reaches its region,
not until any write anywhere in the table.

The log is `udp_changes` in the table's schema: one row per INSERT, UPDATE, DELETE or TRUNCATE statement that
touched rows with geometry (a TRUNCATE logs the whole world). A region's marker is how many logged writes meet it
and the newest of their ids: the count grows with every commit that reaches the region, whatever order the
writers took their ids in (an id alone would not: a transaction that took id 5 may commit after the one that took
6), and the id tells a log emptied by hand and written again from the first count.

The triggers are installed at start-up under an advisory lock (two workers starting together would create them
twice); a table whose triggers were missing (first installed, or dropped while the platform was away) logs the
whole world once, so that no tile kept from before is trusted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

LOG = "udp_changes"
FUNCTION = "udp_note_change"
TRIGGERS = {  # name → the event and the transition tables it reads (one event per trigger that has them)
    "udp_changes_insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS udp_new",
    "udp_changes_update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS udp_old NEW TABLE AS udp_new",
    "udp_changes_delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS udp_old",
    "udp_changes_truncate": "AFTER TRUNCATE ON {table}",
}
_WORLD = "ST_MakeEnvelope(-180, -90, 180, 90, 4326)"
_LOCK = 0x75647063  # "udpc": serialises installs across the platform's processes

# The rows' box in CRS84; TG_ARGV: the geometry column and its SRID. It runs as its owner, the platform's role:
# the department's own writers need no rights on the log, and their search_path cannot redirect it.
_NOTE = f"""
CREATE OR REPLACE FUNCTION {{schema}}.{FUNCTION}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {{postgis}}, pg_catalog AS $body$
DECLARE
  box geometry;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    box := {_WORLD};
  ELSE
    EXECUTE format('SELECT ST_Transform(ST_SetSRID(ST_Extent(g)::geometry, %s), 4326) FROM (%s) r', TG_ARGV[1],
                   CASE TG_OP
                     WHEN 'INSERT' THEN format('SELECT %I AS g FROM udp_new', TG_ARGV[0])
                     WHEN 'DELETE' THEN format('SELECT %I AS g FROM udp_old', TG_ARGV[0])
                     ELSE format('SELECT %I AS g FROM udp_old UNION ALL SELECT %I FROM udp_new', TG_ARGV[0],
                                 TG_ARGV[0]) END)
      INTO box;
    IF box IS NULL THEN  -- no row, or none with a geometry: no map changed
      RETURN NULL;
    END IF;
  END IF;
  EXECUTE format('INSERT INTO %I.{LOG} (tbl, box) VALUES ($1, $2)', TG_TABLE_SCHEMA) USING TG_TABLE_NAME, box;
  RETURN NULL;
END
$body$
"""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def install(conn: Any, schema: str, table: str, geometry: str, srid: int) -> None:
    """The log, its function and the table's triggers, made where missing (in the caller's transaction, which
    commits them); ProgrammingError from the database when the role may not (owner or TRIGGER privilege)."""
    s, t = _quoted(schema), _quoted(table)
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {s}.{LOG} (id bigserial PRIMARY KEY, tbl text NOT NULL, "
                         "box geometry(Geometry, 4326) NOT NULL)")
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {LOG}_box ON {s}.{LOG} USING gist (box)")
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {LOG}_tbl ON {s}.{LOG} (tbl, id)")
    postgis = conn.execute(text("SELECT extnamespace::regnamespace::text FROM pg_extension "
                                "WHERE extname = 'postgis'")).scalar_one()
    # the driver reads `%` as its placeholders even without parameters: the body's format() needs them doubled
    conn.exec_driver_sql(_NOTE.format(schema=s, postgis=postgis).replace("%", "%%"))
    present = set(conn.execute(text(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) AND tgname LIKE 'udp_changes_%'"),
        {"t": f"{s}.{t}"}).scalars())
    missing = [name for name in TRIGGERS if name not in present]
    column = geometry.replace("'", "''")
    for name in missing:
        conn.exec_driver_sql(f"CREATE TRIGGER {name} {TRIGGERS[name].format(table=f'{s}.{t}')} FOR EACH STATEMENT "
                             f"EXECUTE FUNCTION {s}.{FUNCTION}('{column}', '{int(srid)}')")
    if missing:
        conn.execute(text(f"INSERT INTO {s}.{LOG} (tbl, box) VALUES (:t, {_WORLD})"), {"t": table})


def log_identity(conn: Any, schema: str) -> str:
    """The log table's identity (its oid): a log dropped and made again is another log."""
    return str(conn.execute(text("SELECT CAST(CAST(:t AS regclass) AS oid)"),
                            {"t": f"{_quoted(schema)}.{LOG}"}).scalar_one())


def marker(conn: Any, schema: str, table: str, box: tuple[float, float, float, float] | None = None) -> str:
    """The writes logged for the table (those meeting `box`, a CRS84 box, when given), as a marker that changes
    with each one committed."""
    where = "tbl = :t" + (" AND box && ST_MakeEnvelope(:w, :s, :e, :n, 4326)" if box is not None else "")
    params: dict[str, Any] = {"t": table}
    if box is not None:
        params.update(zip(("w", "s", "e", "n"), box, strict=True))
    count, newest = conn.execute(text(f"SELECT count(*), coalesce(max(id), 0) FROM {_quoted(schema)}.{LOG} "
                                      f"WHERE {where}"), params).one()
    return f"{count}-{newest}"
