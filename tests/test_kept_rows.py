"""Kept page rows (sensorthings.keptrows): a page of Things read again after an Observation was written reads no rows,
and every answer is what a full read answers; a write to what the rows were read from reads them again.

Every answer of the caching service is compared with the same request to a service without a cache on the same
store, by a reader with the read role and by one without it (internal entities hidden), after each write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sensorthings.cache import ResponseCache
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from tests.test_fragments import stream

NEWEST = "Observations($top=1;$orderby=phenomenonTime desc)"
THINGS: list[tuple[str, dict[str, str]]] = [
    ("Things", {"$top": "2", "$count": "true", "$orderby": "name"}),
    ("Things", {"$expand": f"Locations,Datastreams($expand={NEWEST})", "$orderby": "id"}),
    ("Things", {"$filter": "name eq 'b'", "$select": "name,properties"}),
    ("Things", {"$top": "1", "$skip": "1", "$orderby": "name desc"}),
]
OTHERS: list[tuple[str, dict[str, str]]] = [
    ("Datastreams", {"$orderby": "name", "$count": "true"}),
    ("Things({thing})/Datastreams", {"$orderby": "id"}),
]


class Pair:
    """A caching service and a plain one on the same store: the second says what the first must answer."""

    def __init__(self, store: Store) -> None:
        self.cached = Service(store, cache=ResponseCache())
        self.plain = Service(store)
        self.rows = self.cached.cache.rows  # type: ignore[union-attr]

    def read(self, asked: list[tuple[str, dict[str, str]]], thing: int) -> None:
        for path, params in asked:
            path = path.format(thing=thing)
            for sees_internal in (True, False):
                req = ApiRequest("GET", path, params, base="http://udp.local/v1.1", sees_internal=sees_internal)
                got, want = self.cached.handle(req), self.plain.handle(req)
                assert got.status == want.status == 200, (path, params, got.content()[:300])
                assert orjson.loads(got.content()) == orjson.loads(want.content()), (path, params, sees_internal)


def _thing(name: str) -> dict[str, Any]:
    return {"name": name, "description": "d", "properties": {"n": name}, "Datastreams": [stream(f"{name} 1")],
            "Locations": [{"name": f"at {name}", "description": "d", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [10, 53]}}]}


@pytest.fixture
def pair(store_url: str) -> Iterator[tuple[Pair, list[int], list[int]]]:
    """Three Things with a Datastream each."""
    store = Store.open(store_url)
    try:
        p = Pair(store)
        things = [p.cached.call("POST", "Things", _thing(n))["@iot.id"] for n in ("a", "b", "c")]
        ds = [p.cached.call("GET", f"Things({t})/Datastreams")["value"][0]["@iot.id"] for t in things]
        yield p, things, ds
    finally:
        store.close()


def test_things_rows_stand_while_observations_are_written(pair: tuple[Pair, list[int], list[int]]) -> None:
    p, things, ds = pair
    p.read(THINGS + OTHERS, things[0])
    for i, d in enumerate(ds * 2):
        p.cached.call("POST", "Observations", {"result": i, "phenomenonTime": f"2026-01-01T0{i}:00:00Z",
                                               "Datastream": {"@iot.id": d}})
        before = dict(p.rows.stats())
        p.read(THINGS, things[0])
        after = p.rows.stats()
        # the other pages of Things do not depend on Observations: the response cache answers them whole; the
        # expanded Things are computed again, for each reader, from the rows kept
        assert after["hits"] - before["hits"] == 2
        assert after["misses"] == before["misses"]
        p.read(OTHERS, things[0])  # the Datastreams' spans widened: their rows read again, and right


@pytest.mark.parametrize("write", ["rename", "add", "delete", "internal"])
def test_a_write_to_what_the_rows_were_read_from_reads_them_again(pair: tuple[Pair, list[int], list[int]],
                                                                  write: str) -> None:
    p, things, _ds = pair
    p.read(THINGS + OTHERS, things[0])
    if write == "rename":
        p.cached.call("PATCH", f"Things({things[1]})", {"name": "aa"})
    elif write == "add":
        p.cached.call("POST", "Things", _thing("ab"))
    elif write == "delete":
        p.cached.call("DELETE", f"Things({things[0]})")
    else:  # hidden from a reader without the read role from now on (sensorthings.access)
        p.cached.call("PATCH", f"Things({things[1]})", {"properties": {"udpAccess": "internal"}})
    before = dict(p.rows.stats())
    p.read(THINGS + OTHERS, things[2])
    assert p.rows.stats()["misses"] > before["misses"]


def test_rows_of_a_filter_calling_now_are_not_kept(pair: tuple[Pair, list[int], list[int]]) -> None:
    p, things, _ds = pair
    asked = [("Datastreams", {"$filter": "phenomenonTime lt now() or phenomenonTime eq null"})]
    before = dict(p.rows.stats())
    p.read(asked, things[0])
    p.read(asked, things[0])
    assert p.rows.stats()["hits"] == before["hits"]
    assert p.rows.stats()["misses"] == before["misses"]
