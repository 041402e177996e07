"""PostgreSQL: the Observations' references kept by statement triggers instead of foreign keys.

A foreign key checks each inserted row on its own: a query and a row lock per reference, three per Observation. Of
COPYing 1,000 Observations into a table of 100,000 (18 ms), the checks took 9 ms, while the devices' rows name a
handful of Datastreams and one FeatureOfInterest (measured here: CreateObservations from one client, 20,761 rows/s with
the foreign keys, 27,107-32,609 without). Here each statement checks the distinct references of all its rows at once,
with the same guarantees as the foreign keys it replaces:
- every Datastream, MultiDatastream and FeatureOfInterest an inserted or updated Observation names exists, and is
  locked FOR KEY SHARE until commit (as a foreign key locks it): a concurrent delete waits, then takes the new
  Observations along; an insert naming a row deleted meanwhile fails. A missing one raises what the foreign key
  raised (SQLSTATE 23503, its constraint's name, `Key (column)=(id) is not present in table "…"`);
- deleting a Datastream, MultiDatastream or FeatureOfInterest deletes its Observations (ON DELETE CASCADE), once per
  statement; truncating one is refused while Observations name its rows, unless they are truncated in the same
  statement (as the foreign key refused it; TRUNCATE … CASCADE does not reach them now).
SQLite keeps its foreign keys: its checks run in-process, a lookup in an index the insert reads anyway.
"""

from __future__ import annotations

from sqlalchemy import Connection

from sensorthings.store.versions import pg_triggers

# (column of observations, the table it names)
REFERENCES = (("datastream_id", "datastreams"), ("multi_datastream_id", "multi_datastreams"),
              ("feature_of_interest_id", "features_of_interest"))


def _check(column: str, table: str) -> str:
    # the rows locked in id order (every statement locks in one order), then any wanted one not locked is missing
    return f"""
    SELECT array_agg(DISTINCT {column} ORDER BY {column}) INTO wanted FROM changed WHERE {column} IS NOT NULL;
    IF wanted IS NOT NULL THEN
        SELECT count(*) INTO found FROM (SELECT id FROM {table} WHERE id = ANY(wanted) ORDER BY id FOR KEY SHARE) l;
        IF found < cardinality(wanted) THEN
            SELECT w INTO missing FROM unnest(wanted) AS w
                WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE id = w) LIMIT 1;
            -- no percent sign in here: the driver would read it as a placeholder
            RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', TABLE = 'observations',
                CONSTRAINT = 'observations_{column}_fkey',
                MESSAGE = 'insert or update on table "observations" violates foreign key constraint '
                          '"observations_{column}_fkey"',
                DETAIL = 'Key ({column})=(' || missing || ') is not present in table "{table}".';
        END IF;
    END IF;"""


_FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION sta_observation_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[];
    found bigint;
    missing bigint;
BEGIN{"".join(_check(column, table) for column, table in REFERENCES)}
    RETURN NULL;
END $$;
""" + "".join(f"""
CREATE OR REPLACE FUNCTION sta_cascade_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM observations WHERE {column} IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION sta_truncated_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- after every table of the statement is truncated: Observations truncated with it have none left
    IF EXISTS (SELECT 1 FROM observations WHERE {column} IS NOT NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
            MESSAGE = 'cannot truncate a table referenced in a foreign key constraint',
            DETAIL = 'Table "observations" references "{table}".',
            HINT = 'Truncate table "observations" in the same statement.';
    END IF;
    RETURN NULL;
END $$;
""" for column, table in REFERENCES)

# (table, trigger name, its definition): a trigger with transition tables takes one event
_TRIGGERS = [
    ("observations", "sta_references_insert", "AFTER INSERT ON observations REFERENCING NEW TABLE AS changed "
                                              "FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_references()"),
    ("observations", "sta_references_update", "AFTER UPDATE ON observations REFERENCING NEW TABLE AS changed "
                                              "FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_references()"),
    *((table, "sta_cascade_observations", f"AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone "
                                          f"FOR EACH STATEMENT EXECUTE FUNCTION sta_cascade_{table}()")
      for _column, table in REFERENCES),
    *((table, "sta_truncate_observations", f"AFTER TRUNCATE ON {table} "
                                           f"FOR EACH STATEMENT EXECUTE FUNCTION sta_truncated_{table}()")
      for _column, table in REFERENCES),
]


def install(conn: Connection) -> None:
    """PostgreSQL: the triggers that keep the Observations' references, then the foreign keys they replace dropped
    (idempotent; in the schema's transaction, so that no moment is without either)."""
    conn.exec_driver_sql(_FUNCTIONS)
    have = pg_triggers(conn, tuple({name for _table, name, _definition in _TRIGGERS}))
    for table, name, definition in _TRIGGERS:
        if (table, name) not in have:
            conn.exec_driver_sql(f"CREATE TRIGGER {name} {definition}")
    for (name,) in conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'observations'::regclass AND contype = 'f'").all():
        conn.exec_driver_sql(f'ALTER TABLE observations DROP CONSTRAINT "{name}"')
