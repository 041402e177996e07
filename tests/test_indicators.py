"""District indicators with known inputs: sensors in two Seoul districts, readings published over MQTT,
and the aggregates the feature collections and the SensorThings Datastreams give."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import DEMO_DATA, Server, serve_on, wait_until

GANGNAM = [(127.0473, 37.5172), (127.0495, 37.5045)]  # two sensors in Gangnam-gu
JONGNO = (126.9790, 37.5900)  # one in Jongno-gu
DISTRICTS = f"""collections:
  districts:
    source: {DEMO_DATA / 'seoul_municipalities.shp'}
    encoding: cp949
    crs: EPSG:5174
    id: code
"""  # Seoul's 25 districts
CONFIG = f"""title: Indicators test
{DISTRICTS}sensors:
  - things: sensors.csv
    x: lon
    y: lat
    key: id
    name: "air {{id}}"
    datastreams:
      - name: "PM10 {{id}}"
        observedProperty: PM10
        unit: {{name: microgram per cubic metre, symbol: ug/m3, definition: http://unitsofmeasure.org}}
bridge:
  - topic: air/{{station}}/pm10
    datastream: "PM10 {{station}}"
    result: $.value
    phenomenonTime: $.time
indicators:
  pm10-mean:
    title: Mean PM10 per district, last hour
    areas: districts
    observedProperty: PM10
    aggregate: mean
    window: PT1H
  pm10-max:
    areas: districts
    observedProperty: PM10
    aggregate: max
    window: PT1H
  pm10-count:
    areas: districts
    observedProperty: PM10
    aggregate: count
    window: PT1H
  pm10-latest:
    observedProperty: PM10
    aggregate: latest
    window: P1D
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("indicators")
    rows = ["id,lon,lat", f"g1,{GANGNAM[0][0]},{GANGNAM[0][1]}", f"g2,{GANGNAM[1][0]},{GANGNAM[1][1]}",
            f"j1,{JONGNO[0]},{JONGNO[1]}"]
    (tmp / "sensors.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "config.yml").write_text(CONFIG, encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml")])


def _publish(port: int, readings: list[tuple[str, float, datetime]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"air-{time.time_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    for station, value, at in readings:
        client.publish(f"air/{station}/pm10", orjson.dumps({"value": value, "time": at.isoformat()}),
                       qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def _areas(url: str, cid: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/ogcapi/collections/{cid}/items", params={"limit": 100}, timeout=30)
    assert r.status_code == 200, r.text
    return {f["properties"]["area"]: f["properties"] for f in r.json()["features"]}


def _wait(check: Callable[[], object], timeout: float = 30) -> None:
    """Until `check()` holds (the indicators engine runs on its own schedule)."""
    wait_until(check, timeout, "the indicators", 0.3, ignore=(AssertionError, KeyError, IndexError))


def test_indicators_with_known_inputs(city: Server) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _publish(city.mqtt_port, [  # type: ignore[arg-type]
        ("g1", 10, now - timedelta(minutes=30)), ("g1", 20, now - timedelta(minutes=20)),
        ("g2", 30, now - timedelta(minutes=10)), ("j1", 50, now - timedelta(minutes=5)),
        ("j1", 500, now - timedelta(hours=3)),  # outside the hour: not in the windowed aggregates
    ])

    def settled() -> bool:
        mean = _areas(city.url, "pm10-mean")
        return mean["강남구"]["value"] == pytest.approx(20) and mean["종로구"]["value"] == pytest.approx(50)

    _wait(settled)
    mean = _areas(city.url, "pm10-mean")
    assert mean["강남구"]["sensors"] == 2 and mean["종로구"]["sensors"] == 1
    assert mean["서초구"]["value"] is None and mean["서초구"]["sensors"] == 0  # a district without sensors
    assert mean["강남구"]["aggregate"] == "mean" and mean["강남구"]["window"] == "PT1H"
    assert len(mean) == 25
    _wait(lambda: _areas(city.url, "pm10-max")["강남구"]["value"] == pytest.approx(30))
    _wait(lambda: _areas(city.url, "pm10-count")["강남구"]["value"] == pytest.approx(3))
    # the city-wide values and the history are SensorThings Datastreams
    sta = httpx.Client(base_url=city.sta + "/", timeout=30)

    def city_value(iid: str) -> float | None:
        r = sta.get("Datastreams", params={
            "$filter": f"properties/indicator eq '{iid}' and properties/area eq 'city'",
            "$expand": "Observations($orderby=phenomenonTime desc;$top=1)"}).json()["value"]
        return r[0]["Observations"][0]["result"] if r and r[0]["Observations"] else None

    _wait(lambda: city_value("pm10-mean") == pytest.approx(27.5))
    _wait(lambda: city_value("pm10-latest") == pytest.approx(50))
    district = mean["강남구"]["datastream"]
    history = sta.get(district.lstrip("/").removeprefix("v1.1/") + "/Observations",
                      params={"$orderby": "phenomenonTime"}).json()["value"]
    assert history[-1]["result"] == pytest.approx(20)
    # filters work on indicator collections like on any other
    high = httpx.get(f"{city.url}/ogcapi/collections/pm10-mean/items", params={"filter": "value > 30"}).json()
    assert [f["properties"]["area"] for f in high["features"]] == ["종로구"]
    # a new reading moves the indicator
    _publish(city.mqtt_port, [("g2", 90, now - timedelta(minutes=1))])  # type: ignore[arg-type]
    _wait(lambda: _areas(city.url, "pm10-mean")["강남구"]["value"] == pytest.approx(37.5))  # (10+20+30+90)/4
    history = sta.get(district.lstrip("/").removeprefix("v1.1/") + "/Observations",
                      params={"$orderby": "phenomenonTime"}).json()["value"]
    assert [o["result"] for o in history][-2:] == [pytest.approx(20), pytest.approx(37.5)]


def test_indicator_config_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    for body, message in (
        ("indicators:\n  x:\n    observedProperty: PM10\n    aggregate: median\n    window: PT1H\n",
         "indicators.x.aggregate: must be one of"),
        ("indicators:\n  x:\n    observedProperty: PM10\n    aggregate: mean\n    window: an hour\n",
         "indicators.x.window: not an ISO 8601 duration"),
        ("indicators:\n  x:\n    observedProperty: PM10\n    aggregate: mean\n    window: PT1H\n    areas: nope\n",
         "indicators.x.areas: no collection 'nope'"),
        ("indicators:\n  x:\n    observedProperty: PM10\n    aggregate: mean\n    window: PT1H\n    min_sensors: 0\n",
         "indicators.x.min_sensors: must be a whole number from 1"),
    ):
        (tmp_path / "c.yml").write_text(body, encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "udp.cli", "check", "--config", str(tmp_path / "c.yml")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 1 and message in out.stderr, out.stderr
