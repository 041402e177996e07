"""District indicators and access control, through a running platform with users: the public values leave
internal sensors out and need `min_sensors` reporting sensors per area; the read role gets the full values
(every sensor) from the same OGC API collection and sees the full Datastreams in the SensorThings API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Server, serve_on
from tests.test_indicators import DISTRICTS, _wait
from udp.auth import hash_password

PUBLIC_SENSORS = [("g1", 127.0473, 37.5172), ("g2", 127.0495, 37.5045), ("j1", 126.9790, 37.5900)]  # 강남구 ×2, 종로구
INTERNAL_SENSORS = [("i1", 126.9976, 37.5638), ("i2", 127.0300, 37.4950)]  # 중구 (its only sensor), 강남구
READER = ("planner", "planner-password")
WRITER = ("ingest", "ingest-password")
SENSORS = """    x: lon
    y: lat
    key: id
    name: "air {id}"
    datastreams:
      - name: "PM10 {id}"
        observedProperty: PM10
        unit: {name: microgram per cubic metre, symbol: ug/m3, definition: http://unitsofmeasure.org}
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("indicators-access")
    for name, rows in (("public.csv", PUBLIC_SENSORS), ("internal.csv", INTERNAL_SENSORS)):
        (tmp / name).write_text("id,lon,lat\n" + "".join(f"{i},{x},{y}\n" for i, x, y in rows), encoding="utf-8")
    (tmp / "config.yml").write_text(f"""title: Indicators and access
auth:
  users:
    - name: {READER[0]}
      password: "{hash_password(READER[1], iterations=1000)}"
      roles: [read]
    - name: {WRITER[0]}
      password: "{hash_password(WRITER[1], iterations=1000)}"
      roles: [write]
{DISTRICTS}sensors:
  - things: public.csv
{SENSORS}  - things: internal.csv
    access: internal
{SENSORS}indicators:
  pm10-mean:
    areas: districts
    observedProperty: PM10
    aggregate: mean
    window: PT1H
    min_sensors: 2
""", encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml")])


def _areas(city: Server, auth: tuple[str, str] | None = None) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{city.url}/ogcapi/collections/pm10-mean/items", params={"limit": 100}, auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return {f["properties"]["area"]: f["properties"] for f in r.json()["features"]}


def _city_values(city: Server, auth: tuple[str, str] | None = None) -> dict[str, float | None]:
    """The city-wide indicator Datastreams someone sees, by scope, with their latest value."""
    found = httpx.get(f"{city.sta}/Datastreams", auth=auth, timeout=30, params={
        "$filter": "properties/indicator eq 'pm10-mean' and properties/area eq 'city'",
        "$expand": "Observations($orderby=phenomenonTime desc;$top=1)"}).json()["value"]
    return {ds["properties"].get("scope", "public"): (ds["Observations"][0]["result"] if ds["Observations"] else None)
            for ds in found}


def test_public_indicators_leave_internal_sensors_out(city: Server) -> None:
    sta = httpx.Client(base_url=city.sta + "/", auth=WRITER, timeout=30)
    ids = {ds["name"].removeprefix("PM10 "): ds["@iot.id"] for ds in sta.get(
        "Datastreams", params={"$filter": "startswith(name, 'PM10 ')", "$top": 100}, auth=READER).json()["value"]}
    assert set(ids) == {"g1", "g2", "j1", "i1", "i2"}
    now = datetime.now(UTC).replace(microsecond=0)
    readings = {"g1": 10, "g2": 30, "j1": 50, "i1": 400, "i2": 200}
    r = sta.post("CreateObservations", json=[
        {"Datastream": {"@iot.id": ids[s]}, "components": ["phenomenonTime", "result"],
         "dataArray": [[(now - timedelta(minutes=5)).isoformat(), v]]} for s, v in readings.items()])
    assert r.status_code == 201, r.text

    _wait(lambda: _areas(city, READER)["중구"]["value"] == pytest.approx(400))
    public = _areas(city)
    # two public sensors in Gangnam: their mean, without the internal one
    assert public["강남구"]["value"] == pytest.approx(20) and public["강남구"]["sensors"] == 2
    assert public["종로구"]["value"] is None  # one sensor is under min_sensors: its reading is not published
    assert public["중구"]["value"] is None  # the only sensor is internal
    full = _areas(city, READER)
    assert full["강남구"]["value"] == pytest.approx(80) and full["강남구"]["sensors"] == 3  # (10+30+200)/3
    assert full["종로구"]["value"] == pytest.approx(50) and full["중구"]["value"] == pytest.approx(400)
    assert full["서초구"]["value"] is None  # no sensors at all
    # the SensorThings API: the public sees the public Datastreams only, the read role the full ones too
    _wait(lambda: _city_values(city, READER).get("full") == pytest.approx(138))  # (10+30+50+400+200)/5
    assert _city_values(city) == {"public": pytest.approx(30)}  # (10+30+50)/3
    assert _city_values(city, READER)["public"] == pytest.approx(30)
    anonymous = httpx.get(f"{city.sta}/Datastreams", params={"$filter": "properties/scope eq 'full'"}).json()
    assert anonymous["value"] == []
