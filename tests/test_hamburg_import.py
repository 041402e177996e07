"""Import real iot.hamburg.de SensorThings documents through the HTTP API, as a migration would.

The three documents (bicycle counters, motor traffic counters, EV charging points) are first pages of
`Things?$expand=Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))` (the EV one
also expands Locations) and carry what real servers write: `@iot.selfLink`, `@iot.nextLink` and
`…@iot.navigationLink` annotations, navigation links to entity sets this server does not have
(TaskingCapabilities), observedArea LineStrings whose second point has latitude and longitude swapped,
interval phenomenonTimes, integer and category (string) results, a Datastream without observedArea or
phenomenonTime, and Things that appear in two documents (a counting station counts bicycles and cars).

The migration keeps every document's bodies as they are, dropping only Hamburg's `@iot.id`s (an
`@iot.id` in a body names an entity that exists here). It creates a Sensor per Hamburg service and an
ObservedProperty per layer, which the documents do not carry, and imports each document with one
all-or-nothing `$batch` of deep inserts (Thing + Locations + Datastreams + Observations). Things without a
Location get a FeatureOfInterest per Datastream made from its observedArea.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import DEMO_DATA, Server, unique

DOCUMENTS = ("HH_STA_HamburgerRadzaehlnetz.json", "traffic_status.json", "ev-charging-stations.json")
STA_DIR = DEMO_DATA


@dataclass
class Imported:
    """What the migration made: the run's tag and Hamburg ids mapped to ours."""

    tag: str
    things: dict[int, int] = field(default_factory=dict)  # Hamburg Thing id -> our id
    sensors: dict[str, int] = field(default_factory=dict)  # Hamburg serviceName -> our Sensor id
    observed_properties: dict[str, int] = field(default_factory=dict)  # layerName -> our ObservedProperty id


@dataclass
class Expected:
    """The documents' content merged: each Thing once, with the Datastreams of every document."""

    things: dict[int, dict[str, Any]] = field(default_factory=dict)
    datastreams: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by Hamburg Thing id

    @property
    def observations(self) -> list[dict[str, Any]]:
        return [o for streams in self.datastreams.values() for ds in streams for o in ds.get("Observations", [])]


def _load() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in DOCUMENTS:
        path = STA_DIR / name
        if not path.exists():
            pytest.skip(f"{path} is missing")
        docs[name] = json.loads(path.read_text(encoding="utf-8"))
    return docs


def _expected(docs: dict[str, dict[str, Any]]) -> Expected:
    out = Expected()
    for doc in docs.values():
        for thing in doc["value"]:
            out.things.setdefault(thing["@iot.id"], thing)
            out.datastreams.setdefault(thing["@iot.id"], []).extend(thing["Datastreams"])
    return out


def _without_id(entity: dict[str, Any]) -> dict[str, Any]:
    # Hamburg's ids mean nothing here: an @iot.id in a body links to an existing entity. Every other
    # annotation (@iot.selfLink, ...@iot.navigationLink, ...@iot.nextLink) is left for the server to ignore.
    return {k: v for k, v in entity.items() if k != "@iot.id"}


def _layer(ds: dict[str, Any]) -> str:
    return ds["properties"].get("layerName") or ds["observationType"].rsplit("/", 1)[-1]


def _datastream_body(ds: dict[str, Any], run: Imported, has_location: bool) -> dict[str, Any]:
    body = _without_id(ds)
    body["Sensor"] = {"@iot.id": run.sensors[ds["properties"]["serviceName"]]}
    body["ObservedProperty"] = {"@iot.id": run.observed_properties[_layer(ds)]}
    observations = [_without_id(o) for o in ds.get("Observations", [])]
    if observations and not has_location:
        # no Location to derive a FeatureOfInterest from: the Datastream's observed area is what was observed
        feature = {"name": ds["name"], "description": "observed area of the Hamburg Datastream",
                   "encodingType": "application/geo+json", "feature": ds["observedArea"]}
        for obs in observations:
            obs["FeatureOfInterest"] = feature
    body["Observations"] = observations
    return body


def _batch(client: httpx.Client, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    res = client.post("$batch", json={"requests": requests})
    assert res.status_code == 200, res.text
    responses = res.json()["responses"]
    assert len(responses) == len(requests)
    failed = [r for r in responses if r["status"] >= 300]
    assert not failed, failed[:3]
    return responses


def migrate(client: httpx.Client, docs: dict[str, dict[str, Any]], tag: str) -> Imported:
    """Import the documents; returns how Hamburg's Things, services and layers map to ours."""
    run = Imported(tag)
    services: dict[str, dict[str, Any]] = {}
    layers: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        for thing in doc["value"]:
            for ds in thing["Datastreams"]:
                services.setdefault(ds["properties"]["serviceName"], ds)
                layers.setdefault(_layer(ds), ds)
    requests = []
    for service, ds in services.items():
        requests.append({"id": f"s{len(requests)}", "method": "POST", "url": "Sensors", "body": {
            "name": service, "description": f"Hamburg's {service} sensors", "encodingType": "text/html",
            "metadata": ds["properties"].get("metadata", "https://iot.hamburg.de"),
            "properties": {"importRun": tag, "ownerData": ds["properties"].get("ownerData")}}})
    for layer, ds in layers.items():
        requests.append({"id": f"p{len(requests)}", "method": "POST", "url": "ObservedProperties", "body": {
            "name": layer, "definition": ds["observationType"], "description": ds["description"],
            "properties": {"importRun": tag, "unit": ds["unitOfMeasurement"]["name"]}}})
    responses = _batch(client, requests)
    for name, res in zip([*services, *layers], responses, strict=True):
        (run.sensors if res["id"].startswith("s") else run.observed_properties)[name] = res["body"]["@iot.id"]

    for name, doc in docs.items():
        requests = []
        pending: set[int] = set()
        for thing in doc["value"]:
            hid = thing["@iot.id"]
            has_location = bool(thing.get("Locations"))
            streams = [_datastream_body(ds, run, has_location) for ds in thing["Datastreams"]]
            if hid in run.things or hid in pending:  # imported already: add the Datastreams to it
                # a Thing made earlier in this batch is addressed by its request id
                url = f"Things({run.things[hid]})/Datastreams" if hid in run.things else f"$t{hid}/Datastreams"
                requests += [{"id": f"d{hid}-{len(requests)}", "method": "POST", "url": url,
                              "atomicityGroup": name, "body": body} for body in streams]
                continue
            body = _without_id(thing)
            body["Locations"] = [_without_id(loc) for loc in thing.get("Locations", [])]
            body["Datastreams"] = streams
            requests.append({"id": f"t{hid}", "method": "POST", "url": "Things", "atomicityGroup": name,
                             "body": body})
            pending.add(hid)
        for res in _batch(client, requests):
            if res["id"].startswith("t"):
                assert res["status"] == 201
                run.things[int(res["id"][1:])] = res["body"]["@iot.id"]
    return run


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _load()


@pytest.fixture(scope="module")
def expected(docs: dict[str, dict[str, Any]]) -> Expected:
    return _expected(docs)


@pytest.fixture(scope="module")
def client(app_server: Server) -> Iterator[httpx.Client]:
    """The platform in-process on each store: the migration is HTTP only."""
    with app_server.http("/v1.1/", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def imported(client: httpx.Client, docs: dict[str, dict[str, Any]]) -> Imported:
    return migrate(client, docs, unique("hamburg"))


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _instants(text: str | None) -> tuple[datetime, ...] | None:
    """A time or interval as instants: Hamburg's server writes `…00.000Z` where ours writes `…00Z`."""
    return None if text is None else tuple(_time(t) for t in text.split("/"))


def _times(doc: dict[str, Any]) -> dict[str, Any]:
    """phenomenonTime, result and resultTime, the times as instants."""
    return {"phenomenonTime": _instants(doc.get("phenomenonTime")), "result": doc.get("result"),
            "resultTime": _instants(doc.get("resultTime"))}


def _ours(run: Imported) -> str:
    """A filter for this run's Things."""
    return f"Datastreams/Sensor/properties/importRun eq '{run.tag}'"


def _count(client: httpx.Client, path: str, flt: str) -> int:
    res = client.get(path, params={"$filter": flt, "$count": "true", "$top": "0"})
    assert res.status_code == 200, res.text
    return res.json()["@iot.count"]


def _all(client: httpx.Client, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    url: str | None = path
    while url is not None:
        res = client.get(url, params=params if url == path else None)
        assert res.status_code == 200, res.text
        page = res.json()
        out += page["value"]
        url = page.get("@iot.nextLink")
    return out


def test_counts_match_the_documents(client: httpx.Client, imported: Imported, expected: Expected,
                                    docs: dict[str, dict[str, Any]]) -> None:
    assert len(expected.things) == 289  # 300 Things in the pages, 11 stations count both bicycles and cars
    assert len(imported.things) == 289
    n_streams = sum(len(v) for v in expected.datastreams.values())
    assert (n_streams, len(expected.observations)) == (420, 412)

    assert _count(client, "Things", _ours(imported)) == 289
    assert _count(client, "Datastreams", f"Sensor/properties/importRun eq '{imported.tag}'") == 420
    assert _count(client, "Observations", f"Datastream/Sensor/properties/importRun eq '{imported.tag}'") == 412
    assert _count(client, "Locations", f"Things/{_ours(imported)}") == 100
    # per document, through each service's Sensor
    for doc in docs.values():
        service = doc["value"][0]["Datastreams"][0]["properties"]["serviceName"]
        sensor = imported.sensors[service]
        streams = [ds for thing in doc["value"] for ds in thing["Datastreams"]]
        got = client.get(f"Sensors({sensor})/Datastreams", params={"$count": "true", "$top": "0"}).json()
        assert got["@iot.count"] == len(streams)
        n_obs = sum(len(ds["Observations"]) for ds in streams)
        assert _count(client, "Observations", f"Datastream/Sensor/id eq {sensor}") == n_obs
    # the stations in two documents are one Thing with the Datastreams of both
    bikes, cars = ({t["@iot.id"] for t in docs[name]["value"]} for name in DOCUMENTS[:2])
    both = bikes & cars
    assert len(both) == 11
    for hid in both:
        names = {d["name"] for d in client.get(f"Things({imported.things[hid]})/Datastreams").json()["value"]}
        assert names == {d["name"] for d in expected.datastreams[hid]}


def test_thing_properties_round_trip(client: httpx.Client, imported: Imported, expected: Expected) -> None:
    things = _all(client, "Things", {"$filter": _ours(imported), "$select": "id,name,description,properties",
                                     "$expand": "Locations($select=name,description,encodingType,location,properties)",
                                     "$top": "120"})
    assert len(things) == 289
    by_id = {t["@iot.id"]: t for t in things}
    for hid, ours in imported.things.items():
        want, got = expected.things[hid], by_id[ours]
        assert (got["name"], got["description"]) == (want["name"], want["description"])
        assert got["properties"] == want["properties"]
        assert json.dumps(got["properties"], sort_keys=True) == json.dumps(want["properties"], sort_keys=True)
        assert got["Locations"] == [{k: v for k, v in loc.items() if not k.startswith("@iot.")}
                                    for loc in want.get("Locations", [])]

    station = by_id[imported.things[5564]]
    assert station["properties"]["assetID"] == "0295970"  # a string of digits stays a string
    assert station["properties"]["keywords"][:2] == ["Infrarotdetektor", "Verkehrsmenge"]
    charger = by_id[imported.things[4007]]
    assert charger["Locations"][0]["location"] == {"type": "Feature", "geometry": {"type": "Point",
                                                                                   "coordinates": [9.9266, 53.55308]}}
    assert charger["Locations"][0]["encodingType"] == "application/vnd.geo+json"


def test_filter_by_asset_id(client: httpx.Client, imported: Imported, expected: Expected) -> None:
    for hid, asset in ((5564, "0295970"), (4007, "DE*SNH*E376")):
        found = client.get("Things", params={"$filter": f"properties/assetID eq '{asset}'",
                                             "$select": "id,properties"}).json()["value"]
        assert imported.things[hid] in [t["@iot.id"] for t in found]
        assert all(t["properties"]["assetID"] == asset for t in found)
        mine = client.get("Things", params={"$filter": f"properties/assetID eq '{asset}' and {_ours(imported)}",
                                            "$expand": "Datastreams($select=name;$orderby=name)"}).json()["value"]
        assert [t["@iot.id"] for t in mine] == [imported.things[hid]]
        assert mine[0]["name"] == expected.things[hid]["name"]
        assert [d["name"] for d in mine[0]["Datastreams"]] == sorted(d["name"] for d in expected.datastreams[hid])
    # a number is not the string of its digits
    assert client.get("Things", params={"$filter": f"properties/assetID eq 295970 and {_ours(imported)}"}
                      ).json()["value"] == []


def test_category_and_count_results_filter(client: httpx.Client, imported: Imported, expected: Expected) -> None:
    results = Counter(o["result"] for o in expected.observations)
    run = f"Datastream/Sensor/properties/importRun eq '{imported.tag}'"
    categories = {r for r in results if isinstance(r, str)}
    assert {"charging", "available"} <= categories
    for category in categories:
        assert _count(client, "Observations", f"result eq '{category}' and {run}") == results[category]
    charging = _all(client, "Observations", {"$filter": f"result eq 'charging' and {run}",
                                             "$expand": "Datastream($select=name)", "$top": "50"})
    assert {o["result"] for o in charging} == {"charging"}
    assert all(o["Datastream"]["name"].startswith("Ladepunkt ") for o in charging)
    # counts compare as numbers, category results never match a number
    over = sum(n for r, n in results.items() if isinstance(r, int) and r > 100)
    assert over > 0
    assert _count(client, "Observations", f"result gt 100 and {run}") == over


def test_interval_phenomenon_time_round_trips(client: httpx.Client, imported: Imported, expected: Expected) -> None:
    stream = next(ds for ds in expected.datastreams[5564] if ds["@iot.id"] == 11796)
    obs = stream["Observations"][0]
    assert obs["phenomenonTime"] == "2022-06-14T10:00:00.000Z/2022-06-14T10:14:59.000Z"
    ours = client.get(f"Things({imported.things[5564]})/Datastreams",
                      params={"$filter": f"name eq '{stream['name']}'",
                              "$expand": "Observations($select=phenomenonTime,result,resultTime)"}).json()["value"]
    assert len(ours) == 1
    assert _times(ours[0]) == _times({**stream, "result": None})
    assert ours[0]["Observations"] == [{"phenomenonTime": "2022-06-14T10:00:00Z/2022-06-14T10:14:59Z", "result": 60,
                                        "resultTime": "2022-06-14T10:27:02.157Z"}]
    # an interval compares with an instant by its ends
    run = f"Datastream/Sensor/properties/importRun eq '{imported.tag}'"
    flt = f"phenomenonTime lt 2022-06-14T10:14:59.500Z and phenomenonTime gt 2022-06-14T09:59:59Z and {run}"
    found = client.get("Observations", params={"$filter": flt, "$top": "1000"}).json()["value"]
    want = [o for o in expected.observations if _time(o["phenomenonTime"].split("/")[-1]) < _time(
        "2022-06-14T10:14:59.500Z") and _time(o["phenomenonTime"].split("/")[0]) > _time("2022-06-14T09:59:59Z")]
    assert len(want) > 1
    assert sorted((_instants(o["phenomenonTime"]), o["result"]) for o in found) == \
        sorted((_instants(o["phenomenonTime"]), o["result"]) for o in want)
    assert _instants(obs["phenomenonTime"]) in {_instants(o["phenomenonTime"]) for o in found}


def test_expand_latest_observation(client: httpx.Client, imported: Imported, expected: Expected) -> None:
    things = _all(client, "Things", {
        "$filter": _ours(imported), "$top": "200",
        "$expand": "Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"})
    assert len(things) == 289
    by_id = {t["@iot.id"]: t for t in things}
    swapped = 0
    for hid, ours in imported.things.items():
        got = {d["name"]: d for d in by_id[ours]["Datastreams"]}
        want = {d["name"]: d for d in expected.datastreams[hid]}
        assert got.keys() == want.keys()
        for name, ds in want.items():
            doc = got[name]
            for key in ("description", "observationType", "unitOfMeasurement", "properties"):
                assert doc[key] == ds[key], (name, key)
            # the server keeps the times and the area Hamburg gave, the swapped coordinates included
            assert doc["observedArea"] == ds.get("observedArea")
            assert _times({**doc, "result": None}) == _times({**ds, "result": None})
            assert [_times(o) for o in doc["Observations"]] == [_times(o) for o in ds["Observations"]]
            assert "Observations@iot.nextLink" not in doc
            area = ds.get("observedArea") or {}
            if area.get("type") == "LineString" and area["coordinates"][0] == area["coordinates"][1][::-1]:
                swapped += 1
    assert swapped == 214  # every EV charger's LineString is its point and the point swapped


def test_spatial_filters_over_the_imported_geometries(client: httpx.Client, imported: Imported,
                                                      expected: Expected) -> None:
    import shapely

    hamburg = "POLYGON((9.6 53.3,10.4 53.3,10.4 53.8,9.6 53.8,9.6 53.3))"
    area = shapely.from_wkt(hamburg)
    streams = [ds for v in expected.datastreams.values() for ds in v]
    shapes = [shapely.geometry.shape(ds["observedArea"]) for ds in streams if ds.get("observedArea")]
    within = sum(1 for s in shapes if s.within(area))
    crossing = sum(1 for s in shapes if s.intersects(area))
    # the swapped LineStrings reach from Hamburg into the Arabian Sea: they cross the city, not lie in it
    assert len(shapes) == 419
    assert crossing - within == 214
    run = f"Sensor/properties/importRun eq '{imported.tag}'"
    assert _count(client, "Datastreams", f"st_within(observedArea, geography'{hamburg}') and {run}") == within
    assert _count(client, "Datastreams", f"st_intersects(observedArea, geography'{hamburg}') and {run}") == crossing
    # EV charger Locations are GeoJSON Features: their geometry is what is compared
    assert _count(client, "Locations", f"st_within(location, geography'{hamburg}') and Things/{_ours(imported)}") \
        == 100
    # the FeaturesOfInterest made from Locations and observed areas are where the Observations were
    assert _count(client, "Observations", f"st_within(FeatureOfInterest/feature, geography'{hamburg}') and "
                                          f"Datastream/{run}") == sum(
        len(ds["Observations"]) for ds in streams
        if ds.get("observedArea") and shapely.geometry.shape(ds["observedArea"]).within(area)
        or ds["properties"]["serviceName"] == "HH_STA_E-Ladestationen")
