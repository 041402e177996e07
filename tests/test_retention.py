"""Retention (udp/retention.py): raw Observations past their rule deleted, hourly and daily aggregates kept as
Datastreams; on both stores, through the engine and through `udp serve`."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from tests.harness import Udp, wait_until
from udp.config import ConfigError, load_config
from udp.retention import RetentionEngine, parse_retention

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=3)
STEP = timedelta(minutes=10)
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
RULES = [{"observedProperty": "PM10", "keep": "P1D"},
         {"datastream": "pm special", "keep": "P10D", "aggregates": ["PT1H"]}]


def value(i: int) -> float:
    return (i * 7919) % 101 / 4 + 0.5


def make(service: Service) -> dict[str, int]:
    """A Thing with four Datastreams: PM10 (rule by property), PM10 named 'pm special' (rule by name), categories
    of PM10 (deleted, never aggregated) and NO2 (no rule)."""
    thing = service.call("POST", "Things", {
        "name": "station", "description": "an air-quality station",
        "Locations": [{"name": "here", "description": "", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [10.0, 53.55]}}]})["@iot.id"]
    sensor = {"name": "s", "description": "", "encodingType": "text/plain", "metadata": ""}
    ids = {}
    for key, name, prop, kind in (("pm", "pm10 station", "PM10", "OM_Measurement"),
                                  ("special", "pm special", "PM10", "OM_Measurement"),
                                  ("category", "pm10 band", "PM10", "OM_CategoryObservation"),
                                  ("no2", "no2 station", "NO2", "OM_Measurement")):
        found = service.call("GET", "ObservedProperties", **{"$filter": f"name eq '{prop}'"})["value"]
        prop_ref = {"@iot.id": found[0]["@iot.id"]} if found else {"name": prop, "definition": prop,
                                                                     "description": ""}
        ids[key] = service.call("POST", "Datastreams", {
            "name": name, "description": "", "observationType": OM + kind,
            "unitOfMeasurement": {"name": "µg/m³", "symbol": "µg/m³", "definition": ""},
            "Thing": {"@iot.id": thing}, "Sensor": sensor, "ObservedProperty": prop_ref})["@iot.id"]
    return ids


def fill(store: Store, ids: dict[str, int]) -> None:
    """Three days of readings every ten minutes on each Datastream."""
    rows = []
    for key, ds in ids.items():
        for i in range(int((NOW - START) / STEP)):
            result: Any = f"band {i % 3}" if key == "category" else value(i)
            rows.append(ObservationRow.of(result, phenomenon_time_start=START + i * STEP, datastream_id=ds))
    with store.write() as (conn, changes):
        store.write_observations(conn, rows, changes)


def expected(seconds: int, start: datetime, until: datetime, extra: dict[datetime, float] | None = None
             ) -> dict[datetime, tuple[float, float, float, int]]:
    """(mean, min, max, count) per interval, computed here from the values written."""
    groups: dict[datetime, list[float]] = {}
    points = {START + i * STEP: value(i) for i in range(int((NOW - START) / STEP))} | (extra or {})
    for when, v in points.items():
        begin = datetime.fromtimestamp(int(when.timestamp()) // seconds * seconds, UTC)
        if start <= begin and begin + timedelta(seconds=seconds) <= until:
            groups.setdefault(begin, []).append(v)
    return {b: (statistics.fmean(vs), min(vs), max(vs), len(vs)) for b, vs in groups.items()}


def aggregates_of(service: Service, raw: int) -> dict[str, dict[str, Any]]:
    """The aggregate Datastreams of a raw one by period, each with its Observations by interval start."""
    out = {}
    found = service.call("GET", "Datastreams", **{"$filter": f"properties/aggregateOf eq {raw}",
                                                   "$expand": "Observations($top=10000;$orderby=phenomenonTime)"})
    for ds in found["value"]:
        obs = {datetime.fromisoformat(o["phenomenonTime"].split("/")[0]): o for o in ds["Observations"]}
        out[ds["properties"]["aggregate"]] = {"ds": ds, "obs": obs}
    return out


def raw_times(service: Service, ds: int) -> list[datetime]:
    got = service.call("GET", f"Datastreams({ds})/Observations", **{"$top": "10000", "$select": "phenomenonTime"})
    return sorted(datetime.fromisoformat(o["phenomenonTime"]) for o in got["value"])


def check(aggregate: dict[str, Any], want: dict[datetime, tuple[float, float, float, int]]) -> None:
    assert sorted(aggregate["obs"]) == sorted(want)
    for begin, (mean, low, high, count) in want.items():
        o = aggregate["obs"][begin]
        assert o["result"] == pytest.approx(mean)
        assert o["parameters"] == {"min": pytest.approx(low), "max": pytest.approx(high), "count": count}


@pytest.fixture
def station(store_url: str) -> Iterator[tuple[Store, Service, dict[str, int]]]:
    """A store of each kind with the station's four Datastreams and their three days of readings."""
    store = Store.open(store_url)
    try:
        service = Service(store)
        ids = make(service)
        fill(store, ids)
        yield store, service, ids
    finally:
        store.close()


def test_rules_delete_past_keep_and_keep_aggregates(station: tuple[Store, Service, dict[str, int]]) -> None:
    store, service, ids = station
    engine = RetentionEngine(store, parse_retention(RULES))
    done = engine.run_once(NOW)
    cutoff = NOW - timedelta(days=1)
    hours_until = NOW - timedelta(hours=1)  # 11:55 has not settled the 11:00 hour
    days_until = datetime(2026, 12, 5, tzinfo=UTC)

    pm = aggregates_of(service, ids["pm"])
    assert set(pm) == {"PT1H", "P1D"}
    check(pm["PT1H"], expected(3600, START, hours_until))
    check(pm["P1D"], expected(86400, datetime(2026, 12, 2, tzinfo=UTC), days_until))
    hourly = pm["PT1H"]["ds"]
    assert hourly["name"] == "pm10 station (hourly)" and hourly["unitOfMeasurement"]["symbol"] == "µg/m³"
    assert hourly["observationType"].endswith("OM_Measurement")
    assert hourly["phenomenonTime"] == f"{START.isoformat().replace('+00:00', 'Z')}/" \
                                       f"{hours_until.isoformat().replace('+00:00', 'Z')}"
    # raw kept from the cutoff on, and the Datastream's phenomenonTime narrowed to them
    left = raw_times(service, ids["pm"])
    assert left[0] == cutoff and len(left) == 144
    assert service.call("GET", f"Datastreams({ids['pm']})")["phenomenonTime"].startswith("2026-12-04T12:00:00")
    # the rule by name wins: kept ten days, hourly only
    special = aggregates_of(service, ids["special"])
    assert set(special) == {"PT1H"}
    check(special["PT1H"], expected(3600, START, hours_until))
    assert len(raw_times(service, ids["special"])) == 432
    # categories are deleted and never aggregated; another property is left alone
    assert aggregates_of(service, ids["category"]) == {}
    assert len(raw_times(service, ids["category"])) == 144
    assert len(raw_times(service, ids["no2"])) == 432 and aggregates_of(service, ids["no2"]) == {}
    assert done.deleted == 2 * 288 and done.aggregated == 71 + 3 + 71

    # a second round the same minute does nothing, and makes no second aggregate Datastream
    again = engine.run_once(NOW)
    assert (again.aggregated, again.deleted) == (0, 0)
    assert {k: len(v["obs"]) for k, v in aggregates_of(service, ids["pm"]).items()} == {"PT1H": 71, "P1D": 3}

    # a reading arriving late for an hour already aggregated: that hour (only) again; one not yet settled waits
    late = {datetime(2026, 12, 5, 5, 31, tzinfo=UTC): 100.0, datetime(2026, 12, 5, 11, 58, tzinfo=UTC): 50.0}
    with store.write() as (conn, changes):
        store.write_observations(conn, [ObservationRow.of(v, phenomenon_time_start=t, datastream_id=ids["pm"])
                                        for t, v in late.items()], changes)
    assert engine.run_once(NOW).aggregated == 1
    check(aggregates_of(service, ids["pm"])["PT1H"], expected(3600, START, hours_until, late))

    # another engine (a node taking over) goes on from what is stored: an hour later, 11:00 and 12:00... settle
    later = NOW + timedelta(hours=1)
    other = RetentionEngine(store, parse_retention(RULES))
    assert other.run_once(later).aggregated == 2 * 1  # the 11:00 hour of pm and of pm special
    check(aggregates_of(service, ids["pm"])["PT1H"], expected(3600, START, later - timedelta(hours=1), late))
    assert raw_times(service, ids["pm"])[0] == later - timedelta(days=1)


def test_nothing_is_deleted_before_it_is_aggregated(station: tuple[Store, Service, dict[str, int]]) -> None:
    """Raw readings past `keep` whose interval has not settled stay until it has been aggregated."""
    store, service, ids = station
    engine = RetentionEngine(store, parse_retention([{"observedProperty": "PM10", "keep": "PT1M",
                                                      "aggregates": ["P1D"]}]))
    engine.run_once(NOW)
    # a minute's retention, but today has not ended: today's readings wait for the daily aggregate
    assert raw_times(service, ids["pm"])[0] == datetime(2026, 12, 5, tzinfo=UTC)
    assert len(aggregates_of(service, ids["pm"])["P1D"]["obs"]) == 3


@pytest.mark.parametrize(("doc", "message"), [
    ({"keep": "P1D"}, "name either an observedProperty or a datastream"),
    ({"observedProperty": "a", "datastream": "b", "keep": "P1D"}, "name either"),
    ({"observedProperty": "a"}, "retention[0].keep: missing"),
    ({"observedProperty": "a", "keep": "two years"}, "retention[0].keep: not an ISO 8601 duration"),
    ({"observedProperty": "a", "keep": "PT0S"}, "must be longer than nothing"),
    ({"observedProperty": "a", "keep": "P1D", "aggregates": ["PT7M"]}, "must divide a day"),
    ({"observedProperty": "a", "keep": "P1D", "aggregates": ["P1M"]}, "years and months vary"),
    ({"observedProperty": "a", "keep": "P1D", "every": 3}, "retention[0].every: unknown key"),
])
def test_bad_rules_are_refused(doc: dict[str, Any], message: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"retention": [doc]}))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_years_and_months_keep(tmp_path: Path) -> None:
    rule = parse_retention([{"observedProperty": "PM10", "keep": "P2Y"}])[0]
    assert NOW - rule.keep == datetime(2024, 12, 5, 12, 0, tzinfo=UTC)
    assert rule.aggregates == (3600, 86400)


def test_serve_runs_retention(tmp_path: Path) -> None:
    """`udp serve` with `retention:` runs a round at start on one node: old raw readings are gone over HTTP, their
    aggregates are there, and /health names the node that holds the retention lease."""
    db = tmp_path / "udp.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        ids = make(Service(store))
        now = datetime.now(UTC)
        rows = [ObservationRow.of(float(i), phenomenon_time_start=now - timedelta(days=3) + i * STEP,
                                  datastream_id=ids["pm"]) for i in range(432)]
        with store.write() as (conn, changes):
            store.write_observations(conn, rows, changes)
    finally:
        store.close()
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"retention": [{"observedProperty": "PM10", "keep": "P1D"}]}))
    udp = Udp("serve", "--store", f"sqlite:///{db}", "--config", str(config), "--no-seed").wait(60)
    try:
        with httpx.Client(base_url=udp.url, timeout=30) as client:
            def kept() -> int:
                body = client.get(f"/v1.1/Datastreams({ids['pm']})/Observations", params={"$count": "true",
                                                                                             "$top": "0"}).json()
                return body["@iot.count"]

            wait_until(lambda: kept() < 432, 30, "the first retention round")
            assert 140 <= kept() <= 146
            hourly = client.get("/v1.1/Datastreams", params={
                "$filter": f"properties/aggregateOf eq {ids['pm']} and properties/aggregate eq 'PT1H'",
                "$expand": "Observations($count=true;$top=1)"}).json()["value"]
            assert len(hourly) == 1 and hourly[0]["Observations@iot.count"] >= 70
            health = client.get("/health").json()
            assert "retention" in health["node"]["singletons"]
    finally:
        udp.stop()
