"""The SensorThings API over HTTP on both stores: create, read, query, update, delete, errors. In-process (the
ASGI app behind an ASGI client): nothing here needs a broker; tests/test_serve.py runs the same app as `udp serve`."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Server, unique

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
UNIT = {"name": "degree Celsius", "symbol": "degC", "definition": "http://unitsofmeasure.org/ucum.html#para-30"}


def thing_body(name: str, lon: float = 10.0, lat: float = 53.5, observations: list[dict] | None = None,
               props: dict | None = None) -> dict[str, Any]:
    """A Thing with a Location and one Datastream (with Sensor, ObservedProperty, Observations)."""
    return {
        "name": name,
        "description": "a test thing",
        "properties": props or {"owner": "city", "floors": 3},
        "Locations": [{"name": f"{name} loc", "description": "where", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [lon, lat]}}],
        "Datastreams": [{
            "name": f"{name} temperature",
            "description": "air temperature",
            "observationType": OM + "OM_Measurement",
            "unitOfMeasurement": UNIT,
            "Sensor": {"name": f"{name} sensor", "description": "thermometer", "encodingType": "text/html",
                       "metadata": "https://example.org/sensor"},
            "ObservedProperty": {"name": f"{name} temp", "definition": "https://example.org/temp",
                                 "description": "temperature"},
            "Observations": observations or [],
        }],
    }


def create(sta: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    """POST and return the created entity; checks 201 and Location."""
    r = sta.post(path, json=body)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert r.headers["location"] == doc["@iot.selfLink"]
    return doc


def one(sta: httpx.Client, path: str, **params: Any) -> Any:
    r = sta.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def values(sta: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    return one(sta, path, **params)["value"]


@pytest.fixture(scope="module")
def server(app_server: Server) -> Server:
    """The platform in-process on each store (the conftest's `sta` reaches it)."""
    return app_server


@pytest.fixture
def thing(sta: httpx.Client) -> dict[str, Any]:
    """A Thing with a Location, a Datastream and five Observations."""
    name = unique("thing")
    obs = [{"phenomenonTime": f"2024-01-0{i + 1}T10:00:00+02:00", "result": i * 10} for i in range(5)]
    doc = create(sta, "Things", thing_body(name, observations=obs))
    ds = values(sta, f"Things({doc['@iot.id']})/Datastreams")[0]
    return {"thing": doc, "ds": ds, "name": name}


# -- service root and links ----------------------------------------------------------------------------
def test_service_root_lists_sets_and_conformance(server: Any, sta: httpx.Client) -> None:
    doc = one(sta, "")
    names = {v["name"] for v in doc["value"]}
    assert {"Things", "Locations", "HistoricalLocations", "Datastreams", "MultiDatastreams", "Sensors",
            "ObservedProperties", "Observations", "FeaturesOfInterest"} <= names
    conf = doc["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel" in conf
    assert any("batch-request" in c for c in conf)
    assert all(v["url"].startswith(server.sta) for v in doc["value"])


REQ = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
# OGC 18-088 Annex A: the requirement classes of SensorThings API 1.1 that the HTTP API implements
ANNEX_A = [
    *(f"datamodel/{e}/{part}" for e in ("thing", "location", "historical-location", "datastream", "sensor",
                                         "observed-property", "observation", "feature-of-interest")
      for part in ("properties", "relations")),
    "datamodel/entity-control-information/common-control-information",
    "resource-path/resource-path-to-entities",
    *(f"request-data/{c}" for c in ("status-code", "query-status-code", "order", "expand", "select", "orderby", "top",
                                    "skip", "count", "filter", "built-in-filter-operations", "built-in-query-functions",
                                    "pagination")),
    *(f"create-update-delete/{c}" for c in ("create-entity", "link-to-existing-entities", "deep-insert",
                                            "deep-insert-status-code", "update-entity", "delete-entity",
                                            "historical-location-auto-creation", "historical-location-manual-creation",
                                            "update-entity-put", "update-entity-jsonpatch")),
    "batch-request/batch-request",
    *(f"multi-datastream/{c}" for c in ("properties", "relations", "constraints")),
    "data-array/data-array",
]
# a request using each query option, for the request-data class named after it
OPTION_USES = {"filter": "id ge 0", "select": "name", "orderby": "name desc", "top": "1", "skip": "1",
               "count": "true", "expand": "Locations($top=1)"}


def test_conformance_lists_each_requirement_class(server: Any, sta: httpx.Client) -> None:
    conf = one(sta, "")["serverSettings"]["conformance"]
    assert len(conf) == len(set(conf))
    assert not {REQ + c for c in ANNEX_A} - set(conf)
    assert REQ + "datamodel" in conf  # the whole data model, as clients look for it
    assert all(c.startswith(REQ) for c in conf)
    # what is listed works: each query option with a request-data class of its own is answered
    options = [c.removeprefix(REQ + "request-data/") for c in conf if c.removeprefix(REQ + "request-data/") in
               OPTION_USES]
    assert sorted(options) == sorted(OPTION_USES)
    for option in options:
        r = sta.get("Things", params={f"${option}": OPTION_USES[option]})
        assert r.status_code == 200, (option, r.text)


def test_links_follow_forwarded_headers(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    r = sta.get(f"Things({tid})", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "city.example.org"})
    doc = r.json()
    assert doc["@iot.selfLink"] == f"https://city.example.org/v1.1/Things({tid})"
    assert doc["Datastreams@iot.navigationLink"] == f"https://city.example.org/v1.1/Things({tid})/Datastreams"


# -- create ----------------------------------------------------------------------------------------------
def test_deep_insert_creates_everything_and_a_historical_location(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    locs = values(sta, f"Things({tid})/Locations")
    assert len(locs) == 1 and locs[0]["location"]["coordinates"] == [10.0, 53.5]
    hls = values(sta, f"Things({tid})/HistoricalLocations", **{"$expand": "Locations"})
    assert len(hls) == 1 and hls[0]["Locations"][0]["@iot.id"] == locs[0]["@iot.id"]
    assert hls[0]["time"].endswith("Z")
    ds = thing["ds"]
    assert one(sta, f"Datastreams({ds['@iot.id']})/Sensor")["name"].endswith("sensor")
    assert one(sta, f"Datastreams({ds['@iot.id']})/ObservedProperty")["name"].endswith("temp")
    obs = values(sta, f"Datastreams({ds['@iot.id']})/Observations", **{"$orderby": "phenomenonTime"})
    assert [o["result"] for o in obs] == [0, 10, 20, 30, 40]
    # stored in UTC, written with Z
    assert obs[0]["phenomenonTime"] == "2024-01-01T08:00:00Z"
    # the Datastream's phenomenonTime covers its Observations
    ds_now = one(sta, f"Datastreams({ds['@iot.id']})")
    assert ds_now["phenomenonTime"] == "2024-01-01T08:00:00Z/2024-01-05T08:00:00Z"


def test_generated_feature_of_interest_is_reused(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    fois = {one(sta, f"Observations({o['@iot.id']})/FeatureOfInterest")["@iot.id"]
            for o in values(sta, f"Datastreams({ds})/Observations")}
    assert len(fois) == 1
    created = create(sta, f"Datastreams({ds})/Observations", {"result": 99})
    foi = one(sta, f"Observations({created['@iot.id']})/FeatureOfInterest")
    assert foi["@iot.id"] in fois
    assert foi["feature"]["coordinates"] == [10.0, 53.5]


def test_observation_defaults_phenomenon_time_to_now(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    created = create(sta, "Observations", {"result": 1.5, "Datastream": {"@iot.id": ds}})
    assert created["phenomenonTime"].startswith("20") and created["phenomenonTime"].endswith("Z")
    assert created["result"] == 1.5


@pytest.mark.parametrize("result", [42, 3.25, "charging", True, None, {"a": [1, 2]}, [1, "x", None]])
def test_results_of_any_json_type_round_trip(sta: httpx.Client, thing: dict, result: Any) -> None:
    ds = thing["ds"]["@iot.id"]
    # an OM_Observation's result may be any JSON value (OM_Measurement takes numbers only)
    assert sta.patch(f"Datastreams({ds})", json={"observationType": OM + "OM_Observation"}).status_code == 200
    body = {"result": result, "phenomenonTime": "2024-02-01T00:00:00Z/2024-02-01T01:00:00Z",
            "resultTime": "2024-02-01T01:00:05-05:00", "parameters": {"k": "v"}, "resultQuality": ["good"],
            "validTime": "2024-02-01T00:00:00Z/2024-03-01T00:00:00Z", "Datastream": {"@iot.id": ds}}
    created = create(sta, "Observations", body)
    got = one(sta, f"Observations({created['@iot.id']})")
    assert got["result"] == result and type(got["result"]) is type(result)
    assert got["phenomenonTime"] == "2024-02-01T00:00:00Z/2024-02-01T01:00:00Z"
    assert got["resultTime"] == "2024-02-01T06:00:05Z"
    assert got["parameters"] == {"k": "v"} and got["resultQuality"] == ["good"]
    assert got["validTime"] == "2024-02-01T00:00:00Z/2024-03-01T00:00:00Z"
    # a chart's page (its Datastream, results and times only): on PostgreSQL read from the series index, a text or
    # JSON result looked up from its row
    charted = one(sta, f"Datastreams({ds})/Observations", **{"$filter": f"id eq {created['@iot.id']}",
                                                               "$select": "result,phenomenonTime"})["value"]
    assert charted == [{"result": result, "phenomenonTime": "2024-02-01T00:00:00Z/2024-02-01T01:00:00Z"}]
    assert type(charted[0]["result"]) is type(result)


def test_link_existing_entities_by_id(sta: httpx.Client, thing: dict) -> None:
    ds = one(sta, f"Datastreams({thing['ds']['@iot.id']})", **{"$expand": "Sensor,ObservedProperty"})
    body = {"name": unique("ds"), "description": "second", "observationType": OM + "OM_Measurement",
            "unitOfMeasurement": UNIT, "Thing": {"@iot.id": thing["thing"]["@iot.id"]},
            "Sensor": {"@iot.id": ds["Sensor"]["@iot.id"]},
            "ObservedProperty": {"@iot.id": ds["ObservedProperty"]["@iot.id"]}}
    created = create(sta, "Datastreams", body)
    assert one(sta, f"Datastreams({created['@iot.id']})/Thing")["@iot.id"] == thing["thing"]["@iot.id"]
    assert len(values(sta, f"Sensors({ds['Sensor']['@iot.id']})/Datastreams")) == 2


def test_location_posted_to_thing_links_and_records_history(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    loc = {"name": "moved", "description": "new place", "encodingType": "application/geo+json",
           "location": {"type": "Point", "coordinates": [11, 54]}}
    create(sta, f"Things({tid})/Locations", loc)
    assert len(values(sta, f"Things({tid})/HistoricalLocations")) == 2


def test_multidatastream(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    body = {
        "name": unique("md"), "description": "wind", "observationType": OM + "OM_ComplexObservation",
        "multiObservationDataTypes": [OM + "OM_Measurement", OM + "OM_Measurement"],
        "unitOfMeasurements": [UNIT, {"name": "m/s", "symbol": "m/s", "definition": "x"}],
        "Thing": {"@iot.id": tid},
        "Sensor": {"name": "anemometer", "description": "wind", "encodingType": "text/html", "metadata": "x"},
        "ObservedProperties": [{"name": "dir", "definition": "d", "description": "d"},
                               {"name": "speed", "definition": "s", "description": "s"}],
    }
    md = create(sta, "MultiDatastreams", body)
    mid = md["@iot.id"]
    assert [p["name"] for p in values(sta, f"MultiDatastreams({mid})/ObservedProperties")] == ["dir", "speed"]
    create(sta, f"MultiDatastreams({mid})/Observations", {"result": [270, 4.5]})
    assert values(sta, f"MultiDatastreams({mid})/Observations")[0]["result"] == [270, 4.5]
    r = sta.post(f"MultiDatastreams({mid})/Observations", json={"result": [1]})
    assert r.status_code == 400
    # each value against its own type (the types as read for the write: JSON text on SQLite's driver, decoded)
    r = sta.post(f"MultiDatastreams({mid})/Observations", json={"result": ["north", 4.5]})
    assert r.status_code == 400 and "multiObservationDataTypes[0]" in r.json()["message"]
    bad = dict(body, unitOfMeasurements=[UNIT])
    assert sta.post("MultiDatastreams", json=bad).status_code == 400


# -- bad input writes nothing ------------------------------------------------------------------------------
def test_bad_bodies_get_400_and_write_nothing(sta: httpx.Client, thing: dict) -> None:
    name = unique("bad")
    assert sta.post("Things", content=b"{not json").status_code == 400
    r = sta.post("Things", json={"description": "no name"})
    assert r.status_code == 400 and "name" in r.json()["message"]
    body = thing_body(name)
    body["Datastreams"][0]["Sensor"] = {"@iot.id": 987654321}
    r = sta.post("Things", json=body)
    assert r.status_code == 400 and "987654321" in r.json()["message"]
    # nothing of the failed deep insert remains
    assert values(sta, "Things", **{"$filter": f"name eq '{name}'"}) == []
    assert values(sta, "Locations", **{"$filter": f"name eq '{name} loc'"}) == []
    r = sta.post("Observations", json={"result": 1, "Datastream": {"@iot.id": 987654321}})
    assert r.status_code == 400
    r = sta.post("Things", json={"name": "x", "description": "y", "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["message"]
    r = sta.post("Observations", json={"result": 1, "phenomenonTime": "yesterday",
                                       "Datastream": {"@iot.id": thing["ds"]["@iot.id"]}})
    assert r.status_code == 400 and "phenomenonTime" in r.json()["message"]


def test_unknown_sets_and_properties(sta: httpx.Client, thing: dict) -> None:
    r = sta.get("Thingz")
    assert r.status_code == 404 and "Thingz" in r.json()["message"]
    r = sta.get(f"Things({thing['thing']['@iot.id']})/colour")
    assert r.status_code == 404 and "colour" in r.json()["message"]
    assert sta.get("Things(999999999)").status_code == 404
    assert sta.get("Things(999999999)/Datastreams").status_code == 404
    assert sta.get(f"Things({thing['thing']['@iot.id']})/MultiDatastreams").json() == {"value": []}
    r = sta.get("Things", params={"$filter": "colour eq 'red'"})
    assert r.status_code == 400 and "colour" in r.json()["message"]
    r = sta.get("Things", params={"$select": "colour"})
    assert r.status_code == 400
    r = sta.get("Things", params={"$expand": "Colours"})
    assert r.status_code == 400 and "Colours" in r.json()["message"]


@pytest.mark.parametrize("option,text,position", [
    ("$filter", "name eq 'x' and", 15),
    ("$filter", "name eq (1", 10),
    ("$filter", "foo(1)", 0),
    ("$orderby", "name sideways", 5),
    ("$expand", "Datastreams($top=x)", None),
])
def test_malformed_options_get_400_with_position(sta: httpx.Client, option: str, text: str,
                                                 position: int | None) -> None:
    r = sta.get("Things", params={option: text})
    assert r.status_code == 400
    body = r.json()
    assert body["option"] == option
    if position is not None:
        assert body["position"] == position


@pytest.mark.parametrize("params,option,position,name", [
    ({"$select": "name,colour"}, "$select", 5, "colour"),
    ({"$expand": "Datastreams,Colours"}, "$expand", 12, "Colours"),
    ({"$expand": "Datastreams($select=name,hue)"}, "$expand", 25, "hue"),
    ({"$expand": "Datastreams/Observations($expand=Colour)"}, "$expand", 33, "Colour"),
    ({"$expand": "Locations($select=location;$expand=Things($select=owner))"}, "$expand", 50, "owner"),
])
def test_select_and_expand_names_are_checked_before_reading(sta: httpx.Client, params: dict[str, str], option: str,
                                                            position: int, name: str) -> None:
    """A name the entity model lacks is a 400 naming the option and where the name is, even when no row would be
    read (the set here is empty, so a check made while reading would never see it)."""
    for path in ("Things", "Locations(999999999)/Things"):
        r = sta.get(path, params={"$filter": "id eq -1", **params} if path == "Things" else params)
        assert r.status_code == 400, (path, r.text)
        body = r.json()
        assert (body["option"], body["position"]) == (option, position), body
        assert repr(name) in body["message"]
    # in a $batch part the same
    url = "Things?" + "&".join(f"{k}={v}" for k, v in params.items())
    batch = {"requests": [{"id": "1", "method": "get", "url": url}]}
    part = sta.post("$batch", json=batch).json()["responses"][0]
    assert part["status"] == 400 and (part["body"]["option"], part["body"]["position"]) == (option, position)


def test_expanded_next_link_keeps_durations(sta: httpx.Client) -> None:
    """An expanded nextLink carries the filter's durations as the parser reads them: minus one hour and 1.5 s
    (once written `P-1DT23H0M0S`, which is refused, and `1S`, which selects another row)."""
    obs = [{"phenomenonTime": f"2024-03-01T00:00:0{i}Z", "result": i} for i in range(10)]
    doc = create(sta, "Things", thing_body(unique("dur"), observations=obs))
    flt = ("phenomenonTime ge 2024-03-01T01:00:02Z add duration'-PT1H' and "
           "phenomenonTime lt 2024-03-01T00:00:06.2Z sub duration'PT1.5S'")
    got = one(sta, f"Things({doc['@iot.id']})", **{
        "$expand": f"Datastreams($expand=Observations($filter={flt};$orderby=phenomenonTime;$top=2;$select=result))"})
    ds = got["Datastreams"][0]
    assert [o["result"] for o in ds["Observations"]] == [2, 3]
    link = ds["Observations@iot.nextLink"]
    assert "duration'-PT1H'" in httpx.URL(link).params["$filter"]
    page = sta.get(link)
    assert page.status_code == 200, page.text
    assert [o["result"] for o in page.json()["value"]] == [4]
    assert "@iot.nextLink" not in page.json()
    # the top-level nextLink is written from the same tree
    top = one(sta, f"Datastreams({ds['@iot.id']})/Observations",
              **{"$filter": flt, "$orderby": "result desc", "$top": "1", "$select": "result"})
    seen = [o["result"] for o in top["value"]]
    while "@iot.nextLink" in top:
        top = sta.get(top["@iot.nextLink"]).json()
        seen += [o["result"] for o in top["value"]]
    assert seen == [4, 3, 2]


def test_sql_injection_is_just_a_string(sta: httpx.Client, thing: dict) -> None:
    evil = "x'; DROP TABLE things; --"
    r = sta.get("Things", params={"$filter": f"name eq '{evil.replace(chr(39), chr(39) * 2)}'"})
    assert r.status_code == 200 and r.json()["value"] == []
    r = sta.get("Things", params={"$orderby": "name; DROP TABLE things"})
    assert r.status_code == 400
    created = create(sta, "Things", {"name": evil, "description": "d"})
    assert one(sta, f"Things({created['@iot.id']})")["name"] == evil
    assert sta.get("Things").status_code == 200


# -- query options -------------------------------------------------------------------------------------------
def test_filter_operators_and_functions(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    path = f"Datastreams({ds})/Observations"

    def results(flt: str) -> list:
        return sorted(o["result"] for o in values(sta, path, **{"$filter": flt}))

    assert results("result gt 15") == [20, 30, 40]
    assert results("result ge 10 and result le 20") == [10, 20]
    assert results("result eq 0 or result eq 40") == [0, 40]
    assert results("not (result lt 30)") == [30, 40]
    assert results("result ne 10 and result lt 30") == [0, 20]
    assert results("result add 5 eq 25") == [20]
    assert results("result sub 5 eq 5") == [10]
    assert results("result mul 2 eq 60") == [30]
    assert results("result div 2 eq 20") == [40]
    assert results("result mod 20 eq 0") == [0, 20, 40]
    assert results("round(result div 3) eq 3") == [10]
    assert results("floor(result div 3) eq 6") == [20]
    assert results("ceiling(result div 3) eq 4") == [10]
    assert results("phenomenonTime lt 2024-01-02T09:00:00Z") == [0, 10]
    assert results("phenomenonTime ge 2024-01-05T10:00:00+02:00") == [40]
    assert results("day(phenomenonTime) eq 3") == [20]
    assert results("year(phenomenonTime) eq 2024 and month(phenomenonTime) eq 1 and hour(phenomenonTime) eq 8") \
        == [0, 10, 20, 30, 40]
    assert results("minute(phenomenonTime) eq 0 and second(phenomenonTime) eq 0") == [0, 10, 20, 30, 40]
    assert results("date(phenomenonTime) eq 2024-01-04") == [30]
    assert results("phenomenonTime lt now()") == [0, 10, 20, 30, 40]
    assert results("phenomenonTime gt now() sub duration'P1D'") == []
    assert results("Datastream/Thing/name eq '" + thing["name"] + "'") == [0, 10, 20, 30, 40]
    assert results("Datastream/id eq " + str(ds)) == [0, 10, 20, 30, 40]


def test_string_functions(sta: httpx.Client, thing: dict) -> None:
    name = thing["name"]  # thing-xxxxxxxx
    flt = f"name eq '{name}' and "
    for expr in [f"substringof('{name[6:]}', name)", f"contains(name, '{name[6:]}')", "startswith(name, 'thing-')",
                 f"endswith(name, '{name[-4:]}')", "length(name) eq 14", "indexof(name, '-') eq 5",
                 f"substring(name, 6) eq '{name[6:]}'", "substring(name, 0, 5) eq 'thing'",
                 f"tolower(toupper(name)) eq '{name}'", f"trim(name) eq '{name}'",
                 f"concat(name, '!') eq '{name}!'", "not startswith(name, 'THING')"]:
        got = values(sta, "Things", **{"$filter": flt + expr})
        assert len(got) == 1, expr


def test_json_property_paths(sta: httpx.Client) -> None:
    owner = unique("owner")
    create(sta, "Things", thing_body(unique("j"), props={"owner": owner, "floors": 7, "tags": ["a", "b"],
                                                         "nested": {"level": 2}}))
    assert len(values(sta, "Things", **{"$filter": f"properties/owner eq '{owner}'"})) == 1
    assert len(values(sta, "Things", **{"$filter": f"properties/owner eq '{owner}' and properties/floors gt 6"})) == 1
    assert values(sta, "Things", **{"$filter": f"properties/owner eq '{owner}' and properties/floors gt 7"}) == []
    assert len(values(sta, "Things", **{"$filter": f"properties/owner eq '{owner}' and properties/nested/level eq 2"
                                        })) == 1
    assert len(values(sta, "Things", **{"$filter": f"properties/owner eq '{owner}' and properties/tags[1] eq 'b'"
                                        })) == 1
    # a number compared with a string property is no match, not an error
    assert sta.get("Things", params={"$filter": "properties/owner gt 5"}).status_code == 200
    assert values(sta, "Datastreams", **{"$filter": "unitOfMeasurement/symbol eq 'degC' and "
                                                    f"Thing/properties/owner eq '{owner}'"})


def test_geospatial_functions(sta: httpx.Client) -> None:
    tag = unique("geo")
    for i, (lon, lat) in enumerate([(10.0, 53.5), (10.2, 53.6), (12.0, 55.0)]):
        create(sta, "Things", thing_body(f"{tag}-{i}", lon=lon, lat=lat))
    box = "geography'POLYGON((9.9 53.4, 10.3 53.4, 10.3 53.7, 9.9 53.7, 9.9 53.4))'"
    base = f"startswith(name, '{tag}')"

    def names(flt: str) -> list[str]:
        return sorted(v["name"] for v in values(sta, "Locations", **{"$filter": f"{base} and {flt}"}))

    assert names(f"st_within(location, {box})") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names(f"st_intersects(location, {box})") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names(f"geo.intersects(location, {box})") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names(f"st_disjoint(location, {box})") == [f"{tag}-2 loc"]
    assert names(f"st_contains({box}, location)") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names("st_equals(location, geography'POINT(10 53.5)')") == [f"{tag}-0 loc"]
    assert names("geo.distance(location, geography'POINT(10 53.5)') lt 0.5") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names(f"st_relate(location, {box}, 'T********')") == [f"{tag}-0 loc", f"{tag}-1 loc"]
    assert names("st_touches(location, geography'LINESTRING(12 54, 12 55)')") == [f"{tag}-2 loc"]
    assert names("st_crosses(geography'LINESTRING(9 53.5, 11 53.5)', location)") == []
    assert names("st_overlaps(location, geography'POINT(12 55)')") == []
    assert names("geo.length(geography'LINESTRING(0 0, 3 4)') eq 5") != []
    things = values(sta, "Things", **{"$filter": f"startswith(name, '{tag}') and st_within(Locations/location, {box})"})
    assert sorted(t["name"] for t in things) == [f"{tag}-0", f"{tag}-1"]
    r = sta.get("Locations", params={"$filter": "st_within(location, geography'POLYGON((1 2')"})
    assert r.status_code == 400


def test_expand_nested_with_options(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    doc = one(sta, f"Things({tid})", **{
        "$expand": "Locations,Datastreams($select=name,id;$expand=Observations($select=result;"
                   "$orderby=phenomenonTime desc;$top=2;$count=true),Sensor,ObservedProperty($select=name))"})
    assert len(doc["Locations"]) == 1
    ds = doc["Datastreams"][0]
    assert set(ds) >= {"name", "@iot.id", "Observations", "Sensor", "ObservedProperty"}
    assert "description" not in ds
    assert [o["result"] for o in ds["Observations"]] == [40, 30]
    assert ds["Observations"][0] == {"result": 40}
    assert ds["Observations@iot.count"] == 5
    assert ds["Observations@iot.nextLink"].endswith("$top=2&$skip=2") or "$skip=2" in ds["Observations@iot.nextLink"]
    nxt = sta.get(ds["Observations@iot.nextLink"]).json()
    assert [o["result"] for o in nxt["value"]] == [20, 10]
    assert ds["ObservedProperty"] == {"name": thing["name"] + " temp"}
    # slash form and the Masterportal request
    doc = one(sta, f"Things({tid})", **{"$expand": "Datastreams/Observations($orderby=phenomenonTime desc;$top=1)"})
    assert doc["Datastreams"][0]["Observations"][0]["result"] == 40
    obs = values(sta, f"Datastreams({thing['ds']['@iot.id']})/Observations",
                 **{"$expand": "Datastream/Thing/Locations,FeatureOfInterest", "$top": "1"})
    assert obs[0]["Datastream"]["Thing"]["Locations"][0]["name"].endswith("loc")
    assert "feature" in obs[0]["FeatureOfInterest"]
    # filter inside expand
    doc = one(sta, f"Things({tid})", **{"$expand": "Datastreams($expand=Observations($filter=result ge 30))"})
    assert sorted(o["result"] for o in doc["Datastreams"][0]["Observations"]) == [30, 40]


def test_select_orderby_top_skip_count_nextlink(sta: httpx.Client) -> None:
    tag = unique("page")
    for i in range(7):
        create(sta, "Things", {"name": f"{tag}-{i % 3}", "description": f"{6 - i}"})
    flt = {"$filter": f"startswith(name, '{tag}')"}
    got = values(sta, "Things", **flt, **{"$orderby": "name desc,description", "$select": "name,description"})
    assert [(t["name"][-1], t["description"]) for t in got] == [
        ("2", "1"), ("2", "4"), ("1", "2"), ("1", "5"), ("0", "0"), ("0", "3"), ("0", "6")]
    assert set(got[0]) == {"name", "description"}
    page = one(sta, "Things", **flt, **{"$top": "3", "$skip": "1", "$count": "true", "$orderby": "id"})
    assert page["@iot.count"] == 7 and len(page["value"]) == 3
    seen = [t["@iot.id"] for t in page["value"]]
    nxt = page["@iot.nextLink"]
    while nxt:
        doc = sta.get(nxt).json()
        seen += [t["@iot.id"] for t in doc["value"]]
        nxt = doc.get("@iot.nextLink")
    assert len(seen) == 6 and seen == sorted(seen)
    assert sta.get("Things", params={"$top": "10001"}).status_code == 400
    assert sta.get("Things", params={"$top": "-1"}).status_code == 400
    assert sta.get("Things", params={"$frobnicate": "1"}).status_code == 400
    default = one(sta, "Things")
    assert len(default["value"]) <= 100


def test_ref_value_and_property_paths(sta: httpx.Client, server: Any, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    assert one(sta, f"Things({tid})/name") == {"name": thing["name"]}
    r = sta.get(f"Things({tid})/name/$value")
    assert r.status_code == 200 and r.text == thing["name"]
    assert one(sta, f"Things({tid})/properties") == {"properties": {"owner": "city", "floors": 3}}
    refs = values(sta, f"Things({tid})/Datastreams/$ref")
    assert refs == [{"@iot.selfLink": f"{server.sta}/Datastreams({thing['ds']['@iot.id']})"}]
    assert one(sta, f"Datastreams({thing['ds']['@iot.id']})/Thing/$ref") == {
        "@iot.selfLink": f"{server.sta}/Things({tid})"}
    assert one(sta, f"Datastreams({thing['ds']['@iot.id']})/Thing/Locations")["value"][0]["name"].endswith("loc")


def test_ref_links_and_unlinks(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    loc = create(sta, "Locations", {"name": "extra", "description": "e", "encodingType": "application/geo+json",
                                    "location": {"type": "Point", "coordinates": [1, 2]}})
    r = sta.post(f"Things({tid})/Locations/$ref", json={"@iot.id": loc["@iot.id"]})
    assert r.status_code in (200, 201, 204)
    assert len(values(sta, f"Things({tid})/Locations")) == 2
    assert sta.delete(f"Things({tid})/Locations({loc['@iot.id']})/$ref").status_code == 200
    assert len(values(sta, f"Things({tid})/Locations")) == 1
    other = create(sta, "Sensors", {"name": "s2", "description": "d", "encodingType": "text/html", "metadata": "m"})
    ds = thing["ds"]["@iot.id"]
    assert sta.put(f"Datastreams({ds})/Sensor/$ref", json={"@iot.id": other["@iot.id"]}).status_code == 204
    assert one(sta, f"Datastreams({ds})/Sensor")["@iot.id"] == other["@iot.id"]


def test_data_array_read(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    doc = one(sta, f"Datastreams({ds})/Observations", **{"$resultFormat": "dataArray",
                                                         "$select": "result,phenomenonTime",
                                                         "$orderby": "phenomenonTime"})
    group = doc["value"][0]
    assert group["Datastream@iot.navigationLink"].endswith(f"/Datastreams({ds})")
    assert group["components"] == ["result", "phenomenonTime"]
    assert group["dataArray@iot.count"] == 5
    assert group["dataArray"][0] == [0, "2024-01-01T08:00:00Z"]


def test_create_observations_data_array(sta: httpx.Client, thing: dict, server: Any) -> None:
    ds = thing["ds"]["@iot.id"]
    body = [{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result", "parameters"],
             "dataArray@iot.count": 4,
             "dataArray": [["2024-03-01T00:00:00Z", 1, None], ["not a time", 2, None],
                           ["2024-03-01T00:02:00+01:00", 3, {"q": 1}], ["2024-03-01T00:03:00Z", 4]]}]
    r = sta.post("CreateObservations", json=body)
    assert r.status_code == 201, r.text
    links = r.json()
    assert links[1] == "error" and links[3] == "error"
    assert links[0].startswith(f"{server.sta}/Observations(") and links[2].startswith(f"{server.sta}/Observations(")
    got = sta.get(links[2]).json()
    assert got["result"] == 3 and got["phenomenonTime"] == "2024-02-29T23:02:00Z" and got["parameters"] == {"q": 1}
    r = sta.post("CreateObservations", json=[{"Datastream": {"@iot.id": 987654321}, "components": ["result"],
                                              "dataArray": [[1]]}])
    assert r.status_code == 400


# -- update and delete -------------------------------------------------------------------------------------
def test_patch_merge_json_patch_and_put(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    r = sta.patch(f"Things({tid})", json={"description": "patched", "properties": {"owner": "port"}})
    assert r.status_code == 200
    doc = one(sta, f"Things({tid})")
    assert doc["description"] == "patched" and doc["properties"] == {"owner": "port"} and doc["name"] == thing["name"]
    r = sta.patch(f"Things({tid})", content=b'[{"op": "replace", "path": "/name", "value": "renamed"},'
                                            b'{"op": "add", "path": "/properties/floors", "value": 9}]',
                  headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    doc = one(sta, f"Things({tid})")
    assert doc["name"] == "renamed" and doc["properties"] == {"owner": "port", "floors": 9}
    r = sta.put(f"Things({tid})", json={"@iot.id": tid, "name": "put", "description": "whole"})
    assert r.status_code == 200
    doc = one(sta, f"Things({tid})")
    assert doc["name"] == "put" and doc.get("properties") is None
    assert sta.put(f"Things({tid})", json={"name": "no description"}).status_code == 400
    assert sta.patch("Things(987654321)", json={"name": "x"}).status_code == 404
    assert sta.patch(f"Things({tid})", json={"name": 5}).status_code == 400


def test_patch_thing_locations_moves_it(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    loc = create(sta, "Locations", {"name": "new", "description": "n", "encodingType": "application/geo+json",
                                    "location": {"type": "Point", "coordinates": [3, 4]}})
    assert sta.patch(f"Things({tid})", json={"Locations": [{"@iot.id": loc["@iot.id"]}]}).status_code == 200
    assert [v["@iot.id"] for v in values(sta, f"Things({tid})/Locations")] == [loc["@iot.id"]]
    assert len(values(sta, f"Things({tid})/HistoricalLocations")) == 2


def test_delete_cascades(sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    ds = thing["ds"]["@iot.id"]
    obs = values(sta, f"Datastreams({ds})/Observations")
    loc = values(sta, f"Things({tid})/Locations")[0]
    assert sta.delete(f"Things({tid})").status_code == 200
    assert sta.get(f"Things({tid})").status_code == 404
    assert sta.get(f"Datastreams({ds})").status_code == 404
    assert sta.get(f"Observations({obs[0]['@iot.id']})").status_code == 404
    # Locations stay: they may serve other Things
    assert sta.get(f"Locations({loc['@iot.id']})").status_code == 200
    assert sta.delete(f"Things({tid})").status_code == 404


def test_delete_sensor_and_feature_cascade(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    obs = values(sta, f"Datastreams({ds})/Observations")[0]["@iot.id"]
    foi = one(sta, f"Observations({obs})/FeatureOfInterest")["@iot.id"]
    assert sta.delete(f"FeaturesOfInterest({foi})").status_code == 200
    assert sta.get(f"Observations({obs})").status_code == 404
    sensor = one(sta, f"Datastreams({ds})/Sensor")["@iot.id"]
    assert sta.delete(f"Sensors({sensor})").status_code == 200
    assert sta.get(f"Datastreams({ds})").status_code == 404


# -- batch -----------------------------------------------------------------------------------------------------
def test_batch_with_changesets(sta: httpx.Client, thing: dict) -> None:
    name = unique("batch")
    body = {"requests": [
        {"id": "1", "method": "post", "url": "Things", "body": {"name": name, "description": "b"}},
        {"id": "2", "method": "get", "url": f"Things?$filter=name eq '{name}'"},
        {"id": "3", "atomicityGroup": "g1", "method": "post", "url": "$1/Locations",
         "body": {"name": "bl", "description": "d", "encodingType": "application/geo+json",
                  "location": {"type": "Point", "coordinates": [1, 1]}}},
        {"id": "4", "atomicityGroup": "g1", "method": "patch", "url": "$1", "body": {"description": "changed"}},
        {"id": "5", "atomicityGroup": "g2", "method": "post", "url": "Things",
         "body": {"name": name + "-rolled-back", "description": "x"}},
        {"id": "6", "atomicityGroup": "g2", "method": "post", "url": "Things", "body": {"name": "no description"}},
    ]}
    r = sta.post("$batch", json=body)
    assert r.status_code == 200, r.text
    res = {x["id"]: x for x in r.json()["responses"]}
    assert res["1"]["status"] == 201 and "location" in res["1"]["headers"]
    assert res["2"]["status"] == 200 and len(res["2"]["body"]["value"]) == 1
    assert res["3"]["status"] == 201 and res["4"]["status"] == 200
    assert res["6"]["status"] == 400 and res["5"]["status"] >= 400
    tid = res["1"]["body"]["@iot.id"]
    assert one(sta, f"Things({tid})")["description"] == "changed"
    assert values(sta, "Things", **{"$filter": f"name eq '{name}-rolled-back'"}) == []
    assert sta.post("$batch", content=b"nope").status_code == 400


def test_deep_pages_continue_by_skiptoken(sta: httpx.Client, thing: dict) -> None:
    ds = thing["ds"]["@iot.id"]
    rows = [[f"2024-05-01T00:{i // 60:02d}:{i % 60:02d}Z", i] for i in range(250)]
    r = sta.post("CreateObservations", json=[{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                                              "dataArray": rows}])
    assert r.status_code == 201
    for order in ("phenomenonTime desc", "phenomenonTime", "result desc,id", None):
        params = {"$top": "40", "$filter": "phenomenonTime ge 2024-05-01T00:00:00Z"}
        if order:
            params["$orderby"] = order
        page = one(sta, f"Datastreams({ds})/Observations", **params)
        seen = [o["result"] for o in page["value"]]
        while "@iot.nextLink" in page:
            assert ("$skiptoken=" in page["@iot.nextLink"]) == (order != "result desc,id")
            page = sta.get(page["@iot.nextLink"]).json()
            seen += [o["result"] for o in page["value"]]
        expected = list(range(250))
        assert seen == (expected[::-1] if order and "desc" in order else expected), order
    assert sta.get("Observations", params={"$skiptoken": "garbage!"}).status_code == 400


def test_response_cache_is_never_stale(server: Any, sta: httpx.Client, thing: dict) -> None:
    tid = thing["thing"]["@iot.id"]
    first = sta.get(f"Things({tid})/Datastreams")
    second = sta.get(f"Things({tid})/Datastreams")
    assert first.json() == second.json()
    etag = second.headers["etag"]
    assert sta.get(f"Things({tid})/Datastreams", headers={"If-None-Match": etag}).status_code == 304
    # any write changes the answer at once
    assert sta.patch(f"Datastreams({thing['ds']['@iot.id']})", json={"name": "renamed"}).status_code == 200
    third = sta.get(f"Things({tid})/Datastreams", headers={"If-None-Match": etag})
    assert third.status_code == 200 and third.json()["value"][0]["name"] == "renamed"
    assert third.headers["etag"] != etag
    assert server.client.get("/health").json()["response_cache"]["hits"] >= 1


def test_multipart_batch(sta: httpx.Client, server: Any) -> None:
    name = unique("mp")
    boundary, cs = "batch_36522ad7", "changeset_77162fcd"
    thing = orjson.dumps({"name": name, "description": "multipart"}).decode()
    body = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"GET /v1.1/Things?$top=1 HTTP/1.1\r\nHost: x\r\n\r\n\r\n"
        f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"
        f"--{cs}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
        f"POST /v1.1/Things HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n{thing}\r\n"
        f"--{cs}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n"
        f"PATCH $1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n"
        '{"description": "patched in a changeset"}\r\n'
        f"--{cs}--\r\n"
        f"--{boundary}--\r\n"
    )
    r = sta.post("$batch", content=body.encode(), headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/mixed")
    text = r.text
    assert "HTTP/1.1 200 OK" in text and "HTTP/1.1 201 Created" in text and "Content-ID: 1" in text
    got = values(sta, "Things", **{"$filter": f"name eq '{name}'"})
    assert len(got) == 1 and got[0]["description"] == "patched in a changeset"
    bad = sta.post("$batch", content=b"--x\r\n", headers={"Content-Type": "multipart/mixed"})
    assert bad.status_code == 400
