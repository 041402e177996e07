"""SQLite: Observations inserted in bulk raise their versions once per statement (versions.raising_once), while every
other writer of the file still raises them by its row triggers."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from sensorthings.service import Service
from sensorthings.store import sqlite as sqlite_store
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from sensorthings.store.versions import QUIET, ROW_SEQUENCE
from tests.test_fragments import stream


def _city(tmp_path: Path) -> tuple[Store, Service, list[int]]:
    store = Store.open(f"sqlite:///{tmp_path / 'city.db'}")
    service = Service(store)
    service.call("POST", "Things", {
        "name": "t", "description": "d", "Datastreams": [stream("a"), stream("b"), stream("c")],
        "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [10, 53]}}]})
    return store, service, [d["@iot.id"] for d in service.call("GET", "Datastreams")["value"]]


def _versions(store: Store, streams: list[int]) -> dict[str, int]:
    """The Observations' version, the row sequence's number (`seq`) and each stream's Observations' version."""
    with store.read() as conn:
        now = store.versions(conn)
        rows = dict(conn.exec_driver_sql("SELECT key, version FROM sta_row_versions").all())
    return {"observations": now["observations"], "seq": now[ROW_SEQUENCE],
            **{f"d{d}": rows.get(f"observations@d{d}", 0) for d in streams}}


def _raised(before: dict[str, int], after: dict[str, int], times: int, streams: list[int]) -> None:
    """The Observations' version was raised `times`; `streams`' Observations got row versions of the sequence since
    (a bulk statement: one number for them all); the others kept theirs."""
    assert after["observations"] == before["observations"] + times
    written = {after[f"d{d}"] for d in streams}
    assert all(before["seq"] < v <= after["seq"] for v in written)
    if times == 1:
        assert len(written) == 1
    assert all(after[k] == v for k, v in before.items() if k.startswith("d") and int(k[1:]) not in streams)


def _create(service: Service, datastream: int, times: list[str]) -> None:
    service.call("POST", "CreateObservations", [{
        "Datastream": {"@iot.id": datastream}, "components": ["phenomenonTime", "result"],
        "dataArray": [[t, 1.5] for t in times]}])


def test_a_bulk_insert_raises_each_version_once(tmp_path: Path) -> None:
    store, service, (a, b, c) = _city(tmp_path)
    try:
        before = _versions(store, [a, b, c])
        service.call("POST", "CreateObservations", [
            {"Datastream": {"@iot.id": a}, "components": ["phenomenonTime", "result"],
             "dataArray": [["2026-01-01T00:00:00Z", 1], ["2026-01-01T01:00:00Z", 2], ["2026-01-01T02:00:00Z", 3]]},
            {"Datastream": {"@iot.id": b}, "components": ["phenomenonTime", "result"],
             "dataArray": [["2026-01-01T00:00:00Z", 4], ["2026-01-01T01:00:00Z", 5]]}])
        after = _versions(store, [a, b, c])
        _raised(before, after, 1, [a, b])
        with store.read() as conn:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {QUIET}").scalar_one() == 0
        assert service.call("GET", f"Datastreams({a})/Observations", **{"$count": "true"})["@iot.count"] == 3
    finally:
        store.close()


def test_another_program_writing_the_file_still_raises_them(tmp_path: Path) -> None:
    store, service, (a, b, c) = _city(tmp_path)
    try:
        _create(service, a, ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"])
        before = _versions(store, [a, b, c])
        other = sqlite3.connect(tmp_path / "city.db")
        with other:
            foi = other.execute("SELECT feature_of_interest_id FROM observations LIMIT 1").fetchone()[0]
            other.executemany(
                "INSERT INTO observations (phenomenon_time_start, result_type, result_number, datastream_id, "
                "feature_of_interest_id) VALUES (?, 1, 7, ?, ?)",
                [("2026-02-01T00:00:00.000000Z", c, foi), ("2026-02-01T01:00:00.000000Z", c, foi)])
        other.close()
        after = _versions(store, [a, b, c])
        _raised(before, after, 2, [c])  # row triggers: once per row
    finally:
        store.close()


def test_a_refused_bulk_insert_leaves_the_triggers_at_work(tmp_path: Path) -> None:
    store, service, (a, _b, _c) = _city(tmp_path)
    try:
        columns = ObservationRow(1, 1.0, datastream_id=a, feature_of_interest_id=999_999,
                                 phenomenon_time_start=datetime(2026, 1, 1, tzinfo=UTC)).columns()
        rows = [store.bind_observation(columns)]
        with store.write() as (conn, _changes):
            with pytest.raises(IntegrityError):  # no such FeatureOfInterest
                sqlite_store.insert_observations(conn, rows * 2)
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {QUIET}").scalar_one() == 0
        before = _versions(store, [a])
        _create(service, a, ["2026-01-01T00:00:00Z"])  # one row: the single insert, the triggers' way
        assert _versions(store, [a])["observations"] == before["observations"] + 1
    finally:
        store.close()


def test_a_store_made_with_row_triggers_gets_the_quiet_ones_on_open(tmp_path: Path) -> None:
    store, _service, _streams = _city(tmp_path)
    store.close()
    # the triggers as an older platform made them, and no QUIET table
    old = sqlite3.connect(tmp_path / "city.db")
    with old:
        for name in ("sta_version_insert_observations", "sta_rows_insert_observations"):
            sql = old.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
            old.execute(f"DROP TRIGGER {name}")
            old.execute(sql.replace(f"WHEN NOT EXISTS (SELECT 1 FROM {QUIET}) ", ""))
        old.execute(f"DROP TABLE {QUIET}")
    old.close()
    store = Store.open(f"sqlite:///{tmp_path / 'city.db'}")
    try:
        service = Service(store)
        a = service.call("GET", "Datastreams")["value"][0]["@iot.id"]
        before = _versions(store, [a])
        _create(service, a, ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"])
        after = _versions(store, [a])
        _raised(before, after, 1, [a])
    finally:
        store.close()


@pytest.mark.parametrize("numbers", [(1.5, -2.0), (1.5, float("inf"))], ids=["finite", "infinite"])
def test_rows_go_in_as_they_were_given(tmp_path: Path, numbers: tuple[float, float]) -> None:
    """The rows go in many to a statement, bound by the driver: numbers (infinity too), JSON columns, times and nulls
    come back as they went in."""
    store, service, (a, _b, _c) = _city(tmp_path)
    try:
        _create(service, a, ["2025-01-01T00:00:00Z"])  # its FeatureOfInterest
        with store.write() as (conn, _changes):
            foi = conn.exec_driver_sql("SELECT min(id) FROM features_of_interest").scalar_one()
            ids = sqlite_store.insert_observations(conn, [store.bind_observation(ObservationRow(
                2, number, result_json={"why": "a 'test'", "n": [1, None]}, datastream_id=a, feature_of_interest_id=foi,
                phenomenon_time_start=datetime(2026, 1, 1, tzinfo=UTC)).columns()) for number in numbers])
        with store.read() as conn:
            got = conn.exec_driver_sql(
                "SELECT phenomenon_time_start, phenomenon_time_end, result_number, result_json, parameters "
                f"FROM observations WHERE id IN ({ids[0]}, {ids[1]}) ORDER BY id").all()
        assert [tuple(r) for r in got] == [
            ("2026-01-01T00:00:00.000000Z", None, n, '{"why":"a \'test\'","n":[1,null]}', None) for n in numbers]
    finally:
        store.close()
