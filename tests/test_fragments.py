"""Entity fragments (sensorthings.fragments): an answer computed again reads only the entities changed under it.

Every answer of the caching service is compared with the same request to a service without a cache on the same
store, after each kind of write: an Observation, a Datastream changed, added, moved between Things, deleted, a
Location, a Thing, a Sensor. The fragment counters say which entities were read again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from sensorthings.cache import ResponseCache
from sensorthings.fragments import StreamIndex, keeps, owned_versions
from sensorthings.model import DATASTREAM, OBSERVATION, THING
from sensorthings.query.limits import Limits
from sensorthings.query.options import query_options
from sensorthings.service import Service
from sensorthings.store.base import Store

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
UNIT = {"name": "degree Celsius", "symbol": "degC", "definition": "http://unitsofmeasure.org/ucum.html#para-30"}
NEWEST = {"$expand": "Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"}


def stream(name: str) -> dict[str, Any]:
    return {"name": name, "description": "d", "observationType": OM, "unitOfMeasurement": UNIT,
            "Sensor": {"name": f"sensor {name}", "description": "d", "encodingType": "text/html", "metadata": "m"},
            "ObservedProperty": {"name": "temperature", "definition": "t", "description": "d"}}


class Pair:
    """A caching service and a plain one on the same store: the second says what the first must answer."""

    def __init__(self, store: Store) -> None:
        cache = ResponseCache()
        # the fragments alone: on SQLite kept pages would answer Observations' pages first (tests/test_appended_pages)
        cache.pages = None
        self.cached = Service(store, cache=cache)
        self.plain = Service(store)
        self.fragments = cache.fragments

    def read(self, path: str, **params: str) -> tuple[int, int]:
        """GET through both; the answers must be equal. How many fragments were taken and how many read again."""
        before = self.fragments.stats()
        got = self.cached.call("GET", path, **params)
        assert got == self.plain.call("GET", path, **params)
        after = self.fragments.stats()
        return after["hits"] - before["hits"], after["misses"] - before["misses"]

    def post_observation(self, datastream: int, result: float, time: str) -> int:
        return self.cached.call("POST", "Observations", {"result": result, "phenomenonTime": time,
                                                         "Datastream": {"@iot.id": datastream}})["@iot.id"]


def station(pair: Pair) -> int:
    """A new Thing with a Location and one Datastream: the Datastream's id."""
    made = pair.cached.call("POST", "Things", {
        "name": "t", "description": "d", "Datastreams": [stream("x")],
        "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [10, 53]}}]})
    return pair.cached.call("GET", f"Things({made['@iot.id']})/Datastreams")["value"][0]["@iot.id"]


def rewritten(pair: Pair) -> int:
    """The version raised by every change to an Observation already written (sensorthings.store.versions)."""
    store = pair.cached.store
    with store.read() as conn:
        return store.versions(conn).get("observations_rewritten", 0)


@pytest.fixture
def city(store_url: str) -> Iterator[tuple[Pair, list[int], dict[int, list[int]]]]:
    """Four Things with a Location and two Datastreams each, each Datastream with two Observations."""
    store = Store.open(store_url)
    try:
        pair = Pair(store)
        things: list[int] = []
        streams: dict[int, list[int]] = {}
        for i in range(4):
            made = pair.cached.call("POST", "Things", {
                "name": f"station {i}", "description": "d",
                "Locations": [{"name": f"place {i}", "description": "d", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [10 + i, 53]}}],
                "Datastreams": [stream(f"{i}a"), stream(f"{i}b")]})
            things.append(made["@iot.id"])
            got = pair.cached.call("GET", f"Things({made['@iot.id']})/Datastreams", **{"$orderby": "id"})
            streams[made["@iot.id"]] = [d["@iot.id"] for d in got["value"]]
            for ds in streams[made["@iot.id"]]:
                for hour in (1, 2):
                    pair.post_observation(ds, i + hour, f"2026-01-01T0{hour}:00:00Z")
        yield pair, things, streams
    finally:
        store.close()


def test_a_write_reads_again_only_the_entities_under_it(city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    pair, things, streams = city
    one, two, three, four = things
    assert pair.read("Things", **NEWEST) == (0, 4)
    assert pair.read("Things", **NEWEST, **{"$top": "3"}) == (3, 0)  # another answer, the same entities

    pair.post_observation(streams[two][1], 99.5, "2026-01-02T00:00:00Z")
    assert pair.read("Things", **NEWEST) == (3, 1)
    # an answer made only of kept fragments still depends on the Observations: a write shows at once
    pair.post_observation(streams[one][0], 42.0, "2026-01-03T00:00:00Z")
    assert pair.read("Things", **NEWEST, **{"$top": "3"}) == (2, 1)
    newest = pair.cached.call("GET", "Things", **NEWEST)["value"][0]["Datastreams"][0]["Observations"][0]
    assert newest["result"] == 42.0

    pair.cached.call("PATCH", f"Datastreams({streams[three][0]})", {"name": "renamed"})
    assert pair.read("Things", **NEWEST) == (3, 1)

    added = pair.cached.call("POST", f"Things({one})/Datastreams", stream("1c"))["@iot.id"]
    assert pair.read("Things", **NEWEST) == (3, 1)

    pair.cached.call("PATCH", f"Datastreams({added})", {"Thing": {"@iot.id": four}})  # moved
    assert pair.read("Things", **NEWEST) == (2, 2)

    obs = pair.cached.call("GET", f"Datastreams({streams[two][0]})/Observations", **{"$top": "1"})["value"][0]
    pair.cached.call("DELETE", f"Observations({obs['@iot.id']})")
    assert pair.read("Things", **NEWEST) == (3, 1)

    pair.cached.call("DELETE", f"Datastreams({added})")
    assert pair.read("Things", **NEWEST) == (3, 1)

    # what no Thing owns is told by its table's version: every fragment read it
    place = pair.cached.call("GET", f"Things({three})/Locations")["value"][0]["@iot.id"]
    pair.cached.call("PATCH", f"Locations({place})", {"name": "moved"})
    assert pair.read("Things", **NEWEST) == (0, 4)
    pair.cached.call("PATCH", f"Things({four})", {"name": "renamed"})
    assert pair.read("Things", **NEWEST) == (0, 4)


def test_tables_an_answer_did_not_read_leave_it_and_its_fragments(
        city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    pair, things, streams = city
    with_sensor = {"$expand": "Datastreams($expand=Sensor,Observations($top=2))"}
    assert pair.read("Things", **NEWEST) == (0, 4)
    assert pair.read("Things", **with_sensor) == (0, 4)
    hits = pair.cached.cache.stats()["hits"]  # type: ignore[union-attr]
    sensor = pair.cached.call("GET", f"Datastreams({streams[things[0]][0]})/Sensor")["@iot.id"]
    pair.cached.call("PATCH", f"Sensors({sensor})", {"name": "recalibrated"})
    assert pair.read("Things", **NEWEST) == (0, 0)  # the whole answer stands: it never read Sensors
    assert pair.cached.cache.stats()["hits"] == hits + 1  # type: ignore[union-attr]
    assert pair.read("Things", **with_sensor) == (0, 4)


def test_datastreams_keep_fragments_of_their_own(city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    pair, things, streams = city
    query = {"$expand": "Observations($top=2;$orderby=phenomenonTime desc),ObservedProperty"}
    assert pair.read("Datastreams", **query) == (0, 8)
    pair.post_observation(streams[things[2]][1], 7.5, "2026-02-01T00:00:00Z")
    assert pair.read("Datastreams", **query) == (7, 1)
    assert pair.read(f"Things({things[2]})/Datastreams", **query) == (2, 0)


def test_internal_readers_and_public_ones_keep_apart(city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    pair, things, _ = city
    pair.cached.call("PATCH", f"Things({things[1]})", {"properties": {"udpAccess": "internal"}})
    from sensorthings.service import ApiRequest
    public = ApiRequest("GET", "Things", dict(NEWEST), None, "http://udp.local/v1.1", sees_internal=False)
    for _ in range(2):
        res = pair.cached.handle(public)
        ids = [t["@iot.id"] for t in __import__("orjson").loads(res.content())["value"]]
        assert things[1] not in ids and len(ids) == 3
    assert len(pair.cached.call("GET", "Things", **NEWEST)["value"]) == 4


@pytest.mark.parametrize(("entity", "params", "kept"), [
    (THING, NEWEST, True),
    (THING, {"$expand": "Datastreams($expand=Sensor($expand=Datastreams))"}, False),  # others' streams
    (THING, {"$expand": "Datastreams($expand=Thing($expand=Datastreams))"}, False),
    (THING, {"$expand": "Locations($expand=Things($expand=Datastreams))"}, False),
    (THING, {"$expand": "Datastreams($filter=Sensor/name eq 'x')"}, False),  # a filter that navigates
    (THING, {"$expand": "Datastreams($filter=name eq 'x';$orderby=properties/rank)"}, True),
    (THING, {"$expand": "HistoricalLocations"}, True),
    (THING, {}, False),  # nothing expanded: reading it costs no more than finding it
    (DATASTREAM, {"$expand": "Observations($expand=FeatureOfInterest)"}, True),
    (DATASTREAM, {"$expand": "Observations($expand=Datastream)"}, False),
    (OBSERVATION, {"$expand": "FeatureOfInterest"}, False),  # owns no streams
])
def test_which_answers_keep_fragments(entity: Any, params: dict[str, str], kept: bool) -> None:
    assert keeps(entity, query_options(params, entity, Limits())) is kept


def test_observations_are_kept_by_row_until_one_already_written_changes(
        city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    pair, things, streams = city
    ds = streams[things[0]][0]
    chart = {"$orderby": "phenomenonTime desc", "$top": "3", "$select": "result,phenomenonTime"}
    assert pair.read(f"Datastreams({ds})/Observations", **chart) == (0, 2)  # two so far
    added = pair.post_observation(ds, 5.5, "2026-01-05T00:00:00Z")
    assert pair.read(f"Datastreams({ds})/Observations", **chart) == (2, 1)  # the new one is read
    assert pair.read("Observations", **{"$orderby": "id desc", "$top": "4"}) == (0, 4)  # another shape
    before = rewritten(pair)
    pair.cached.call("PATCH", f"Observations({added})", {"result": 6.5})
    assert rewritten(pair) > before
    assert pair.read(f"Datastreams({ds})/Observations", **chart) == (0, 3)
    pair.cached.call("DELETE", f"Observations({added})")
    assert pair.read(f"Datastreams({ds})/Observations", **chart) == (0, 2)
    assert pair.read(f"Datastreams({ds})/Observations", **chart) == (0, 0)  # the whole answer, cached
    # with something expanded an Observation's JSON is not its row's alone: not kept by row
    assert pair.read(f"Datastreams({ds})/Observations", **{"$expand": "FeatureOfInterest"}) == (0, 0)


def test_the_newest_of_all_read_again_after_a_write_reads_only_the_new_row(
        city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    """The newest of all, which every write changes: only the rows written since are serialized again, and the
    answer, its order and its nextLink stay those of a plain read."""
    pair, things, streams = city
    newest = {"$orderby": "phenomenonTime desc", "$top": "5"}
    assert pair.read("Observations", **newest) == (0, 5)
    assert "@iot.nextLink" in pair.cached.call("GET", "Observations", **newest)  # 16 in all
    pair.post_observation(streams[things[2]][1], 9.5, "2026-02-01T00:00:00Z")
    pair.post_observation(streams[things[3]][0], 8.5, "2026-01-31T00:00:00Z")
    assert pair.read("Observations", **newest) == (3, 2)  # the two new ones read, three kept
    assert pair.read("Observations", **{**newest, "$select": "result"}) == (0, 5)  # another shape
    first = pair.cached.call("GET", "Observations", **newest)
    assert [o["result"] for o in first["value"][:2]] == [9.5, 8.5]
    following = dict(parse_qsl(urlsplit(first["@iot.nextLink"]).query))
    assert "$skiptoken" in following
    pair.read("Observations", **following)  # the next page: the cached and the plain read agree on it too


def test_new_observations_leave_the_rewritten_version_standing(store_url: str) -> None:
    store = Store.open(store_url)
    try:
        pair = Pair(store)
        ds = station(pair)
        pair.post_observation(ds, 1.0, "2026-01-01T00:00:00Z")
        with store.read() as conn:
            before = store.versions(conn)
        pair.post_observation(ds, 2.0, "2026-01-01T01:00:00Z")
        pair.cached.call("POST", "CreateObservations", [{
            "Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
            "dataArray": [["2026-01-01T02:00:00Z", 3.0], ["2026-01-01T03:00:00Z", 4.0]]}])
        with store.read() as conn:
            after = store.versions(conn)
        assert after["observations"] > before["observations"]
        assert after.get("observations_rewritten", 0) == before.get("observations_rewritten", 0)
    finally:
        store.close()


def test_a_store_made_before_the_rewritten_version_gets_it_on_open(store_url: str) -> None:
    """An existing database (its triggers made by an older platform) gets the triggers of `observations_rewritten`
    when the store opens: an update raises it from then on."""
    store = Store.open(store_url)
    try:
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("DROP TRIGGER sta_note_rewrite ON observations")
            else:
                for op in ("update", "delete"):
                    conn.exec_driver_sql(f"DROP TRIGGER sta_rewrite_{op}_observations")
    finally:
        store.close()
    store = Store.open(store_url)
    try:
        pair = Pair(store)
        ds = station(pair)
        obs = pair.post_observation(ds, 1.0, "2026-01-01T00:00:00Z")
        before = rewritten(pair)
        pair.cached.call("PATCH", f"Observations({obs})", {"result": 2.0})
        assert rewritten(pair) > before
        pair.cached.call("DELETE", f"Observations({obs})")
        assert rewritten(pair) > before + 1
    finally:
        store.close()


def test_the_stream_index_answers_as_the_statement(city: tuple[Pair, list[int], dict[int, list[int]]]) -> None:
    """SQLite's StreamIndex, brought up to date by the row versions changed since, gives every entity the owned
    streams and versions that `owned_versions` reads, through adds, writes, moves and deletes."""
    pair, things, streams = city
    store = pair.cached.store
    if store.dialect.name != "sqlite":
        pytest.skip("the stream index is SQLite's")
    index = StreamIndex()
    all_streams = [d for ds in streams.values() for d in ds]

    def agree() -> None:
        with store.read() as conn:
            for entity, ids in ((THING, [*things, 999]), (DATASTREAM, [*all_streams, 999])):
                assert index.owned(conn, entity, ids) == owned_versions(conn, entity, ids)

    agree()
    pair.post_observation(streams[things[1]][0], 1.0, "2026-03-01T00:00:00Z")
    agree()
    added = pair.cached.call("POST", f"Things({things[0]})/Datastreams", stream("new"))["@iot.id"]
    all_streams.append(added)
    agree()
    pair.cached.call("PATCH", f"Datastreams({added})", {"Thing": {"@iot.id": things[2]}})
    pair.post_observation(added, 2.0, "2026-03-02T00:00:00Z")
    agree()
    pair.cached.call("DELETE", f"Datastreams({streams[things[3]][1]})")
    agree()
    pair.cached.call("DELETE", f"Things({things[3]})")
    agree()
    # an index ahead of a reader's snapshot leaves the reader to the statement
    with store.read() as conn:
        index.seq += 1
        assert index.owned(conn, THING, things) is None
