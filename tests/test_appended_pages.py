"""Kept pages of Observations (sensorthings.appended): a page read again after new Observations were written reads
only those, and answers what a full read answers.

Every answer of the caching service is compared with the same request to a service without a cache on the same
store, after each write: single Observations landing on the page, past it and between its rows, a bulk of more than
a page, an update and a delete of an Observation written before, a Datastream renamed. The pages' counters say
whether a page was extended or read whole.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sensorthings.appended import Snapshot
from sensorthings.cache import ResponseCache
from sensorthings.results import FLOAT
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from tests.test_fragments import stream

ASKED: list[tuple[str, dict[str, str]]] = [
    ("Observations", {"$top": "5", "$orderby": "phenomenonTime desc"}),
    ("Observations", {"$top": "5", "$orderby": "phenomenonTime asc"}),
    ("Observations", {"$top": "4"}),  # by id: new rows come last
    ("Observations", {"$top": "4", "$orderby": "id desc", "$select": "result,phenomenonTime"}),
    ("Observations", {"$top": "4", "$orderby": "result desc,phenomenonTime asc"}),  # two directions
    ("Observations", {"$top": "3", "$filter": "result gt 50", "$count": "true", "$orderby": "phenomenonTime desc"}),
    ("Observations", {"$top": "3", "$orderby": "resultTime desc"}),  # NULL sort keys: read whole every time
    ("Observations", {"$top": "50", "$orderby": "phenomenonTime desc"}),  # the whole set on one page
    ("Datastreams({ds})/Observations", {"$top": "3", "$orderby": "phenomenonTime desc"}),
]


class Pair:
    """A caching service and a plain one on the same store: the second says what the first must answer."""

    def __init__(self, store: Store) -> None:
        self.cached = Service(store, cache=ResponseCache())
        self.plain = Service(store)
        self.pages = self.cached.cache.pages  # type: ignore[union-attr]

    def read_all(self, ds: int) -> None:
        for path, params in ASKED:
            path = path.format(ds=ds)
            got = self.cached.call("GET", path, **params)
            assert got == self.plain.call("GET", path, **params), (path, params)

    def post(self, ds: int, result: float, time: str) -> int:
        return self.cached.call("POST", "Observations", {"result": result, "phenomenonTime": time,
                                                         "Datastream": {"@iot.id": ds}})["@iot.id"]


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[Pair, list[int]]]:
    """Two Datastreams with ten Observations each."""
    store = Store.open(store_url)
    try:
        p = Pair(store)
        made = p.cached.call("POST", "Things", {
            "name": "t", "description": "d", "Datastreams": [stream("a"), stream("b")],
            "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [10, 53]}}]})
        ds = [d["@iot.id"] for d in p.cached.call("GET", f"Things({made['@iot.id']})/Datastreams",
                                                  **{"$orderby": "id"})["value"]]
        for i in range(20):
            p.post(ds[i % 2], float(i * 5), f"2026-01-01T{i:02d}:00:00Z")
        yield p, ds
    finally:
        store.close()


def test_pages_read_again_after_writes_answer_as_a_full_read(pair: tuple[Pair, list[int]]) -> None:
    p, ds = pair
    sqlite = p.cached.store.dialect.name == "sqlite"
    p.read_all(ds[0])
    rnd = random.Random(7)
    for step in range(12):
        before = p.pages.stats()
        # newest, oldest and between the page's rows; results above and below the filter's bound
        hour = rnd.choice([0, 5, 10, 23]) if step % 3 else 23
        p.post(ds[step % 2], rnd.choice([1.0, 55.0, 99.0]), f"2026-01-0{1 + step % 3}T{hour:02d}:30:{step:02d}Z")
        p.read_all(ds[0])
        after = p.pages.stats()
        # every page extended but those ordered by resultTime (NULLs) and result (a number or a text; on PostgreSQL
        # nullable columns, which the seek would miss NULLs of) and the other Datastream's, which a write to this one
        # leaves standing; on PostgreSQL the counted page too (its new rows are not sought). PostgreSQL does not keep
        # those pages at all (they are not counted), SQLite reads them whole
        assert after["extended"] - before["extended"] == len(ASKED) - (2 if sqlite else 3) - step % 2
        assert after["read"] == before["read"] + (2 if sqlite else 0)

    # more new rows than a page: read whole
    p.cached.call("POST", "CreateObservations", [{
        "Datastream": {"@iot.id": ds[1]}, "components": ["phenomenonTime", "result"],
        "dataArray": [[f"2026-02-01T00:00:{s:02d}Z", float(s)] for s in range(60)]}])
    p.read_all(ds[0])

    # an Observation written before, changed or deleted: pages read whole, then extended again
    first = p.cached.call("GET", "Observations", **{"$orderby": "phenomenonTime desc", "$top": "1"})["value"][0]
    p.cached.call("PATCH", f"Observations({first['@iot.id']})", {"result": 1000.0})
    before = p.pages.stats()
    p.read_all(ds[0])
    assert p.pages.stats()["extended"] == before["extended"]
    top = p.cached.call("GET", "Observations", **{"$orderby": "result desc", "$top": "1"})["value"][0]
    assert top["result"] == 1000.0
    p.cached.call("DELETE", f"Observations({first['@iot.id']})")
    p.read_all(ds[0])
    p.post(ds[0], 77.0, "2026-03-01T00:00:00Z")
    before = p.pages.stats()
    p.read_all(ds[0])
    assert p.pages.stats()["extended"] > before["extended"] or not sqlite

    # something else a page was read from changed (the Datastreams: a reader's visibility depends on them)
    p.cached.call("PATCH", f"Datastreams({ds[0]})", {"name": "renamed"})
    p.post(ds[0], 78.0, "2026-03-02T00:00:00Z")
    p.read_all(ds[0])


def test_a_page_newer_than_the_reader_is_not_taken(pair: tuple[Pair, list[int]]) -> None:
    """A kept page read at a later snapshot than a reader's (its highest id above the reader's, or a PostgreSQL
    snapshot that sees transactions the reader's does not) is not extended backwards: the reader reads its page
    whole."""
    p, ds = pair
    params = {"$top": "3", "$orderby": "phenomenonTime desc"}
    p.cached.call("GET", "Observations", **params)
    key, page = next(iter(p.pages._items._items.items()))
    mark = page.mark + 10 if isinstance(page.mark, int) else Snapshot(page.mark.xmin, page.mark.xmax + 10, frozenset())
    p.pages._items.put(key, page.__class__(**{**{f: getattr(page, f) for f in page.__slots__}, "mark": mark}))
    p.post(ds[0], 1.0, "2026-04-01T00:00:00Z")
    before = p.pages.stats()
    assert p.cached.call("GET", "Observations", **params) == p.plain.call("GET", "Observations", **params)
    assert p.pages.stats()["read"] == before["read"] + 1


def test_a_hidden_page_is_read_whole_when_what_it_hides_changes(pair: tuple[Pair, list[int]]) -> None:
    """A reader without the read role: the page is extended while Observations come in (each widens its
    Datastream, which the hiding reads), read whole when a Thing turns internal or a Datastream moves to one."""
    p, ds = pair
    params = {"$top": "6", "$orderby": "phenomenonTime desc"}

    def hidden_read() -> list[int]:
        def get(service: Service) -> Any:
            res = service.handle(ApiRequest("GET", "Observations", params, None, "http://udp.local/v1.1",
                                            sees_internal=False))
            assert res.status == 200
            return orjson.loads(res.content())
        got = get(p.cached)
        assert got == get(p.plain)
        return [o["@iot.id"] for o in got["value"]]

    other = p.cached.call("POST", "Things", {
        "name": "other", "description": "d", "properties": {"udpAccess": "internal"}, "Datastreams": [stream("c")],
        "Locations": [{"name": "there", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [11, 53]}}]})["@iot.id"]
    first = hidden_read()
    p.post(ds[0], 1.0, "2026-05-01T00:00:00Z")
    before = p.pages.stats()
    assert hidden_read()[0] not in first
    assert p.pages.stats()["extended"] == before["extended"] + 1

    # a Datastream moved to the internal Thing: its Observations hide
    p.cached.call("PATCH", f"Datastreams({ds[0]})", {"Thing": {"@iot.id": other}})
    before = p.pages.stats()
    shown = hidden_read()
    assert p.pages.stats()["read"] == before["read"] + 1
    assert len(shown) == 6 and all(p.cached.call("GET", f"Observations({i})/Datastream")["@iot.id"] == ds[1]
                                   for i in shown)
    # the Thing no longer internal: they show again
    p.cached.call("PATCH", f"Things({other})", {"properties": {}})
    before = p.pages.stats()
    newest = hidden_read()[0]
    assert p.pages.stats()["read"] == before["read"] + 1
    assert p.cached.call("GET", f"Observations({newest})/Datastream")["@iot.id"] == ds[0]


def test_a_row_committed_after_a_later_one_is_found(pair: tuple[Pair, list[int]]) -> None:
    """PostgreSQL: an Observation whose transaction was in progress when the page was read (its id below rows
    committed before it) comes onto the page once committed: pages are not extended by id there."""
    p, ds = pair
    if p.cached.store.dialect.name != "postgresql":
        pytest.skip("SQLite writes one transaction at a time: ids follow the commits")
    params = {"$top": "3", "$orderby": "phenomenonTime desc"}
    foi = p.cached.call("GET", "Observations", **{"$top": "1", "$expand": "FeatureOfInterest"})["value"][0]
    slow = p.cached.store.engine.connect()
    try:
        slow.begin()
        slow.exec_driver_sql(
            "INSERT INTO observations (phenomenon_time_start, result_type, result_number, datastream_id, "
            "feature_of_interest_id) VALUES ('2027-01-01T00:00:00Z', %s, 42.0, %s, %s)",
            (FLOAT, ds[0], foi["FeatureOfInterest"]["@iot.id"]))
        p.cached.call("GET", "Observations", **params)  # kept, at a snapshot the insert is in progress in
        later = p.post(ds[1], 7.0, "2026-12-01T00:00:00Z")  # a higher id, committed first
        assert p.cached.call("GET", "Observations", **params) == p.plain.call("GET", "Observations", **params)
        slow.commit()
    finally:
        slow.close()
    before = p.pages.stats()
    got = p.cached.call("GET", "Observations", **params)
    assert got == p.plain.call("GET", "Observations", **params)
    assert got["value"][0]["result"] == 42.0 and got["value"][0]["@iot.id"] < later
    assert p.pages.stats()["extended"] == before["extended"] + 1


def test_a_database_made_before_phenomenon_time_was_required_is_brought_up(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL: a database whose Observations' phenomenonTime may be NULL (made before the schema required it) is
    made to require it when opened, and pages are extended; one that holds an Observation without one stays as it is,
    says so, and its pages are read whole."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite pages are extended by id")
    store = Store.open(store_url)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE observations ALTER COLUMN phenomenon_time_start DROP NOT NULL")
    finally:
        store.close()
    store = Store.open(store_url)
    try:
        assert store.seeks_pages
        made = Service(store).call("POST", "Things", {
            "name": "t", "description": "d", "Datastreams": [stream("a")],
            "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [10, 53]}}]})
        ds = Service(store).call("GET", f"Things({made['@iot.id']})/Datastreams")["value"][0]["@iot.id"]
        Service(store).call("POST", "Observations", {"result": 2.0, "Datastream": {"@iot.id": ds}})
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE observations ALTER COLUMN phenomenon_time_start DROP NOT NULL")
            conn.exec_driver_sql("INSERT INTO observations (result_type, result_number, datastream_id, "
                                 "feature_of_interest_id) SELECT %s, 1.0, datastream_id, feature_of_interest_id "
                                 "FROM observations LIMIT 1", (FLOAT,))
    finally:
        store.close()
    store = Store.open(store_url)
    try:
        assert not store.seeks_pages
        assert "phenomenon_time_start stays nullable" in caplog.text
        p = Pair(store)
        params = {"$top": "3", "$orderby": "phenomenonTime desc"}
        assert p.cached.call("GET", "Observations", **params) == p.plain.call("GET", "Observations", **params)
        assert p.pages.stats()["read"] == 0  # not kept: read as any page is
    finally:
        store.close()


def test_pages_extended_while_transactions_overlap_answer_as_a_full_read(pair: tuple[Pair, list[int]]) -> None:
    """PostgreSQL: POSTs from three threads and slow transactions on a connection of their own (rows committed long
    after their ids were drawn) while the page is read again and again; once all is committed, the page the cache
    extended all along answers as a full read."""
    import threading
    import time

    p, ds = pair
    if p.cached.store.dialect.name != "postgresql":
        pytest.skip("SQLite writes one transaction at a time: ids follow the commits")
    params = {"$top": "10", "$orderby": "phenomenonTime desc"}
    foi = p.cached.call("GET", "Observations", **{"$top": "1", "$expand": "FeatureOfInterest"})["value"][0]
    foi_id = foi["FeatureOfInterest"]["@iot.id"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def posting(k: int) -> None:
        rnd = random.Random(k)
        try:
            for i in range(25):
                p.post(ds[i % 2], float(i), f"2026-06-{1 + rnd.randrange(28):02d}T{rnd.randrange(24):02d}:00:{k:02d}Z")
                time.sleep(rnd.uniform(0, 0.02))  # the reads in between
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def slow() -> None:
        rnd = random.Random(9)
        try:
            while not stop.is_set():
                with p.cached.store.engine.begin() as conn:
                    conn.exec_driver_sql(
                        "INSERT INTO observations (phenomenon_time_start, result_type, result_number, datastream_id, "
                        "feature_of_interest_id) VALUES (%s, %s, 1.0, %s, %s)",
                        (f"2026-06-{1 + rnd.randrange(28):02d}T12:00:00Z", FLOAT, ds[0], foi_id))
                    time.sleep(rnd.uniform(0.001, 0.03))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=posting, args=(k,)) for k in range(3)] + [threading.Thread(target=slow)]
    for t in threads:
        t.start()
    before = p.pages.stats()
    while any(t.is_alive() for t in threads[:3]):
        p.cached.call("GET", "Observations", **params)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert p.cached.call("GET", "Observations", **params) == p.plain.call("GET", "Observations", **params)
    after = p.pages.stats()
    assert after["extended"] > before["extended"] + 10, (before, after)
