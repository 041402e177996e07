"""The data steward's tools: a city declared in config.yml (sources, `sensors:`, `bridge:`) working end to
end through a running platform, `udp check`, and the messages bad configurations give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pyogrio
import pytest

from tests.conftest import DEMO_DATA, ROOT, TEST_DATA, start_server, stop_server, wait_until

MELBOURNE = DEMO_DATA / "pedestrian_sensor_locations.csv"
STADTTEILE = TEST_DATA / "cosi_two_stadtteile_epsg25832.json"
BIKES = DEMO_DATA / "ttareungyi_bike_stations.csv"


def _counters(tmp: Path, rows: int, rename: str | None = None, move: bool = False) -> Path:
    """The first Melbourne counters as their own CSV (optionally one renamed or moved)."""
    lines = MELBOURNE.read_text(encoding="utf-8").splitlines()
    body = lines[1:rows + 1]
    if rename:
        first = body[0].split(",")
        first[1] = rename
        body[0] = ",".join(first)
    if move:
        body[0] = body[0].replace("144.95449198", "144.95000000")
    path = tmp / "counters.csv"
    path.write_text("\n".join([lines[0], *body]) + "\n", encoding="utf-8")
    return path


CITY = """title: Steward test
collections:
  stadtteile:
    title: Stadtteile
    source: stadtteile.gml
  bikes:
    source: {bikes}
    x: longitude
    y: latitude
sensors:
  - things: counters.csv
    x: Longitude
    y: Latitude
    key: Location_ID
    name: "{{Sensor_Description}}"
    properties: {{sensor: "{{Sensor_Name}}"}}
    datastreams:
      - name: "pedestrians {{Location_ID}} total"
        observedProperty: pedestrian count
        unit: {{name: count, symbol: "{{count}}", definition: http://unitsofmeasure.org/ucum.html}}
        observationType: OM_CountObservation
bridge:
  - topic: city/pedestrians/{{sensor}}/count
    datastream: "pedestrians {{sensor}} total"
    result: $.count
    phenomenonTime: $.time
"""


def _city(tmp: Path) -> Path:
    gdf = pyogrio.read_dataframe(STADTTEILE).set_crs(25832, allow_override=True)
    pyogrio.write_dataframe(gdf, tmp / "stadtteile.gml", driver="GML")
    path = tmp / "config.yml"
    path.write_text(CITY.format(bikes=BIKES), encoding="utf-8")
    return path


def _things(url: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/v1.1/Things", params={"$top": "1000", "$expand": "Locations,Datastreams"}, timeout=30)
    return {t["properties"]["udpKey"]: t for t in r.json()["value"]}


def test_a_city_in_config_works_end_to_end(tmp_path: Path) -> None:
    config = _city(tmp_path)
    _counters(tmp_path, 3)
    store = f"sqlite:///{tmp_path / 'udp.db'}"
    srv = start_server(store, "sqlite", ["--config", str(config)])
    try:
        things = _things(srv.url)
        assert sorted(things) == ["0:24", "0:25", "0:36"]
        assert things["0:24"]["Datastreams"][0]["name"] == "pedestrians 24 total"
        assert things["0:24"]["Datastreams"][0]["unitOfMeasurement"]["symbol"] == "{count}"
        # a device message through the bridge: stored, and in the latest-value collection at once
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="steward-device")
        device.connect("127.0.0.1", srv.mqtt_port)  # type: ignore[arg-type]
        device.loop_start()
        device.publish("city/pedestrians/24/count", orjson.dumps({"count": 57, "time": "2026-11-27T08:00:00Z"}),
                       qos=1).wait_for_publish(10)
        device.loop_stop()
        obs = wait_until(lambda: httpx.get(f"{srv.url}/v1.1/Datastreams", params={
            "$filter": "name eq 'pedestrians 24 total'", "$expand": "Observations"}).json()["value"][0][
            "Observations"], 20, "the device message stored")
        assert [o["result"] for o in obs] == [57]
        latest = httpx.get(f"{srv.url}/ogcapi/collections/latest_values/items",
                           params={"filter": "name = 'pedestrians 24 total'"}).json()["features"][0]
        assert latest["properties"]["result"] == 57
        assert latest["geometry"]["coordinates"] == pytest.approx([144.95449198, -37.81887963])
        gml = httpx.get(f"{srv.url}/ogcapi/collections/stadtteile/items",
                        params={"crs": "http://www.opengis.net/def/crs/EPSG/0/25832"}).json()
        assert gml["numberMatched"] == 2
        assert httpx.get(f"{srv.url}/ogcapi/collections/bikes/items", params={"limit": 1}).json()[
            "numberMatched"] == 1541
    finally:
        stop_server(srv)
    # a restart creates nothing twice; a renamed and moved counter is updated, a new row is added
    _counters(tmp_path, 4, rename="Spencer St-Collins St (renamed)", move=True)
    srv = start_server(store, "sqlite", ["--config", str(config)])
    try:
        things = _things(srv.url)
        assert sorted(things) == ["0:24", "0:25", "0:36", "0:37"]
        assert things["0:24"]["name"] == "Spencer St-Collins St (renamed)"
        assert things["0:24"]["Locations"][0]["location"]["coordinates"][0] == pytest.approx(144.95)
        assert len(things["0:24"]["Datastreams"]) == 1
        ops = httpx.get(f"{srv.url}/v1.1/ObservedProperties", params={"$filter": "name eq 'pedestrian count'"})
        assert len(ops.json()["value"]) == 1
    finally:
        stop_server(srv)


def _udp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "udp.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_udp_check_reports_every_source(tmp_path: Path) -> None:
    config = _city(tmp_path)
    _counters(tmp_path, 3)
    ok = _udp("check", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert "collections.stadtteile" in ok.stdout and "EPSG:25832" in ok.stdout and "1,541" in ok.stdout
    assert "sensors[0]" in ok.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text(f"""collections:
  good:
    source: {BIKES}
  tm:
    source: {DEMO_DATA / 'seoul_municipalities.shp'}
  missing:
    source: nothere.gpkg
""", encoding="utf-8")
    out = _udp("check", "--config", str(bad))
    assert out.returncode == 1
    assert "FAILED" in out.stdout and "file not found" in out.stdout and "no EPSG code" in out.stdout
    assert "collections.good" in out.stdout and "1,541" in out.stdout


@pytest.mark.parametrize(("body", "message"), [
    ("title: [1]\n", "title: must be a string"),
    ("colections: {}\n", "colections: unknown key"),
    ("store: ${UDP_NOT_SET_ANYWHERE}\n", "environment variable UDP_NOT_SET_ANYWHERE is not set"),
    ("sensors:\n  - things: x.csv\n", "sensors[0]: needs `things` (the table) and `name`"),
    ("sensors:\n  - things: x.csv\n    name: n\n    datastreams:\n      - name: d\n",
     "datastreams[0].observedProperty"),
    ("collections:\n  a:\n    source: a.csv\n    x: lon\n", "`x` and `y` go together"),
    ("collections:\n  things:\n    source: a.csv\n", "taken by one of the platform's own collections"),
    ("collections:\n  a:\n    source: a.csv\n    encoding: klingon\n", "unknown text encoding"),
])
def test_bad_configs_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "config.yml").write_text(body, encoding="utf-8")
    out = _udp("check", "--config", str(tmp_path / "config.yml"))
    assert out.returncode == 1
    assert message in out.stderr, out.stderr
