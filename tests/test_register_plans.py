"""Reads that must not grow with a city's registers: finding and listing entities by name through an index, and the
Things in an area found from the Locations the spatial index lets through (not by visiting every Thing), on both
stores; the answers checked against what the data says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import event

from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from tests.conftest import query_plan

BOX = "geography'POLYGON((127 37.5, 127.1 37.5, 127.1 37.6, 127 37.6, 127 37.5))'"
INSIDE, OUTSIDE = [127.05, 37.55], [126.5, 37.2]
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
City = tuple[Store, Service, list[tuple[str, Any]]]  # and the statements the store ran, with their parameters


def _location(name: str, at: list[float]) -> dict[str, Any]:
    return {"name": name, "description": "d", "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": at}}


@pytest.fixture
def city(store_url: str) -> Iterator[City]:
    """Things with no Location, one inside the box, one outside, or one of each; the statements the store runs."""
    store = Store.open(store_url)
    service = Service(store)
    places = {"none": [], "in": [INSIDE], "out": [OUTSIDE], "both": [INSIDE, OUTSIDE]}
    for i in range(3):
        for kind, points in places.items():
            service.call("POST", "Things", {
                "name": f"{kind} {i}", "description": "d", "properties": {"kind": "school" if i else "park"},
                "Locations": [_location(f"{kind} {i} at {k}", p) for k, p in enumerate(points)],
                "Datastreams": [{
                    "name": f"count {kind} {i}", "description": "d", "observationType": OM,
                    "unitOfMeasurement": {"name": "count", "symbol": "{count}", "definition": "ucum"},
                    "Sensor": {"name": f"counter {kind} {i}", "description": "d", "encodingType": "text/html",
                               "metadata": "m"},
                    "ObservedProperty": {"name": "count", "definition": "c", "description": "d"}}]})
    run: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, params: Any, *_args: Any) -> None:
        run.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        yield store, service, run
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
        store.close()


def _names(service: Service, path: str, **params: str) -> list[str]:
    res = service.handle(ApiRequest("GET", path, params, sees_internal=False, base="http://test/v1.1"))
    assert res.status == 200, res.content()
    return [e["name"] for e in res.body["value"]]


def _plan(store: Store, statement: tuple[str, Any]) -> str:
    """The plan of a statement a read ran, with its parameters."""
    return query_plan(store, *statement)


def test_entities_are_found_by_name_through_an_index(city: City) -> None:
    store, service, run = city
    for path, table in (("Things", "things"), ("Locations", "locations"), ("Datastreams", "datastreams"),
                        ("Sensors", "sensors"), ("FeaturesOfInterest", "features_of_interest")):
        run.clear()
        assert _names(service, path, **{"$filter": "name eq 'in 1'"}) == (["in 1"] if path == "Things" else [])
        page = next(s for s in run if f"FROM {table}" in s[0] and "ORDER BY" in s[0])
        assert f"{table}_name" in _plan(store, page), page
    run.clear()
    listed = _names(service, "Things", **{"$orderby": "name desc", "$top": "5"})
    assert listed == sorted((f"{k} {i}" for k in ("none", "in", "out", "both") for i in range(3)), reverse=True)[:5]
    if store.dialect.name == "sqlite":  # PostgreSQL's is a hash (any length of name): it finds, it does not order
        page = next(s for s in run if "FROM things" in s[0] and "ORDER BY" in s[0])
        assert "things_name" in _plan(store, page), page
    # a name longer than a B-tree takes on PostgreSQL is still a name
    long = {"name": "x" * 1_000_000, "description": "d"}
    assert service.call("POST", "Things", long) is not None
    assert _names(service, "Things", **{"$filter": f"name eq '{long['name']}'"}) == [long["name"]]


def test_the_things_in_an_area_come_from_the_locations_found_there(city: City) -> None:
    store, service, run = city
    inside = {f"{k} {i}" for k in ("in", "both") for i in range(3)}
    run.clear()
    assert set(_names(service, "Things", **{"$filter": f"st_within(Locations/location, {BOX})"})) == inside
    page = next(s for s in run if "FROM things" in s[0] and "ORDER BY" in s[0])
    assert "EXISTS" not in page[0], page  # the Things' ids among those of the Locations inside, not each Thing visited
    if store.dialect.name == "sqlite":
        plan = _plan(store, page)
        # driven by the R-tree's Locations, each Thing looked up by its id
        assert plan.startswith("SEARCH things USING INTEGER PRIMARY KEY") and "rtree_locations" in plan, plan
    # the root's own terms beside it, either way round
    for flt in (f"st_within(Locations/location, {BOX}) and properties/kind eq 'school'",
                f"properties/kind eq 'school' and st_within(Locations/location, {BOX})"):
        assert set(_names(service, "Things", **{"$filter": flt})) == {n for n in inside if not n.endswith(" 0")}
    # what cannot be split keeps the correlated form, and its meaning: a Thing answers through one of its Locations
    either = f"st_within(Locations/location, {BOX}) or name eq 'out 0'"
    assert set(_names(service, "Things", **{"$filter": either})) == inside | {"out 0"}
    assert set(_names(service, "Things", **{"$filter": f"not st_within(Locations/location, {BOX})"})) == {
        f"{k} {i}" for k in ("out", "both") for i in range(3)}
    assert _names(service, "Things", **{"$filter": "Locations/name eq 'both 2 at 1'"}) == ["both 2"]
    # the other way along the same link, and further on from it
    assert set(_names(service, "Locations", **{"$filter": "Things/name eq 'both 1'"})) == {"both 1 at 0", "both 1 at 1"}
    res = service.handle(ApiRequest("GET", "HistoricalLocations", {
        "$filter": f"st_within(Locations/location, {BOX})", "$expand": "Thing($select=name)"}, base="http://test/v1.1"))
    assert res.status == 200, res.content()
    assert {e["Thing"]["name"] for e in res.body["value"]} == inside
    # an area further along: the rows of the Things found there (by their ids' index), not every row visited
    for path, along, named, driven in (
            ("Datastreams", "Thing/Locations/location", "count {}", "SEARCH datastreams USING INDEX ix_datastreams_"),
            ("Sensors", "Datastreams/Thing/Locations/location", "counter {}", "SEARCH sensors USING INTEGER PRIMARY")):
        run.clear()
        found = _names(service, path, **{"$filter": f"st_within({along}, {BOX})"})
        assert set(found) == {named.format(n) for n in inside}, path
        page = next(s for s in run if f"FROM {path.lower()}" in s[0] and "ORDER BY" in s[0])
        assert "EXISTS" not in page[0], page
        if store.dialect.name == "sqlite":
            assert _plan(store, page).startswith(driven), _plan(store, page)
        # where each row must be visited (the row's own terms beside the area, either way), a link on the way is
        # followed from the row's side, never probed for each Location the R-tree lets through
        run.clear()
        either = f"st_within({along}, {BOX}) or name eq '{named.format('out 0')}'"
        assert set(_names(service, path, **{"$filter": either})) == {named.format(n) for n in inside | {"out 0"}}
        if store.dialect.name == "sqlite":
            plan = _plan(store, next(s for s in run if f"FROM {path.lower()}" in s[0] and "ORDER BY" in s[0]))
            assert "sqlite_autoindex_thing_locations_1 (thing_id=?)" in plan, plan
    # Observations are never gathered so: an area's may be millions, sorted for one page; each is visited in order
    run.clear()
    res = service.handle(ApiRequest("GET", "Observations", {"$filter": f"st_within(FeatureOfInterest/feature, {BOX})"},
                                    base="http://test/v1.1"))
    assert res.status == 200, res.content()
    assert "EXISTS" in next(s for s in run if "FROM observations" in s[0] and "ORDER BY" in s[0])[0]


def test_what_is_near_a_point_is_found_through_the_spatial_index(city: City) -> None:
    store, service, run = city
    point = f"geography'POINT({INSIDE[0] + 0.003} {INSIDE[1]})'"
    near = {f"{k} {i} at 0" for k in ("in", "both") for i in range(3)}
    for flt in (f"geo.distance(location, {point}) lt 0.01", f"geo.distance(location, {point}) le 0.01",
                f"0.01 gt geo.distance(location, {point})", f"geo.distance({point}, location) lt 0.01"):
        run.clear()
        assert set(_names(service, "Locations", **{"$filter": flt})) == near, flt
        plan = _plan(store, next(s for s in run if "FROM locations" in s[0] and "ORDER BY" in s[0]))
        assert ("rtree_locations" if store.dialect.name == "sqlite" else "locations_geom_gist") in plan, plan
    # the distance itself still decides: a box's corner is farther than its side
    assert _names(service, "Locations", **{"$filter": f"geo.distance(location, {point}) lt 0.002"}) == []
    assert _names(service, "Locations", **{"$filter": f"geo.distance(location, {point}) lt -1"}) == []
    assert set(_names(service, "Things", **{"$filter": f"geo.distance(Locations/location, {point}) lt 0.01"})) == {
        f"{k} {i}" for k in ("in", "both") for i in range(3)}
    far = _names(service, "Locations", **{"$filter": f"geo.distance(location, {point}) ge 0.01"})
    assert set(far) == {f"{k} {i} at {n}" for k, n in (("out", 0), ("both", 1)) for i in range(3)}


def test_the_nearest_come_first_through_the_spatial_index(city: City) -> None:
    store, service, run = city
    origin = (127.2, 37.7)
    for i in range(30):  # a spiral out from the origin, five of them at one spot (ties, broken by id)
        at = [origin[0] + 0.002, origin[1]] if i % 6 == 0 else [origin[0] + 0.0007 * i, origin[1] - 0.0003 * i]
        service.call("POST", "Locations", _location(f"{'g' if i % 2 else 'h'}{i}", at))
    # a Location of another encoding has no geometry, nor a distance: SQL sorts it first on SQLite, last on PostgreSQL
    service.call("POST", "Locations", {"name": "hall", "description": "d", "encodingType": "text/plain",
                                       "location": {"type": "Point", "coordinates": list(origin)}})
    point = f"geography'POINT({origin[0]} {origin[1]})'"
    every = service.handle(ApiRequest("GET", "Locations", {"$top": "1000"}, sees_internal=False,
                                      base="http://test/v1.1")).body["value"]

    def expected(keep: Any = lambda _name: True) -> list[str]:
        nulls = -1.0 if store.dialect.name == "sqlite" else float("inf")

        def far(e: dict[str, Any]) -> float:
            if e["name"] == "hall":
                return nulls
            x, y = e["location"]["coordinates"]
            return float(((x - origin[0]) ** 2 + (y - origin[1]) ** 2) ** 0.5)
        return [e["name"] for e in sorted((e for e in every if keep(e["name"])), key=lambda e: (far(e), e["@iot.id"]))]

    order = f"geo.distance(location, {point})"
    for top in (1, 3, 7, 50, 1000):
        run.clear()
        assert _names(service, "Locations", **{"$orderby": order, "$top": str(top)}) == expected()[:top], top
        if top < 30:
            plan = _plan(store, next(s for s in run if "FROM locations" in s[0] and "ORDER BY" in s[0]))
            assert ("rtree_locations" if store.dialect.name == "sqlite" else "locations_geom_gist") in plan, plan
    assert _names(service, "Locations", **{"$orderby": order, "$top": "4", "$filter": "startswith(name, 'g')"}) == \
        expected(lambda name: name.startswith("g"))[:4]
    # the pages after the first continue where it ended
    pages: list[str] = []
    params: dict[str, str] = {"$orderby": order, "$top": "7"}
    for _ in range(3):
        res = service.handle(ApiRequest("GET", "Locations", params, sees_internal=False, base="http://test/v1.1"))
        pages += [e["name"] for e in res.body["value"]]
        params = dict(parse_qsl(urlsplit(res.body["@iot.nextLink"]).query))
    assert pages == expected()[:21]
