"""`access: internal`: a collection and `sensors:` Things that only the read role sees, over HTTP (lists,
single entities, `$expand`, `$batch`, feature collections) and never announced over MQTT."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DEMO_DATA, Server, serve_on
from tests.test_mqtt import Listener, wait_subscribed

VIEWER = ("viewer", "viewer-password")
WRITER = ("ingest", "ingest-password")
ADMIN = ("operator", "operator-password")  # sees which topics have subscribers (/health?subscribed=)
CONFIG = f"""title: Access test
auth:
  users:
    - name: viewer
      password: viewer-password
      roles: [read]
    - name: ingest
      password: ingest-password
      roles: [write]
    - name: operator
      password: operator-password
      roles: [admin]
collections:
  bikes:
    source: {DEMO_DATA / 'ttareungyi_bike_stations.csv'}
    x: longitude
    y: latitude
  cctv:
    source: {DEMO_DATA / 'gangnam_cctv_locations.csv'}
    x: longitude
    y: latitude
    access: internal
sensors:
  - things: public.csv
    x: lon
    y: lat
    key: id
    name: "public {{id}}"
    datastreams:
      - name: "count {{id}}"
        observedProperty: count
        unit: {{name: count, symbol: "{{count}}", definition: ucum}}
        observationType: OM_CountObservation
  - things: internal.csv
    x: lon
    y: lat
    key: id
    name: "internal {{id}}"
    access: internal
    datastreams:
      - name: "count {{id}}"
        observedProperty: count
        unit: {{name: count, symbol: "{{count}}", definition: ucum}}
        observationType: OM_CountObservation
bridge:
  - topic: city/{{sensor}}/count
    datastream: "count {{sensor}}"
    result: $.count
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "public.csv").write_text("id,lon,lat\npub1,127.03,37.50\n", encoding="utf-8")
    (tmp / "internal.csv").write_text("id,lon,lat\nsec1,127.04,37.51\n", encoding="utf-8")
    (tmp / "config.yml").write_text(CONFIG, encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml")])


def names(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {e["name"] for e in r.json()["value"]}


def test_internal_things_are_hidden_without_the_read_role(city: Server) -> None:
    sta = httpx.Client(base_url=city.sta + "/", timeout=30)
    listener = Listener("127.0.0.1", city.mqtt_port, ["v1.1/Observations"])  # type: ignore[arg-type]
    wait_subscribed(city.url, ["v1.1/Observations"], ADMIN)
    # who subscribes to what is the operator's to see
    assert httpx.get(f"{city.url}/health", params={"subscribed": "v1.1/Observations"}).status_code == 403
    assert httpx.get(f"{city.url}/health", params={"subscribed": "v1.1/Observations"}, auth=VIEWER).status_code == 403
    streams = {s["name"]: s["@iot.selfLink"] for s in sta.get("Datastreams", auth=VIEWER).json()["value"]}
    assert set(streams) == {"count pub1", "count sec1"}
    for name, value in (("count sec1", 41), ("count pub1", 42)):
        assert sta.post(streams[name] + "/Observations", json={"result": value}, auth=WRITER).status_code == 201
    # only the public Observation is announced on the broker, which anyone may read
    first = listener.wait("v1.1/Observations")
    assert first["result"] == 42
    time.sleep(1.0)  # what has not come with the public one does not come later
    assert listener.messages.empty() and not listener.backlog
    listener.close()
    # HTTP: lists, single entities, navigation, $expand, $batch
    assert names(sta.get("Things")) == {"public pub1"}
    assert names(sta.get("Things", auth=VIEWER)) == {"public pub1", "internal sec1"}
    assert names(sta.get("Things", auth=WRITER)) == {"public pub1", "internal sec1"}  # write includes read
    assert names(sta.get("Datastreams")) == {"count pub1"}
    assert [o["result"] for o in sta.get("Observations").json()["value"]] == [42]
    assert sorted(o["result"] for o in sta.get("Observations", auth=VIEWER).json()["value"]) == [41, 42]
    inner = sta.get("Things", params={"$filter": "name eq 'internal sec1'"}, auth=VIEWER).json()["value"][0]
    assert sta.get(inner["@iot.selfLink"]).status_code == 404
    assert sta.get(inner["@iot.selfLink"], auth=VIEWER).status_code == 200
    assert sta.get(inner["@iot.selfLink"] + "/Datastreams").json()["value"] == []
    assert sta.get(streams["count sec1"] + "/Observations").json()["value"] == []
    expanded = sta.get("Locations", params={"$expand": "Things"}).json()["value"]
    assert [t["name"] for loc in expanded for t in loc["Things"]] == ["public pub1"]
    things = sta.get("Things", params={"$expand": "Datastreams/Observations"}).json()["value"]
    assert [o["result"] for t in things for d in t["Datastreams"] for o in d["Observations"]] == [42]
    batch = {"requests": [{"id": "1", "method": "get", "url": "Things"}]}
    assert sta.post("$batch", json=batch).status_code == 401  # $batch counts as a write, whatever it holds
    got_batch = sta.post("$batch", json=batch, auth=WRITER).json()["responses"][0]["body"]["value"]
    assert {t["name"] for t in got_batch} == {"public pub1", "internal sec1"}
    # OGC API Features: the internal collection and the internal Things' features
    ogc = httpx.Client(base_url=city.url + "/ogcapi", timeout=30)
    public = {c["id"] for c in ogc.get("/collections").json()["collections"]}
    assert "bikes" in public and "cctv" not in public
    assert "cctv" in {c["id"] for c in ogc.get("/collections", auth=VIEWER).json()["collections"]}
    assert ogc.get("/collections/cctv").status_code == 404
    assert ogc.get("/collections/cctv/items").status_code == 404
    assert ogc.get("/collections/cctv/items", params={"limit": 1}, auth=VIEWER).json()["numberMatched"] == 1763
    things_fc = ogc.get("/collections/things/items").json()
    assert {f["properties"]["name"] for f in things_fc["features"]} == {"public pub1"}
    things_fc = ogc.get("/collections/things/items", auth=VIEWER).json()
    assert {f["properties"]["name"] for f in things_fc["features"]} == {"public pub1", "internal sec1"}
    latest = ogc.get("/collections/latest_values/items").json()
    assert {f["properties"]["name"] for f in latest["features"]} == {"count pub1"}


def test_wms_and_wfs_keep_the_same_rules(city: Server) -> None:
    """An internal collection is no layer for the public and one for the read role; internal Things stay out of
    the public layers."""
    from ows import mapserver

    if mapserver.mapserv() is None:
        pytest.skip("MapServer is not installed (Debian: cgi-mapserver)")
    caps = {"SERVICE": "WMS", "REQUEST": "GetCapabilities", "VERSION": "1.3.0"}
    anonymous = httpx.get(f"{city.url}/wms", params=caps, timeout=60)
    assert b"<Name>bikes</Name>" in anonymous.content and b"<Name>cctv</Name>" not in anonymous.content
    assert anonymous.headers["cache-control"] == "no-cache"
    viewer = httpx.get(f"{city.url}/wms", params=caps, auth=VIEWER, timeout=60)
    assert b"<Name>cctv</Name>" in viewer.content and viewer.headers["cache-control"] == "private, no-cache"
    getmap = {"SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": "cctv", "STYLES": "",
              "CRS": "EPSG:4326", "BBOX": "37.45,127.0,37.55,127.1", "WIDTH": "64", "HEIGHT": "64",
              "FORMAT": "image/png"}
    assert b"LayerNotDefined" in httpx.get(f"{city.url}/wms", params=getmap, timeout=60).content
    assert httpx.get(f"{city.url}/wms", params=getmap, auth=VIEWER, timeout=60).headers["content-type"] == "image/png"
    feature = {"SERVICE": "WFS", "REQUEST": "GetFeature", "VERSION": "2.0.0", "TYPENAMES": "cctv",
               "OUTPUTFORMAT": "geojson", "COUNT": "5"}
    assert httpx.get(f"{city.url}/wfs", params=feature, timeout=60).status_code == 400
    assert len(httpx.get(f"{city.url}/wfs", params=feature, auth=VIEWER, timeout=60).json()["features"]) == 5
    things = httpx.get(f"{city.url}/wfs", params=feature | {"TYPENAMES": "things", "COUNT": "10"}, timeout=60)
    assert {f["properties"]["name"] for f in things.json()["features"]} == {"public pub1"}


def test_a_query_shape_seen_first_by_one_reader_does_not_leak_to_another(city: Server) -> None:
    sta = httpx.Client(base_url=city.sta + "/", timeout=30)
    for first, second in ((VIEWER, None), (None, VIEWER)):
        shape = {"$expand": f"Datastreams($top={7 if first else 8};$select=name)", "$select": "name"}
        a = sta.get("ObservedProperties", params=shape, auth=first).json()["value"]
        b = sta.get("ObservedProperties", params=shape, auth=second).json()["value"]
        seen = {d["name"] for op in (a if first else b) for d in op["Datastreams"]}
        anonymous = {d["name"] for op in (b if first else a) for d in op["Datastreams"]}
        assert seen == {"count pub1", "count sec1"} and anonymous == {"count pub1"}
    r = sta.get("Things")
    assert "Authorization" in r.headers["vary"]
    r = httpx.get(f"{city.url}/ogcapi/collections/cctv/items", params={"limit": 1}, auth=VIEWER)
    assert r.headers["cache-control"].startswith("private") and "Authorization" in r.headers["vary"]
