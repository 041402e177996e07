"""`$count` on a huge set (sensorthings/read.py): on PostgreSQL a whole table above ESTIMATE_COUNT_ABOVE rows is
counted by the planner's estimate, said by `@udp.countEstimated`; `Prefer: count=exact` counts it, a filtered or
navigated set is always counted, and SQLite always counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sensorthings.read as read
from tests.conftest import Server, in_process_on


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from in_process_on(request.param, tmp_path_factory)


def test_a_huge_sets_count_is_the_planners_estimate_unless_exactness_is_asked(
        served: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    api = served.http("/v1.1")
    for k in range(40):
        assert api.post("/Things", json={"name": f"c{k}", "description": "d"}).status_code == 201
    if served.kind == "postgresql":
        import psycopg

        with psycopg.connect(served.store, autocommit=True) as conn:
            conn.execute("ANALYZE things")
    exact = api.get("/Things", params={"$count": "true", "$top": "1"}).json()
    assert exact["@iot.count"] >= 40 and "@udp.countEstimated" not in exact
    monkeypatch.setattr(read, "ESTIMATE_COUNT_ABOVE", 10)  # the app runs in this process: 40 rows are "huge"
    estimated = api.get("/Things", params={"$count": "true", "$top": "2"}).json()
    if served.kind == "sqlite":
        assert "@udp.countEstimated" not in estimated and estimated["@iot.count"] == exact["@iot.count"]
        return
    assert estimated["@udp.countEstimated"] is True and estimated["@iot.count"] > 10
    asked = api.get("/Things", params={"$count": "true", "$top": "3"}, headers={"Prefer": "count=exact"}).json()
    assert asked["@iot.count"] == exact["@iot.count"] and "@udp.countEstimated" not in asked
    filtered = api.get("/Things", params={"$count": "true", "$filter": "startswith(name, 'c')"}).json()
    assert filtered["@iot.count"] == 40 and "@udp.countEstimated" not in filtered


def test_a_database_made_before_the_covering_series_index_is_told_how_to_rebuild_it(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A PostgreSQL store whose (Datastream, phenomenonTime) index holds no results (made by an earlier release)
    logs, at start, the statements that rebuild it without locking writers; once rebuilt, nothing is logged."""
    from sensorthings.store.base import Store

    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite has no INCLUDE columns: its index is the same either way")
    import psycopg

    Store.open(store_url).close()
    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute("DROP INDEX observations_datastream_time")
        conn.execute("CREATE INDEX observations_datastream_time ON observations "
                     "(datastream_id, phenomenon_time_start, id)")
    with caplog.at_level("WARNING", logger="sensorthings.store"):
        Store.open(store_url).close()
    told = [r.getMessage() for r in caplog.records if "observations_datastream_time" in r.getMessage()]
    assert len(told) == 1
    statements = told[0].split("(no lock on writers): ")[1]
    with psycopg.connect(store_url, autocommit=True) as conn:
        for statement in statements.split(";"):
            if statement.strip():
                conn.execute(statement)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sensorthings.store"):
        Store.open(store_url).close()
    assert not [r for r in caplog.records if "observations_datastream_time" in r.getMessage()]
