"""`udp import-sta`: the three saved iot.hamburg.de pages into fresh SQLite stores, odd documents such as
real servers send, and a round trip from a live platform (paged by small nextLinks) into a second store."""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store
from sensorthings.store.schema import TABLES
from tests.conftest import DEMO_DATA, PG_URL, Server, _pg_database, free_port, start_server, stop_server
from udp import import_sta

STA_DIR = DEMO_DATA
DOCUMENTS = ("HH_STA_HamburgerRadzaehlnetz.json", "traffic_status.json", "ev-charging-stations.json")
SETS = {"Things": "things", "Locations": "locations", "Datastreams": "datastreams",
        "MultiDatastreams": "multi_datastreams", "Sensors": "sensors", "ObservedProperties": "observed_properties",
        "FeaturesOfInterest": "features_of_interest", "Observations": "observations"}


def import_sta_cli(*argv: str) -> int:
    """`udp import-sta ARGS` as the command runs it, through the module's own arguments."""
    parser = argparse.ArgumentParser(prog="udp import-sta")
    import_sta.add_arguments(parser)
    return import_sta.run(parser.parse_args(["--backoff", "0.01", *argv]))


def counts(store_url: str) -> dict[str, int]:
    """Rows per entity set in a store."""
    store = Store.open(store_url)
    try:
        with store.read() as conn:
            return {name: conn.execute(select(func.count()).select_from(TABLES[table])).scalar_one()
                    for name, table in SETS.items()}
    finally:
        store.close()


def _load(name: str) -> dict[str, Any]:
    path = STA_DIR / name
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def expected_counts(doc: dict[str, Any]) -> dict[str, int]:
    """The entities a saved page holds, counted in its JSON (plus the stand-ins for what it leaves out)."""
    things = {t["@iot.id"]: t for t in doc["value"]}
    streams = [ds for t in doc["value"] for ds in t.get("Datastreams", [])]
    locations = {loc["@iot.id"] for t in doc["value"] for loc in t.get("Locations", [])}
    sensors = {ds["Sensor"]["@iot.id"] for ds in streams if "Sensor" in ds}
    props = {ds["ObservedProperty"]["@iot.id"] for ds in streams if "ObservedProperty" in ds}
    # a Datastream the page gives without its Sensor/ObservedProperty gets the source's stand-in
    stand_in_sensor = int(any("Sensor" not in ds for ds in streams))
    stand_in_prop = int(any("ObservedProperty" not in ds for ds in streams))
    features = set()
    for thing in things.values():
        for ds in thing.get("Datastreams", []):
            if ds.get("Observations"):
                # the store's feature from the Thing's Location, else one from the Datastream's observedArea
                features.add(("thing", thing["@iot.id"]) if thing.get("Locations") else ("ds", ds["@iot.id"]))
    return {"Things": len(things), "Locations": len(locations), "Datastreams": len(streams), "MultiDatastreams": 0,
            "Sensors": len(sensors) + stand_in_sensor, "ObservedProperties": len(props) + stand_in_prop,
            "FeaturesOfInterest": len(features),
            "Observations": sum(len(ds.get("Observations", [])) for ds in streams)}


# -- saved pages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOCUMENTS)
def test_hamburg_file_counts_and_idempotence(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _load(name)
    store, map_file = f"sqlite:///{tmp_path / 'udp.db'}", tmp_path / "map.json"
    want = expected_counts(doc)
    assert import_sta_cli(str(STA_DIR / name), "--store", store, "--map", str(map_file)) == 0
    assert counts(store) == want
    mapped = orjson.loads(map_file.read_bytes())
    assert mapped["store"] == store
    assert len(mapped["entities"]["Things"]) == want["Things"]
    assert "https://iot.hamburg.de/v1.1/Things(5564)" in mapped["entities"]["Things"] or name.startswith("ev")
    err = capsys.readouterr().err
    assert "page 1: 100 Things" in err and "0 failed" in err

    assert import_sta_cli(str(STA_DIR / name), "--store", store, "--map", str(map_file)) == 0
    assert counts(store) == want  # nothing twice
    err = capsys.readouterr().err
    assert f"Things 0 (+{want['Things']} already)" in err
    assert f"Observations 0 (+{want['Observations']} already)" in err


def test_three_hamburg_files_into_one_store(tmp_path: Path) -> None:
    store, map_file = f"sqlite:///{tmp_path / 'udp.db'}", tmp_path / "map.json"
    for _ in range(2):
        for name in DOCUMENTS:
            assert import_sta_cli(str(STA_DIR / name), "--store", store, "--map", str(map_file)) == 0
        got = counts(store)
        # as tests/test_hamburg_import.py counts them: 11 counting stations count bicycles and cars
        assert (got["Things"], got["Datastreams"], got["Observations"], got["Locations"]) == (289, 420, 412, 100)
        assert (got["Sensors"], got["ObservedProperties"]) == (1, 1)  # one stand-in each for iot.hamburg.de
    # a map belongs to its store
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert import_sta_cli(str(STA_DIR / DOCUMENTS[0]), "--store", other, "--map", str(map_file)) == 2


def test_what_real_servers_send(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    om = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
    page = {"value": [
        {"@iot.id": "t-1", "name": "station", "properties": {"assetID": "007"},  # a string id
         "Locations": [
             {"@iot.id": 10, "name": "a point", "encodingType": "application/geo+json",  # no description
              "location": {"type": "Point", "coordinates": [10.0, 53.5]}},
             {"@iot.id": 11, "name": "a feature", "encodingType": "application/vnd.geo+json",
              "location": {"type": "Feature", "properties": {},
                           "geometry": {"type": "Point", "coordinates": [10, 53]}}},
             {"@iot.id": 12, "name": "nowhere", "description": "", "encodingType": "application/geo+json"}],
         "Datastreams": [
             {"@iot.id": "20", "name": "temperature", "description": None, "observationType": om + "OM_Measurement",
              "unitOfMeasurement": None, "properties": "not an object", "phenomenonTime": None,
              "Sensor": {"@iot.id": 30, "name": "thermometer", "description": "", "encodingType": "text/html",
                         "metadata": "https://example.org"},
              "ObservedProperty": {"@iot.id": 40, "name": "air temperature", "definition": "https://example.org/t",
                                   "description": ""},
              "Observations": [
                  {"@iot.id": 1, "phenomenonTime": "2024-05-01T10:00:00+02:00", "result": 21.5},
                  {"@iot.id": 2, "phenomenonTime": "2024-05-01T09:00:00Z/2024-05-01T09:15:00Z", "result": 22,
                   "resultTime": "2024-05-01T09:16:00Z", "parameters": {"q": 1},
                   "FeatureOfInterest": {"@iot.id": 50, "name": "roof", "description": "the roof",
                                         "encodingType": "application/geo+json",
                                         "feature": {"type": "Point", "coordinates": [10.1, 53.6]}}},
                  {"@iot.id": 3, "resultTime": "2024-05-01T11:00:00Z", "result": None},
                  {"@iot.id": 4, "phenomenonTime": "2024-05-01T12:00:00Z"},
                  {"@iot.id": 5, "phenomenonTime": "2024-05-01T13:00:00Z", "result": "warm"}]}],
         "MultiDatastreams": [
             {"@iot.id": 60, "name": "wind", "description": "",
              "multiObservationDataTypes": [om + "OM_Measurement", om + "OM_Measurement"],
              "unitOfMeasurements": [{"name": "degree", "symbol": None, "definition": None},
                                     {"name": None, "symbol": "m/s", "definition": None}],
              "Sensor": {"@iot.id": 30, "name": "thermometer", "description": "", "encodingType": "text/html",
                         "metadata": "https://example.org"},
              "ObservedProperties": [{"@iot.id": 41, "name": "direction", "definition": "", "description": ""},
                                     {"@iot.id": 42, "name": "speed", "definition": "", "description": ""}],
              "Observations": [{"@iot.id": 7, "phenomenonTime": "2024-05-01T10:00:00Z", "result": [270, 4.5]},
                               {"@iot.id": 8, "phenomenonTime": "2024-05-01T10:10:00Z", "result": 3}]}]},
        {"@iot.id": 2, "name": None, "description": "no name, and a Datastream without Sensor or ObservedProperty",
         "Datastreams": [{"@iot.id": 21, "name": "level", "unitOfMeasurement": {"name": "cm"},
                          "observedArea": {"type": "Point", "coordinates": [9.9, 53.5]},
                          "Observations": [{"phenomenonTime": "2024-05-02T00:00:00Z", "result": 120}]}]},
    ], "@iot.nextLink": "http://127.0.0.1:9/v1.1/Things?$skip=2"}
    source = tmp_path / "page.json"
    source.write_bytes(orjson.dumps(page))
    store, map_file = f"sqlite:///{tmp_path / 'udp.db'}", tmp_path / "map.json"
    assert import_sta_cli(str(source), "--store", store, "--map", str(map_file)) == 1  # some were not importable
    err = capsys.readouterr().err
    # every failure says where and why; the nextLink of a file is not followed without --follow
    assert f"{source} value[0].Locations[2]: Location.location is required" in err
    assert "value[0].Datastreams[0].Observations[3]: the Observation has no result" in err
    # the observationType rule of every way in: an OM_Measurement's results are numbers
    assert "value[0].Datastreams[0].Observations[4]: wrong result type: the observationType of Datastream" in err
    # the store's rule for every way in: a MultiDatastream's result is an array with one value per ObservedProperty
    assert "value[0].MultiDatastreams[0].Observations[1]: wrong result type: an Observation of MultiDatastream" in err
    assert "value[0].Datastreams[0]: properties left out: Datastream.properties must be a JSON object" in err
    assert "127.0.0.1:9" not in err
    got = counts(store)
    assert got == {"Things": 2, "Locations": 2, "Datastreams": 2, "MultiDatastreams": 1, "Sensors": 2,
                   "ObservedProperties": 4, "FeaturesOfInterest": 3, "Observations": 5}
    service = Service(Store.open(store))
    docs = _get(service, "Observations", {"$orderby": "phenomenonTime", "$expand": "FeatureOfInterest($select=name)",
                                          "$select": "phenomenonTime,result,resultTime,parameters"})
    assert [(o["phenomenonTime"], o["result"]) for o in docs] == [
        ("2024-05-01T08:00:00Z", 21.5), ("2024-05-01T09:00:00Z/2024-05-01T09:15:00Z", 22),
        ("2024-05-01T10:00:00Z", [270, 4.5]), ("2024-05-01T11:00:00Z", None), ("2024-05-02T00:00:00Z", 120)]
    assert docs[1]["FeatureOfInterest"]["name"] == "roof" and docs[1]["parameters"] == {"q": 1}
    assert docs[4]["FeatureOfInterest"]["name"] == "level"  # from the observedArea: that Thing has no Location
    things = _get(service, "Things", {"$orderby": "id", "$expand": "Locations($orderby=id),Datastreams"})
    assert things[0]["properties"] == {"assetID": "007"}
    assert [loc["location"]["type"] for loc in things[0]["Locations"]] == ["Point", "Feature"]
    assert things[0]["Datastreams"][0]["unitOfMeasurement"] == {"name": None, "symbol": None, "definition": None}
    assert things[1]["name"] == "Thing 2"
    mapped = orjson.loads(map_file.read_bytes())["entities"]
    assert mapped["Things"].keys() == {f"{source.resolve().as_uri()}/Things('t-1')",
                                       f"{source.resolve().as_uri()}/Things(2)"}
    assert f"{source.resolve().as_uri()}/Datastreams(20)" in mapped["Datastreams"]  # "20" and 20 are one id
    # again: the failures are reported again, nothing is written twice
    assert import_sta_cli(str(source), "--store", store, "--map", str(map_file)) == 1
    assert counts(store) == got


def _get(service: Service, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    res = service.handle(ApiRequest("GET", path, {"$top": "10000", **params}, None, "http://test/v1.1"))
    assert res.status == 200, res.body
    return res.body["value"]


# -- a live source -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A platform holding the EV charging page (deep inserts over HTTP) and a few more Observations."""
    doc = _load("ev-charging-stations.json")
    srv = start_server(f"sqlite:///{tmp_path_factory.mktemp('source') / 'udp.db'}", "sqlite")
    try:
        sta = httpx.Client(base_url=srv.sta + "/", timeout=60)
        sensors = [_post(sta, "Sensors", {"name": f"charger sensor {i}", "description": "", "encodingType": "text/html",
                                          "metadata": "https://iot.hamburg.de"}) for i in range(2)]
        status = _post(sta, "ObservedProperties", {"name": "charging point status", "description": "",
                                                   "definition": "https://www.openchargealliance.org/"})
        for i, thing in enumerate(doc["value"]):
            body = _without_ids(thing)
            for ds in body["Datastreams"]:
                ds["Sensor"] = {"@iot.id": sensors[i % 2]}
                ds["ObservedProperty"] = {"@iot.id": status}
                # results of every JSON type below: an OM_Observation takes any
                ds["observationType"] = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Observation"
            _post(sta, "Things", body)
        streams = sta.get("Datastreams", params={"$orderby": "id", "$top": "3"}).json()["value"]
        for k, ds in enumerate(streams):
            for j in range(5):
                obs = {"phenomenonTime": f"2024-06-0{j + 1}T12:00:00Z", "result": ["available", 1, 2.5, None][j % 4]}
                if j == 4:
                    obs["phenomenonTime"] = "2024-06-05T12:00:00Z/2024-06-05T12:15:00Z"
                    obs["FeatureOfInterest"] = {"name": f"bay {k}", "description": "", "encodingType":
                                                "application/geo+json", "feature": {"type": "Point",
                                                                                    "coordinates": [10, 53.5 + k]}}
                _post(sta, f"Datastreams({ds['@iot.id']})/Observations", obs)
        first = sta.get("Things", params={"$orderby": "id", "$top": "1"}).json()["value"][0]["@iot.id"]
        props = [_post(sta, "ObservedProperties", {"name": n, "description": "", "definition": ""})
                 for n in ("occupied bays", "power")]
        md = _post(sta, "MultiDatastreams", {
            "name": "charger load", "description": "", "Thing": {"@iot.id": first}, "Sensor": {"@iot.id": sensors[0]},
            "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation",
            "multiObservationDataTypes": ["OM_CountObservation", "OM_Measurement"],
            "unitOfMeasurements": [{"name": "bays", "symbol": None, "definition": None},
                                   {"name": "kilowatt", "symbol": "kW", "definition": None}],
            "ObservedProperties": [{"@iot.id": p} for p in props]})
        for j in range(3):
            _post(sta, f"MultiDatastreams({md})/Observations",
                  {"phenomenonTime": f"2024-06-0{j + 1}T13:00:00Z", "result": [j, 11.0 * j]})
        sta.close()
        yield srv
    finally:
        stop_server(srv)


def _post(sta: httpx.Client, path: str, body: dict[str, Any]) -> int:
    res = sta.post(path, json=body)
    assert res.status_code == 201, res.text
    return res.json()["@iot.id"]


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if not k.startswith("@iot.") and "@iot." not in k}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


OBS_QUERY = {"$orderby": "phenomenonTime,id", "$select": "phenomenonTime,result,resultTime",
             "$expand": "Datastream($select=name),MultiDatastream($select=name),"
                        "FeatureOfInterest($select=name,feature)"}


def _observations(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((o.get("Datastream", o.get("MultiDatastream"))["name"], o["phenomenonTime"], json.dumps(o["result"]),
                   o["resultTime"], o["FeatureOfInterest"]["name"], json.dumps(o["FeatureOfInterest"]["feature"]))
                  for o in docs)


def _source_counts(sta: httpx.Client) -> dict[str, int]:
    return {name: sta.get(name, params={"$count": "true", "$top": "0"}).json()["@iot.count"] for name in SETS}


def test_round_trip_from_a_live_server(source: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sta = httpx.Client(base_url=source.sta + "/", timeout=60)
    want = _source_counts(sta)
    assert (want["Things"], want["MultiDatastreams"], want["Observations"]) == (100, 1, 219 + 15 + 3)
    url = f"{source.sta}/Things?$top=7"  # 15 pages of nextLinks
    store, map_file = f"sqlite:///{tmp_path / 'copy.db'}", tmp_path / "map.json"
    assert import_sta_cli(url, "--store", store, "--map", str(map_file), "--page-size", "2") == 0
    err = capsys.readouterr().err
    assert "page 15: 2 Things" in err and "0 failed" in err
    assert counts(store) == want

    theirs = _observations(sta.get("Observations", params={"$top": "10000", **OBS_QUERY}).json()["value"])
    ours = _observations(_get(Service(Store.open(store)), "Observations", OBS_QUERY))
    assert ours == theirs
    assert any(o[1].endswith("15:00Z") and o[4].startswith("bay") for o in ours)  # interval, own feature
    copied = _get(Service(Store.open(store)), "MultiDatastreams", {"$expand": "ObservedProperties"})
    assert [p["name"] for p in copied[0]["ObservedProperties"]] == ["occupied bays", "power"]
    assert copied[0]["unitOfMeasurements"][1]["symbol"] == "kW"

    # again, after one more Observation at the source: only that one is new
    ds = sta.get("Datastreams", params={"$orderby": "id", "$top": "1"}).json()["value"][0]["@iot.id"]
    _post(sta, f"Datastreams({ds})/Observations", {"phenomenonTime": "2024-07-01T00:00:00Z", "result": 7})
    assert import_sta_cli(url, "--store", store, "--map", str(map_file)) == 0
    assert counts(store) == {**want, "Observations": want["Observations"] + 1}
    assert "Things 0 (+100 already)" in capsys.readouterr().err
    sta.close()


def test_saved_page_with_follow(source: Server, tmp_path: Path) -> None:
    """A saved page without Locations, Sensors or ObservedProperties: --follow reads them, and the next pages,
    from the server its links name; without it the page alone is imported, with stand-ins."""
    sta = httpx.Client(base_url=source.sta + "/", timeout=60)
    first = sta.get("Things", params={"$orderby": "id", "$top": "1"}).json()["value"][0]["@iot.id"]
    mine = f"id le {first + 9}"  # ten Things, in pages of four
    page = sta.get("Things", params={"$top": "4", "$filter": mine, "$expand": "Datastreams"}).json()
    assert "@iot.nextLink" in page and "Sensor" not in page["value"][0]["Datastreams"][0]
    saved = tmp_path / "things.json.gz"
    saved.write_bytes(gzip.compress(orjson.dumps(page)))
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    assert import_sta_cli(str(saved), "--store", alone, "--map", str(tmp_path / "alone.json")) == 0
    got = counts(alone)
    assert (got["Things"], got["Locations"], got["Sensors"], got["ObservedProperties"], got["Observations"]) == \
        (4, 0, 1, 1, 0)
    followed = f"sqlite:///{tmp_path / 'followed.db'}"
    assert import_sta_cli(str(saved), "--follow", "--store", followed, "--map", str(tmp_path / "followed.json")) == 0
    streams = sta.get("Datastreams", params={"$filter": f"Thing/{mine}", "$expand": "Sensor,ObservedProperty",
                                             "$top": "1000"}).json()["value"]
    multi = sta.get("MultiDatastreams", params={"$filter": f"Thing/{mine}", "$expand": "ObservedProperties"}).json()
    # two counts: the platform's `Datastream/… or MultiDatastream/…` finds nothing (the paths are joined, not outer)
    observations = sum(sta.get("Observations", params={"$filter": f"{stream}/Thing/{mine}", "$count": "true",
                                                       "$top": "0"}).json()["@iot.count"]
                       for stream in ("Datastream", "MultiDatastream"))
    got = counts(followed)
    assert got == {"Things": 10, "Locations": 10, "Datastreams": len(streams), "MultiDatastreams": len(multi["value"]),
                   "Sensors": len({d["Sensor"]["@iot.id"] for d in streams}),
                   "ObservedProperties": len({d["ObservedProperty"]["@iot.id"] for d in streams})
                   + sum(len(m["ObservedProperties"]) for m in multi["value"]),
                   "FeaturesOfInterest": 10 + 3, "Observations": observations}  # a Location's each, and the bays
    sta.close()


def test_limits_per_datastream(source: Server, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'recent.db'}"
    url = f"{source.sta}/Things?$top=50"
    assert import_sta_cli(url, "--store", store, "--map", str(tmp_path / "m.json"), "--observations", "2",
                          "--since", "2024-06-02T00:00:00Z") == 0
    got = _get(Service(Store.open(store)), "Datastreams", {"$expand": "Observations($select=phenomenonTime)"})
    got += _get(Service(Store.open(store)), "MultiDatastreams", {"$expand": "Observations($select=phenomenonTime)"})
    per_stream = sorted(len(d["Observations"]) for d in got)
    assert per_stream.count(2) == 4 and sum(per_stream) == 8  # only the streams with Observations since then
    # the newest two of each
    assert min(o["phenomenonTime"] for d in got for o in d["Observations"]) >= "2024-06-02"
    assert counts(store)["Things"] == 100


class _Flaky(import_sta.Fetcher):
    """A source whose network goes away after `ok` requests."""

    ok = 12

    def get(self, url: str) -> Any:
        if self.requests >= self.ok:
            self.requests += 1
            raise import_sta.NetworkError(f"{url}: ConnectError: connection refused (gave up after 1 attempts)")
        return super().get(url)


def test_network_failure_stops_clearly_and_resumes(source: Server, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    dead = f"http://127.0.0.1:{port}/v1.1/Things"
    store, map_file = f"sqlite:///{tmp_path / 'udp.db'}", tmp_path / "map.json"
    assert import_sta_cli(dead, "--store", store, "--map", str(map_file), "--retries", "2") == 1
    err = capsys.readouterr().err
    assert err.count("retrying in") == 2
    assert f"import-sta stopped: http://127.0.0.1:{port}/v1.1/Things?$expand=Locations" in err
    assert "gave up after 3 attempts" in err

    monkeypatch.setattr(import_sta, "Fetcher", _Flaky)
    url = f"{source.sta}/Things?$top=5"
    assert import_sta_cli(url, "--store", store, "--map", str(map_file)) == 1
    assert "connection refused" in capsys.readouterr().err
    partial = counts(store)
    assert 0 < partial["Things"] < 100
    # the map holds what was written, so the next run goes on from there without duplicates
    assert len(orjson.loads(map_file.read_bytes())["entities"]["Things"]) == partial["Things"]
    monkeypatch.undo()
    assert import_sta_cli(url, "--store", store, "--map", str(map_file)) == 0
    assert counts(store) == _source_counts(httpx.Client(base_url=source.sta + "/"))


@pytest.mark.skipif(not PG_URL, reason="UDP_TEST_PG is not set: the PostgreSQL target is not tested")
def test_into_postgresql(source: Server, tmp_path: Path) -> None:
    gen = _pg_database()
    store = next(gen)
    try:
        for name in (*DOCUMENTS, DOCUMENTS[-1]):  # the last one twice: nothing is written twice
            assert import_sta_cli(str(STA_DIR / name), "--store", store, "--map", str(tmp_path / "files.json")) == 0
            got = counts(store)
        assert (got["Things"], got["Datastreams"], got["Observations"], got["Locations"]) == (289, 420, 412, 100)
        sta = httpx.Client(base_url=source.sta + "/", timeout=60)
        first = sta.get("Things", params={"$orderby": "id", "$top": "1"}).json()["value"][0]["@iot.id"]
        mine = f"id le {first + 14}"
        for _ in range(2):
            assert import_sta_cli(f"{source.sta}/Things?$top=6&$filter={mine}", "--store", store, "--map",
                                  str(tmp_path / "live.json")) == 0
        pg = Store.open(store)
        try:
            ours = Counter(_observations(_get(Service(pg), "Observations", OBS_QUERY)))
            theirs: Counter[tuple[Any, ...]] = Counter()
            for stream in ("Datastream", "MultiDatastream"):
                params = {"$top": "10000", **OBS_QUERY, "$filter": f"{stream}/Thing/{mine}"}
                res = sta.get("Observations", params=params)
                theirs.update(_observations(res.json()["value"]))
            assert theirs <= ours and ours.total() == 412 + theirs.total()  # the files' and the server's
        finally:
            pg.close()
        sta.close()
    finally:
        gen.close()
