"""PostgreSQL: the Observations' references kept by statement triggers (sensorthings.store.references) hold what the
foreign keys they replace held: no Observation names a row that is not there, deletes take Observations along,
concurrent writers and deleters meet as they did, and a database made with the foreign keys loses them on opening."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError

from sensorthings.service import Service
from sensorthings.store import references
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from tests.harness import PG_URL, pg_database
from tests.test_fragments import OM, UNIT, stream
from tests.test_observation_writes import inserted_at_once

pytestmark = pytest.mark.skipif(not PG_URL, reason="UDP_TEST_PG is not set: PostgreSQL store tests skipped")


@pytest.fixture
def city() -> Iterator[tuple[str, Store, Service, dict[str, int]]]:
    """A fresh PostgreSQL store with a Thing, two Datastreams, a MultiDatastream and their FeatureOfInterest."""
    for url in pg_database():
        store = Store.open(url)
        service = Service(store)
        try:
            thing = service.call("POST", "Things", {
                "name": "t", "description": "d", "Datastreams": [stream("a"), stream("b")],
                "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [10, 53]}}]})
            tid = thing["@iot.id"]
            multi = service.call("POST", "MultiDatastreams", {
                "name": "m", "description": "d", "observationType": OM.rsplit("/", 1)[0] + "/OM_ComplexObservation",
                "multiObservationDataTypes": [OM], "unitOfMeasurements": [UNIT], "Thing": {"@iot.id": tid},
                "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                "ObservedProperties": [{"name": "p", "definition": "d", "description": "d"}]})
            a, b = (d["@iot.id"] for d in service.call("GET", "Datastreams", **{"$orderby": "id"})["value"])
            for ds in (a, b):
                service.call("POST", f"Datastreams({ds})/Observations",
                             {"result": 1, "phenomenonTime": "2026-01-01T00:00:00Z"})
            service.call("POST", f"MultiDatastreams({multi['@iot.id']})/Observations", {"result": [2]})
            foi = service.call("GET", "FeaturesOfInterest")["value"][0]["@iot.id"]
            yield url, store, service, {"thing": tid, "a": a, "b": b, "multi": multi["@iot.id"], "foi": foi}
        finally:
            store.close()


def _count(url: str, where: str = "true") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM observations WHERE {where}").fetchone()[0]  # type: ignore[index]


def _insert(conn: psycopg.Connection[Any], ids: dict[str, int], **refs: Any) -> None:
    values = {"datastream_id": ids["a"], "multi_datastream_id": None, "feature_of_interest_id": ids["foi"], **refs}
    conn.execute("INSERT INTO observations (phenomenon_time_start, result_type, result_number, datastream_id, "
                 "multi_datastream_id, feature_of_interest_id) VALUES (now(), 0, 1, %(datastream_id)s, "
                 "%(multi_datastream_id)s, %(feature_of_interest_id)s)", values)


def test_the_foreign_keys_are_replaced(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    url, _store, _service, _ids = city
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'observations'::regclass "
                            "AND contype = 'f'").fetchone() == (0,)
        triggers = {r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'sta_references_%' "
            "OR tgname IN ('sta_cascade_observations', 'sta_truncate_observations')")}
    assert triggers == {"sta_references_insert", "sta_references_update", "sta_cascade_observations",
                        "sta_truncate_observations"}


@pytest.mark.parametrize("column, table", references.REFERENCES)
def test_a_reference_to_a_missing_row_is_refused_as_the_foreign_key_refused_it(
        city: tuple[str, Store, Service, dict[str, int]], column: str, table: str) -> None:
    url, _store, _service, ids = city
    before = _count(url)
    refs: dict[str, Any] = {column: 999_999}
    if column == "multi_datastream_id":
        refs["datastream_id"] = None
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        _insert(conn, ids, **refs)
    assert raised.value.diag.constraint_name == f"observations_{column}_fkey"
    assert raised.value.diag.message_detail == f'Key ({column})=(999999) is not present in table "{table}".'
    # an update naming a missing row too
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(f"UPDATE observations SET {column} = 999999 WHERE {column} IS NOT NULL")
    assert _count(url) == before


def test_every_write_path_is_refused_with_an_integrity_error(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    """COPY (bulk) and the pipelined few-rows insert, in a transaction or committing its own: many rows naming one
    missing Datastream, refused at once."""
    from sensorthings.store import observations

    url, store, _service, ids = city
    before = _count(url)
    row = ObservationRow(1, 1.0, datastream_id=999_999, feature_of_interest_id=ids["foi"],
                         phenomenon_time_start=datetime(2026, 1, 1, tzinfo=UTC)).columns()
    for insert, given in ((store.bulk_insert, store.bind_observation(row)),
                          (lambda conn, rows: observations._insert_widening(conn, rows, False), row),
                          (inserted_at_once, row)):
        with pytest.raises(IntegrityError), store.write() as (conn, _changes):
            insert(conn, [given] * 40)  # many rows, one missing reference: refused once
    assert _count(url) == before


def test_deletes_take_their_observations_along(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    url, _store, service, ids = city
    assert _count(url, f"datastream_id = {ids['a']}") == 1
    service.call("DELETE", f"Datastreams({ids['a']})")
    assert _count(url, f"datastream_id = {ids['a']}") == 0
    assert _count(url, f"datastream_id = {ids['b']}") == 1  # the other stream's stay
    service.call("DELETE", f"MultiDatastreams({ids['multi']})")
    assert _count(url, "multi_datastream_id IS NOT NULL") == 0
    # a Thing's delete cascades to its Datastreams by their own foreign key, and on to the Observations here
    service.call("DELETE", f"Things({ids['thing']})")
    assert _count(url) == 0


def test_a_feature_deleted_takes_its_observations(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    url, _store, service, ids = city
    assert _count(url) == 3
    service.call("DELETE", f"FeaturesOfInterest({ids['foi']})")
    assert _count(url) == 0


@pytest.mark.parametrize("table", [table for _column, table in references.REFERENCES])
def test_truncating_a_table_observations_name_is_refused_unless_they_go_too(
        city: tuple[str, Store, Service, dict[str, int]], table: str) -> None:
    """As the foreign key refused it: the rows named would be gone and the Observations left."""
    url, _store, _service, _ids = city
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.FeatureNotSupported) as raised:
        conn.execute(f"TRUNCATE {table} CASCADE")
    assert raised.value.diag.message_detail == f'Table "observations" references "{table}".'
    assert _count(url) == 3
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {table}, observations CASCADE")
    assert _count(url) == 0


def test_a_delete_waits_for_a_writer_and_takes_its_rows_too(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    """An Observation inserted but not committed locks its Datastream: a delete of the Datastream waits for the
    commit, then deletes it with the rest; none is left naming a Datastream gone."""
    url, _store, _service, ids = city
    writer = psycopg.connect(url)
    try:
        _insert(writer, ids)  # in a transaction, not committed
        done = threading.Event()

        def delete() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DELETE FROM datastreams WHERE id = {ids['a']}")
            done.set()

        deleter = threading.Thread(target=delete)
        deleter.start()
        time.sleep(0.5)
        assert not done.is_set()  # waiting for the writer's lock
        writer.commit()
        deleter.join(10)
        assert done.is_set()
    finally:
        writer.close()
    assert _count(url, f"datastream_id = {ids['a']}") == 0
    assert _count(url, "datastream_id IS NOT NULL AND datastream_id NOT IN (SELECT id FROM datastreams)") == 0


def test_a_writer_naming_a_row_being_deleted_is_refused(city: tuple[str, Store, Service, dict[str, int]]) -> None:
    """A Datastream deleted but not committed: an insert naming it waits, and is refused once the delete commits."""
    url, _store, _service, ids = city
    deleter = psycopg.connect(url)
    outcome: list[BaseException | None] = []
    try:
        deleter.execute(f"DELETE FROM datastreams WHERE id = {ids['a']}")

        def write() -> None:
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    _insert(conn, ids)
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.5)
        assert outcome == []  # waiting for the deleter's lock
        deleter.commit()
        writer.join(10)
    finally:
        deleter.close()
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.ForeignKeyViolation)
    assert _count(url, "datastream_id IS NOT NULL AND datastream_id NOT IN (SELECT id FROM datastreams)") == 0


def test_a_database_made_with_the_foreign_keys_loses_them_on_opening() -> None:
    """An older release's database: the foreign keys are there and the triggers not; opening the store replaces
    them, and opening it again changes nothing."""
    for url in pg_database():
        Store.open(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            for column, table in references.REFERENCES:
                conn.execute(f"ALTER TABLE observations ADD CONSTRAINT observations_{column}_fkey FOREIGN KEY "
                             f"({column}) REFERENCES {table}(id) ON DELETE CASCADE")
            for _column, table in references.REFERENCES:
                conn.execute(f"DROP TRIGGER sta_cascade_observations ON {table}")
            conn.execute("DROP TRIGGER sta_references_insert ON observations")
        for _ in range(2):
            Store.open(url).close()
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'observations'::regclass "
                                    "AND contype = 'f'").fetchone() == (0,)
                assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname IN ('sta_references_insert', "
                                    "'sta_references_update', 'sta_cascade_observations', "
                                    "'sta_truncate_observations')").fetchone() == (8,)
