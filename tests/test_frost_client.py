"""The platform driven by the real FROST Python client (`frost_sta_client`), as a city's scripts would.

The client has habits a server must cope with: it embeds the whole linked Datastream in a new
Observation's body, sends datetimes with `+00:00`, encodes `$` as `%24` and spaces as `+`, orders with
an upper-case `DESC`, PATCHes with JSON Patch, PUTs the entity with its `@iot.id` in the body, posts
dataArrays to `CreateObservations` expecting a JSON array of selfLinks, and follows nextLinks while
iterating a list.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import frost_sta_client as fsc
import httpx
import pytest
import requests
from frost_sta_client.model.ext.data_array_value import DataArrayValue
from frost_sta_client.utils import transform_entity_to_json_dict

from tests.conftest import Server, unique

MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
UTC = dt.UTC

# furl, which the client builds URLs with, warns about its own deprecated API
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:furl")


@pytest.fixture
def service(server: Server) -> fsc.SensorThingsService:
    """A FROST client pointed at the server's SensorThings root."""
    return fsc.SensorThingsService(server.sta)


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    """A plain HTTP client for checking what the FROST client wrote."""
    with httpx.Client(base_url=server.sta + "/", timeout=60) as client:
        yield client


def _station(name: str, streams: tuple[str, ...] = ("air_temperature", "humidity")) -> fsc.Thing:
    """A Thing with a Location and one Datastream (with its Sensor and ObservedProperty) per stream."""
    location = fsc.Location(name=f"{name} site", description="on the roof of the town hall",
                            encoding_type="application/geo+json",
                            location={"type": "Point", "coordinates": [9.9937, 53.5511]})
    datastreams = []
    for stream in streams:
        sensor = fsc.Sensor(name=f"{name} {stream} sensor", description="a weather station sensor",
                            encoding_type="application/pdf", metadata="https://example.org/datasheet.pdf")
        prop = fsc.ObservedProperty(name=stream, definition=f"https://example.org/def/{stream}",
                                    description=f"the {stream.replace('_', ' ')}")
        unit = fsc.UnitOfMeasurement(name="degree Celsius", symbol="°C",
                                     definition="http://unitsofmeasure.org/ucum.html#para-30")
        datastreams.append(fsc.Datastream(name=f"{name} {stream}", description=f"{stream} at {name}",
                                          observation_type=MEASUREMENT, unit_of_measurement=unit,
                                          properties={"stream": stream}, sensor=sensor, observed_property=prop))
    return fsc.Thing(name=name, description="a weather station", properties={"owner": "city", "floors": 3},
                     locations=[location], datastreams=datastreams)


def _create_station(service: fsc.SensorThingsService, streams: tuple[str, ...] = ("air_temperature",
                                                                                    "humidity")) -> fsc.Thing:
    thing = _station(unique("station"), streams)
    service.create(thing)
    return thing


def _datastreams(service: fsc.SensorThingsService, thing: fsc.Thing) -> dict[str, fsc.Datastream]:
    found = service.things().find(thing.id).get_datastreams().query().list()
    return {d.properties["stream"]: d for d in found}


def _status(exc: requests.HTTPError) -> int:
    assert exc.response is not None
    return exc.response.status_code


def test_create_thing_with_locations_and_datastreams(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    assert isinstance(thing.id, int)
    assert thing.service is service

    found = service.things().find(thing.id)
    assert found.name == thing.name
    assert found.description == "a weather station"
    assert found.properties == {"owner": "city", "floors": 3}
    assert found.self_link == f"{service.url.url}/Things({thing.id})"

    locations = found.get_locations().query().list().entities
    assert [(loc.name, loc.encoding_type, loc.location) for loc in locations] == [
        (f"{thing.name} site", "application/geo+json", {"type": "Point", "coordinates": [9.9937, 53.5511]})]

    streams = _datastreams(service, thing)
    assert sorted(streams) == ["air_temperature", "humidity"]
    temp = streams["air_temperature"]
    assert temp.name == f"{thing.name} air_temperature"
    assert temp.observation_type == MEASUREMENT
    assert (temp.unit_of_measurement.name, temp.unit_of_measurement.symbol) == ("degree Celsius", "°C")

    doc = api.get(f"Datastreams({temp.id})", params={"$expand": "Sensor,ObservedProperty,Thing($select=id)"}).json()
    assert doc["Sensor"]["name"] == f"{thing.name} air_temperature sensor"
    assert doc["Sensor"]["metadata"] == "https://example.org/datasheet.pdf"
    assert doc["ObservedProperty"]["definition"] == "https://example.org/def/air_temperature"
    assert doc["Thing"] == {"@iot.id": thing.id}
    # a Thing created with a Location has its first HistoricalLocation
    hls = api.get(f"Things({thing.id})/HistoricalLocations", params={"$expand": "Locations"}).json()["value"]
    assert len(hls) == 1
    assert [loc["@iot.id"] for loc in hls[0]["Locations"]] == [locations[0].id]


def test_create_observation_with_embedded_datastream(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    temp = _datastreams(service, thing)["air_temperature"]

    obs = fsc.Observation(phenomenon_time=dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC), result=21.5,
                          result_time=dt.datetime(2024, 3, 1, 12, 0, 5, tzinfo=UTC), datastream=temp,
                          parameters={"quality": "checked"})
    body = transform_entity_to_json_dict(obs)
    # what the client really sends: the whole Datastream, and +00:00 times
    assert body["Datastream"]["@iot.id"] == temp.id
    assert body["Datastream"]["name"] == temp.name
    assert body["Datastream"]["unitOfMeasurement"]["symbol"] == "°C"
    assert body["phenomenonTime"] == "2024-03-01T12:00:00+00:00"
    service.create(obs)
    assert isinstance(obs.id, int)

    interval = fsc.Observation(phenomenon_time="2024-03-01T12:00:00+01:00/2024-03-01T12:15:00+01:00", result=7,
                               datastream=temp)
    assert transform_entity_to_json_dict(interval)["phenomenonTime"] == \
        "2024-03-01T12:00:00+01:00/2024-03-01T12:15:00+01:00"
    service.create(interval)

    doc = api.get(f"Observations({obs.id})").json()
    assert doc["phenomenonTime"] == "2024-03-01T12:00:00Z"
    assert doc["resultTime"] == "2024-03-01T12:00:05Z"
    assert doc["result"] == 21.5
    assert doc["parameters"] == {"quality": "checked"}
    assert api.get(f"Observations({interval.id})").json()["phenomenonTime"] == \
        "2024-03-01T11:00:00Z/2024-03-01T11:15:00Z"
    assert api.get(f"Observations({obs.id})/Datastream").json()["@iot.id"] == temp.id
    # the embedded Datastream was a link: it was not changed, and no second one was made
    assert api.get(f"Things({thing.id})/Datastreams", params={"$count": "true"}).json()["@iot.count"] == 2
    stream = api.get(f"Datastreams({temp.id})").json()
    assert stream["name"] == temp.name
    assert stream["phenomenonTime"] == "2024-03-01T11:00:00Z/2024-03-01T12:00:00Z"
    # a FeatureOfInterest came from the Thing's Location
    foi = api.get(f"Observations({obs.id})/FeatureOfInterest").json()
    assert foi["feature"] == {"type": "Point", "coordinates": [9.9937, 53.5511]}

    # read back through the client, which parses the Z times
    back = service.observations().find(obs.id)
    assert back.result == 21.5
    assert back.phenomenon_time == "2024-03-01T12:00:00Z"


def test_query_filter_expand_orderby(service: fsc.SensorThingsService) -> None:
    thing = _create_station(service)
    temp = _datastreams(service, thing)["air_temperature"]
    start = dt.datetime(2024, 5, 1, tzinfo=UTC)
    for i, value in enumerate([3, 8, 1, 9, 4]):
        service.create(fsc.Observation(phenomenon_time=start + dt.timedelta(hours=i), result=value, datastream=temp))

    # orderby() sends `phenomenonTime DESC`; filter() is sent with `+` for spaces and `%24filter`
    query = temp.get_observations().query().filter("result gt 2 and phenomenonTime lt 2024-05-01T04:00:00Z")
    found = query.orderby("phenomenonTime").list()
    assert [o.result for o in found] == [9, 8, 3]
    assert [o.phenomenon_time for o in found] == ["2024-05-01T03:00:00Z", "2024-05-01T01:00:00Z",
                                                  "2024-05-01T00:00:00Z"]
    ascending = temp.get_observations().query().orderby("result", "ASC").select("result", "id").list()
    assert [o.result for o in ascending] == [1, 3, 4, 8, 9]
    assert all(o.phenomenon_time is None for o in ascending)

    # a time literal with an offset, which the client's `+` encoding must not garble
    later = temp.get_observations().query().filter("phenomenonTime ge 2024-05-01T05:00:00+02:00").orderby(
        "phenomenonTime", "asc").list()
    assert [o.result for o in later] == [9, 4]

    counted = service.things().query().filter(f"name eq '{thing.name}'").count().list()
    assert counted.count == 1
    things = service.things().query().filter(f"name eq '{thing.name}'").expand(
        "Locations,Datastreams($filter=properties/stream eq 'air_temperature';"
        "$expand=Observations($top=2;$orderby=phenomenonTime desc),Sensor,ObservedProperty)").list()
    assert len(things.entities) == 1
    got = things.entities[0]
    assert got.id == thing.id
    assert [loc.name for loc in got.locations] == [f"{thing.name} site"]
    streams = got.datastreams.entities
    assert [d.id for d in streams] == [temp.id]
    assert streams[0].sensor.name == f"{thing.name} air_temperature sensor"
    assert streams[0].observed_property.name == "air_temperature"
    assert [o.result for o in streams[0].observations.entities] == [4, 9]
    assert streams[0].observations.next_link is not None
    assert "%24skip=2" in streams[0].observations.next_link or "$skip=2" in streams[0].observations.next_link

    # a filter across navigation, as the client spells it
    by_sensor = service.observations().query().filter(
        f"Datastream/Sensor/name eq '{thing.name} air_temperature sensor' and result ge 8").orderby("result").list()
    assert [o.result for o in by_sensor] == [9, 8]


def test_feature_of_interest_and_location_links(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service, streams=("air_temperature",))
    temp = _datastreams(service, thing)["air_temperature"]
    feature = fsc.FeatureOfInterest(name=unique("lake"), description="the lake at the station",
                                    encoding_type="application/geo+json",
                                    feature={"type": "Point", "coordinates": [10.0034, 53.5571]})
    first = fsc.Observation(phenomenon_time="2024-04-01T00:00:00Z", result=4.5, datastream=temp,
                            feature_of_interest=feature)
    service.create(first)  # a new FeatureOfInterest inside the Observation
    [made] = service.features_of_interest().query().filter(f"name eq '{feature.name}'").list().entities
    second = fsc.Observation(phenomenon_time="2024-04-01T01:00:00Z", result=4.7, datastream=temp,
                             feature_of_interest=made)
    assert transform_entity_to_json_dict(second)["FeatureOfInterest"]["name"] == feature.name  # sent whole
    service.create(second)
    got = api.get(f"FeaturesOfInterest({made.id})/Observations", params={"$orderby": "phenomenonTime"}).json()
    assert [o["@iot.id"] for o in got["value"]] == [first.id, second.id]
    assert api.get("FeaturesOfInterest", params={"$filter": f"name eq '{feature.name}'", "$count": "true"}
                   ).json()["@iot.count"] == 1

    # a new Location that names the Thing (the client sends the whole Thing, as a link) is where it is now
    found = service.things().find(thing.id)
    quay = fsc.Location(name=unique("quay"), description="moved to the quay", encoding_type="application/geo+json",
                        location={"type": "Point", "coordinates": [9.97, 53.54]}, things=[found])
    assert transform_entity_to_json_dict(quay)["Things"][0]["name"] == thing.name
    service.create(quay)
    assert quay.name in [loc.name for loc in found.get_locations().query().list()]
    assert api.get("Things", params={"$filter": f"name eq '{thing.name}'", "$count": "true"}).json()["@iot.count"] == 1
    history = found.get_historical_locations().query().expand("Locations").orderby("time", "ASC").list().entities
    assert len(history) == 2
    assert [loc.name for loc in history[0].locations] == [f"{thing.name} site"]
    assert quay.name in [loc.name for loc in history[1].locations]


def test_patch_sends_json_patch(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    service.patch(thing, [
        {"op": "replace", "path": "/name", "value": thing.name + " (renamed)"},
        {"op": "add", "path": "/properties/height", "value": 12.5},
        {"op": "remove", "path": "/properties/floors"},
    ])
    doc = api.get(f"Things({thing.id})").json()
    assert doc["name"] == thing.name + " (renamed)"
    assert doc["description"] == "a weather station"
    assert doc["properties"] == {"owner": "city", "height": 12.5}

    temp = _datastreams(service, thing)["air_temperature"]
    service.create(fsc.Observation(phenomenon_time="2024-06-01T00:00:00Z", result=1, datastream=temp))
    service.patch(temp, [{"op": "replace", "path": "/unitOfMeasurement/symbol", "value": "K"},
                         {"op": "replace", "path": "/unitOfMeasurement/name", "value": "kelvin"}])
    stream = api.get(f"Datastreams({temp.id})").json()
    assert stream["unitOfMeasurement"] == {"name": "kelvin", "symbol": "K",
                                           "definition": "http://unitsofmeasure.org/ucum.html#para-30"}
    # the server-kept time range survives a JSON Patch that does not touch it
    assert stream["phenomenonTime"] == "2024-06-01T00:00:00Z/2024-06-01T00:00:00Z"
    assert stream["description"] == temp.description

    # a failing `test` operation changes nothing and is a 400
    with pytest.raises(requests.HTTPError) as info:
        service.patch(thing, [{"op": "test", "path": "/name", "value": "something else"},
                              {"op": "replace", "path": "/name", "value": "never"}])
    assert _status(info.value) == 400
    assert api.get(f"Things({thing.id})").json()["name"] == thing.name + " (renamed)"


def test_update_puts_the_entity(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    found = service.things().find(thing.id)
    found.name = thing.name + " v2"
    found.description = "moved indoors"
    found.properties = {"owner": "utility"}
    assert transform_entity_to_json_dict(found)["@iot.id"] == thing.id  # the client puts the id in the body
    service.update(found)
    doc = api.get(f"Things({thing.id})").json()
    assert (doc["name"], doc["description"], doc["properties"]) == (thing.name + " v2", "moved indoors",
                                                                     {"owner": "utility"})
    # PUT replaces the entity, not its links
    assert api.get(f"Things({thing.id})/Locations", params={"$count": "true"}).json()["@iot.count"] == 1

    temp = _datastreams(service, thing)["air_temperature"]
    obs = fsc.Observation(phenomenon_time="2024-07-01T10:00:00Z", result=5, datastream=temp)
    service.create(obs)
    again = service.observations().find(obs.id)
    again.result = 6
    again.result_time = "2024-07-01T10:00:30+00:00"
    service.update(again)
    doc = api.get(f"Observations({obs.id})", params={"$expand": "Datastream($select=id)"}).json()
    assert doc["result"] == 6
    assert doc["phenomenonTime"] == "2024-07-01T10:00:00Z"
    assert doc["resultTime"] == "2024-07-01T10:00:30Z"
    assert doc["Datastream"] == {"@iot.id": temp.id}

    # a Datastream read back (with its server-kept phenomenonTime and resultTime) can be PUT again
    stream = service.datastreams().find(temp.id)
    assert stream.phenomenon_time == "2024-07-01T10:00:00Z/2024-07-01T10:00:00Z"
    stream.description = "calibrated"
    service.update(stream)
    doc = api.get(f"Datastreams({temp.id})", params={"$expand": "Thing($select=id)"}).json()
    assert doc["description"] == "calibrated"
    assert doc["name"] == temp.name
    assert doc["unitOfMeasurement"]["symbol"] == "°C"
    assert doc["Thing"] == {"@iot.id": thing.id}
    assert doc["resultTime"] == "2024-07-01T10:00:30Z/2024-07-01T10:00:30Z"


def test_update_of_the_created_object(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    # the object the client created still holds its nested Location and Datastreams, without ids:
    # PUTting it would make them again, so the server refuses it with a 400 and changes nothing
    thing = _create_station(service)
    thing.name = thing.name + " renamed"
    body = transform_entity_to_json_dict(thing)
    assert "@iot.id" not in body["Datastreams"][0]
    with pytest.raises(requests.HTTPError) as info:
        service.update(thing)
    assert _status(info.value) == 400
    assert "Datastreams" in info.value.response.json()["message"]
    doc = api.get(f"Things({thing.id})", params={"$expand": "Locations,Datastreams"}).json()
    assert doc["name"] == thing.name.removesuffix(" renamed")
    assert len(doc["Locations"]) == 1 and len(doc["Datastreams"]) == 2
    # with the entities it links named by id, the same object can be PUT
    thing.locations = [fsc.Location(id=doc["Locations"][0]["@iot.id"])]
    thing.datastreams = [fsc.Datastream(id=d["@iot.id"]) for d in doc["Datastreams"]]
    service.update(thing)
    doc = api.get(f"Things({thing.id})", params={"$expand": "Locations,Datastreams"}).json()
    assert doc["name"] == thing.name
    assert len(doc["Locations"]) == 1 and len(doc["Datastreams"]) == 2


def test_delete(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    streams = _datastreams(service, thing)
    temp = streams["air_temperature"]
    first = fsc.Observation(phenomenon_time="2024-08-01T00:00:00Z", result=1, datastream=temp)
    second = fsc.Observation(phenomenon_time="2024-08-01T01:00:00Z", result=2, datastream=temp)
    service.create(first)
    service.create(second)

    service.delete(first)
    with pytest.raises(requests.HTTPError) as info:
        service.observations().find(first.id)
    assert _status(info.value) == 404
    assert [o.id for o in temp.get_observations().query().list()] == [second.id]

    service.delete(thing)
    with pytest.raises(requests.HTTPError) as info:
        service.things().find(thing.id)
    assert _status(info.value) == 404
    for stream in streams.values():  # the Thing's Datastreams and their Observations went with it
        assert api.get(f"Datastreams({stream.id})").status_code == 404
    assert api.get(f"Observations({second.id})").status_code == 404
    with pytest.raises(requests.HTTPError) as info:
        service.delete(thing)
    assert _status(info.value) == 404


def _data_array(stream: fsc.Datastream, rows: list[tuple[str, object]]) -> fsc.DataArrayDocument:
    dav = DataArrayValue()
    dav.datastream = stream
    dav.components = {DataArrayValue.Property.PHENOMENON_TIME, DataArrayValue.Property.RESULT,
                      DataArrayValue.Property.RESULT_TIME}
    for when, result in rows:
        dav.add_observation(fsc.Observation(phenomenon_time=when, result=result, result_time=when, datastream=stream))
    doc = fsc.DataArrayDocument()
    doc.add_data_array_value(dav)
    return doc


def test_create_observations_data_array(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service)
    streams = _datastreams(service, thing)
    temp, humidity = streams["air_temperature"], streams["humidity"]

    doc = _data_array(temp, [("2024-09-01T00:00:00Z", 10.5), ("2024-09-01T00:10:00Z", 11),
                             ("2024-09-01T00:20:00+02:00", 12.5)])
    dav2 = _data_array(humidity, [("2024-09-01T00:00:00Z", 80)]).value[0]
    doc.add_data_array_value(dav2)
    assert transform_entity_to_json_dict(doc.value[0])["components"] == ["phenomenonTime", "result", "resultTime"]
    created = service.observations().create(doc)
    links = [o.self_link for o in created]
    assert len(links) == 4
    assert all(link.startswith(f"{service.url.url}/Observations(") for link in links)

    rows = [api.get(link).json() for link in links]
    assert [(r["phenomenonTime"], r["result"], r["resultTime"]) for r in rows] == [
        ("2024-09-01T00:00:00Z", 10.5, "2024-09-01T00:00:00Z"),
        ("2024-09-01T00:10:00Z", 11, "2024-09-01T00:10:00Z"),
        ("2024-08-31T22:20:00Z", 12.5, "2024-08-31T22:20:00Z"),
        ("2024-09-01T00:00:00Z", 80, "2024-09-01T00:00:00Z"),
    ]
    assert [api.get(link + "/Datastream").json()["@iot.id"] for link in links] == [temp.id] * 3 + [humidity.id]
    assert api.get(f"Datastreams({temp.id})").json()["phenomenonTime"] == \
        "2024-08-31T22:20:00Z/2024-09-01T00:10:00Z"

    # the same body as the client sends it, checked for the status and shape the client relies on
    body = [transform_entity_to_json_dict(_data_array(humidity, [("2024-09-02T00:00:00Z", 81)]).value[0])]
    res = api.post("CreateObservations", json=body)
    assert res.status_code == 201
    out = res.json()
    assert isinstance(out, list) and len(out) == 1 and out[0].startswith(f"{service.url.url}/Observations(")

    # and read back as a dataArray
    read = api.get(f"Datastreams({humidity.id})/Observations",
                   params={"$resultFormat": "dataArray", "$select": "result,phenomenonTime",
                           "$orderby": "phenomenonTime"}).json()
    assert read["value"][0]["components"] == ["result", "phenomenonTime"]
    assert read["value"][0]["dataArray"] == [[80, "2024-09-01T00:00:00Z"], [81, "2024-09-02T00:00:00Z"]]


def test_list_follows_next_links(service: fsc.SensorThingsService, api: httpx.Client) -> None:
    thing = _create_station(service, streams=("air_temperature",))
    temp = _datastreams(service, thing)["air_temperature"]
    start = dt.datetime(2024, 10, 1, tzinfo=UTC)
    rows = [((start + dt.timedelta(minutes=i)).isoformat(), i) for i in range(23)]
    created = service.observations().create(_data_array(temp, rows))
    assert len(created) == 23

    # $top smaller than the set: iterating the list fetches every nextLink
    listing = temp.get_observations().query().top(5).filter("result ge 2").orderby("phenomenonTime", "ASC").list()
    assert len(listing.entities) == 5
    assert listing.next_link is not None
    assert [o.result for o in listing] == list(range(2, 23))
    assert len(listing.entities) == 21
    assert listing.next_link is None

    # nextLinks keep $select, a nested $expand and a time literal with a `+` offset intact
    paged = temp.get_observations().query().filter("phenomenonTime ge 2024-10-01T02:05:00+02:00") \
        .select("result", "id", "Datastream").expand("Datastream($select=name,id)").orderby("result", "asc") \
        .top(4).list()
    got = list(paged)
    assert [o.result for o in got] == list(range(5, 23))
    assert {o.datastream.name for o in got} == {temp.name}
    assert {o.datastream.id for o in got} == {temp.id}
    assert all(o.phenomenon_time is None for o in got)

    # descending, with a count, from the Observations set (the filter keeps it to this station)
    desc = service.observations().query().filter(f"Datastream/@iot.id eq {temp.id}").orderby("phenomenonTime") \
        .count().top(4).list()
    assert desc.count == 23
    assert [o.result for o in desc] == list(range(22, -1, -1))

    # Things too: ten stations with a shared prefix, three a page
    prefix = unique("paging")
    for i in range(10):
        service.create(fsc.Thing(name=f"{prefix}-{i:02d}", description="paged", properties={"i": i}))
    names = [t.name for t in service.things().query().filter(f"startswith(name, '{prefix}')").orderby("name", "asc")
             .top(3).list()]
    assert names == [f"{prefix}-{i:02d}" for i in range(10)]
    # and the nextLink the server wrote is one the client followed: it keeps the filter and the order
    page = api.get("Things", params={"$filter": f"startswith(name, '{prefix}')", "$orderby": "name DESC",
                                     "$top": "3"}).json()
    assert [t["name"] for t in page["value"]] == [f"{prefix}-09", f"{prefix}-08", f"{prefix}-07"]
    nxt = httpx.get(page["@iot.nextLink"]).json()
    assert [t["name"] for t in nxt["value"]] == [f"{prefix}-06", f"{prefix}-05", f"{prefix}-04"]
