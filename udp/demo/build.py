"""Building the demo city's store once: the entities and history that do not come from config.yml.

- Seoul's air quality: the 25 gu stations of the daily 2022 file (CP949) as Things at their district's
  interior point (the file gives no coordinates), six Datastreams each, the last 120 days of readings
  shifted so that the last one is yesterday.
- Hamburg: the three iot.hamburg.de documents (bike counters, traffic status, EV chargers) imported
  with `udp import-sta`.
- Melbourne's pedestrian counters come from `sensors:` in the demo config at every start; their first
  eight hours of per-minute counts are loaded here as history, ending now.

A table `udp_demo` records the build; a store that has it is reused as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import shapely
from sqlalchemy import Column, MetaData, String, Table, func, inspect, select

from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CONFIG = HERE / "config.yml"
VERSION = "2"
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
# the daily file's columns: (ObservedProperty, unit name, UCUM symbol)
POLLUTANTS = {
    "미세먼지농도(㎍/㎥)": ("PM10", "microgram per cubic metre", "ug/m3"),
    "초미세먼지농도(㎍/㎥)": ("PM2.5", "microgram per cubic metre", "ug/m3"),
    "이산화질소농도(ppm)": ("NO2", "parts per million", "ppm"),
    "오존농도(ppm)": ("O3", "parts per million", "ppm"),
    "일산화탄소농도(ppm)": ("CO", "parts per million", "ppm"),
    "아황산가스농도(ppm)": ("SO2", "parts per million", "ppm"),
}
HAMBURG = ("HH_STA_HamburgerRadzaehlnetz.json", "traffic_status.json", "ev-charging-stations.json")
_marker = Table("udp_demo", MetaData(), Column("version", String(16), primary_key=True),
                Column("built_at", String(40)))
Step = Callable[[str], None]


def is_built(store: Store) -> bool:
    """Whether the store holds this version of the demo."""
    with store.read() as conn:
        if not inspect(conn).has_table("udp_demo"):
            return False
        return conn.execute(select(_marker.c.version).where(_marker.c.version == VERSION)).first() is not None


def _districts() -> dict[str, shapely.Geometry]:
    from features.spec import parse_collections
    from provider_plugins.table import load

    spec = parse_collections({"districts": {"source": str(DATA / "seoul_municipalities.shp"), "encoding": "cp949",
                                            "crs": "EPSG:5174"}}, DATA)["districts"]
    table = load(spec)
    return {name: shapely.point_on_surface(g) for name, g in zip(table.columns["name"], table.geoms, strict=True)}


def air_quality(store: Store, days: int = 120) -> int:
    """The gu stations, their Datastreams and their last `days` of daily readings; Observations made."""
    service = Service(store)
    places = _districts()
    frame = pd.read_csv(DATA / "seoul_daily_air_by_station_2022.csv", encoding="cp949")
    frame = frame[frame["측정소명"].isin(places)]
    frame["day"] = pd.to_datetime(frame["측정일시"].astype(str), format="%Y%m%d", utc=True)
    last = frame["day"].max()
    frame = frame[frame["day"] > last - pd.Timedelta(days=days)]
    yesterday = pd.Timestamp(datetime.now(UTC).date(), tz=UTC) - pd.Timedelta(days=1)
    shift = yesterday - last
    ops: dict[str, int] = {}
    for column, (prop, _, _) in POLLUTANTS.items():
        ops[column] = service.call("POST", "ObservedProperties", {
            "name": prop, "description": f"{prop} concentration, daily mean", "definition": prop})["@iot.id"]
    sensor = service.call("POST", "Sensors", {
        "name": "Seoul air quality monitoring station", "description": "Seoul Metropolitan Government station",
        "encodingType": "text/html", "metadata": "https://cleanair.seoul.go.kr"})["@iot.id"]
    streams: dict[tuple[str, str], int] = {}
    for gu in sorted(frame["측정소명"].unique()):
        point = places[gu]
        thing = service.call("POST", "Things", {
            "name": f"Air quality {gu}", "description": f"Seoul air quality station of {gu}",
            "properties": {"city": "Seoul", "district": gu, "kind": "air quality",
                           "placement": "the district's interior point (the open data gives no coordinates)"},
            "Locations": [{"name": gu, "description": f"{gu} (district interior point)",
                           "encodingType": "application/geo+json",
                           "location": shapely.geometry.mapping(point)}],
            "Datastreams": [{"name": f"{prop} {gu}", "description": f"daily mean {prop} at {gu}",
                             "observationType": OM,
                             "unitOfMeasurement": {"name": unit, "symbol": symbol,
                                                   "definition": "http://unitsofmeasure.org/ucum.html"},
                             "ObservedProperty": {"@iot.id": ops[column]}, "Sensor": {"@iot.id": sensor}}
                            for column, (prop, unit, symbol) in POLLUTANTS.items()]})
        for ds in service.call("GET", f"Things({thing['@iot.id']})/Datastreams", **{"$select": "id,name"})["value"]:
            streams[(gu, ds["name"].split(" ", 1)[0])] = ds["@iot.id"]
    rows: list[ObservationRow] = []
    for record in frame.to_dict("records"):
        gu = record["측정소명"]
        at = (record["day"] + shift).to_pydatetime()
        for column, (prop, _, _) in POLLUTANTS.items():
            value = record[column]
            if not pd.isna(value):
                rows.append(_observation(streams[(gu, prop)], at, float(value)))
    _insert(store, rows)
    return len(rows)


def _observation(stream: int, at: datetime, result: Any, end: datetime | None = None) -> ObservationRow:
    return ObservationRow.of(result, phenomenon_time_start=at, phenomenon_time_end=end, result_time=end or at,
                             datastream_id=stream)


def _insert(store: Store, rows: list[ObservationRow]) -> None:
    """Observations in bulk, in one transaction (the history is built before anyone listens)."""
    with store.write() as (conn, changes):
        for start in range(0, len(rows), 5000):
            store.write_observations(conn, rows[start:start + 5000], changes)


def melbourne_history(store: Store, hours: float = 8.0) -> int:
    """The first `hours` of the per-minute counts as history ending now, on the `sensors:` Datastreams."""
    service = Service(store)
    frame = pd.read_csv(DATA / "pedestrian_per_minute_counts_2023-09-19.csv")
    frame["at"] = pd.to_datetime(frame["Sensing_DateTime"], utc=True)
    first = frame["at"].min()
    frame = frame[frame["at"] < first + pd.Timedelta(hours=hours)]
    shift = pd.Timestamp(datetime.now(UTC)) - frame["at"].max()
    names = {ds["name"]: ds["@iot.id"] for ds in service.call("GET", "Datastreams", **{
        "$filter": "startswith(name, 'pedestrians ')", "$select": "id,name", "$top": "10000"})["value"]}
    rows = []
    for rec in frame.itertuples(index=False):
        at = (rec.at + shift).to_pydatetime()
        for key, value in (("direction_1", rec.Direction_1), ("direction_2", rec.Direction_2),
                           ("total", rec.Total_of_Directions)):
            stream = names.get(f"pedestrians {rec.Location_ID} {key}")
            if stream is not None:
                rows.append(_observation(stream, at, int(value)))
    _insert(store, rows)
    return len(rows)


def hamburg(store_url: str, cache: Path) -> int:
    """The three iot.hamburg.de documents through `udp import-sta`; 0 when all went in."""
    from udp import import_sta

    parser = argparse.ArgumentParser()
    import_sta.add_arguments(parser)
    for name in HAMBURG:
        args = parser.parse_args([str(DATA / name), "--store", store_url, "--map", str(cache / "hamburg-map.json")])
        said = io.StringIO()  # its progress lines would break the demo's progress bar; shown on failure
        with contextlib.redirect_stderr(said):
            code = import_sta.run(args)
        if code != 0:
            print(said.getvalue(), file=sys.stderr)
            return code
    return 0


# (place, category, text, status, response, department): what a city's first weeks of feedback look like
FEEDBACK_EXAMPLES = [
    ((126.9769, 37.5720), "road damage", "Deep pothole on Sejong-daero in front of Gwanghwamun, right lane",
     "answered", "Filled on Tuesday; the lane will be resurfaced in spring.", "Jongno-gu road maintenance"),
    ((126.9342, 37.5284), "litter", "여의도 한강공원 편의점 앞 쓰레기통이 넘칩니다 (bins overflowing at Yeouido park)",
     "answered", "Emptied twice a day on weekends from now on.", "Yeongdeungpo-gu cleaning"),
    ((127.0276, 37.4979), "street lighting", "Two street lamps out in the alley behind Gangnam station exit 11",
     "in progress", None, None),
    ((127.0017, 37.5665), "idea", "More bike racks near the Cheonggyecheon stream, they are always full",
     "published", None, None),
    ((126.9910, 37.5510), "idea", "Benches with shade on the Namsan walking trail", "received", None, None),
]


def feedback_examples(store_url: str, config: Any) -> int:
    """A few items of citizen feedback, some answered, in a store that has none yet; how many were added."""
    from features.source import Author
    from provider_plugins.areas import load_areas
    from provider_plugins.feedback import FeedbackSource

    if config.feedback is None:
        return 0
    store = Store.open(store_url)
    try:
        source = FeedbackSource(config.feedback, store, load_areas(config.feedback))
        with store.read() as conn:
            if conn.execute(select(func.count()).select_from(source.table)).scalar_one():
                return 0
        demo = Author("demo", signed_in=True, name="demo")
        for (lon, lat), category, text, status, response, department in FEEDBACK_EXAMPLES:
            body = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                    "properties": {"category": category, "text": text}}
            fid, _ = source.create(orjson.dumps(body), demo)
            path = {"received": [], "published": ["published"], "in progress": ["published", "in progress"],
                    "answered": ["published", "answered"]}[status]
            for step in path:
                change = {"status": step, **({"response": response, "department": department}
                                             if step == "answered" else {})}
                source.update(fid, orjson.dumps(change), False, demo)
        return len(FEEDBACK_EXAMPLES)
    finally:
        store.close()


def build(store_url: str, cache: Path, sensors: list[Any], step: Step) -> None:
    """The demo's entities and history into the store: its `sensors:` first, then the rest."""
    from udp.sensors import provision

    store = Store.open(store_url)
    try:
        step("Melbourne pedestrian counters from sensors: in config.yml")
        provision(Service(store), sensors)
        step("Seoul air quality: 25 stations, 120 days of readings")
        air_quality(store)
        step("Melbourne pedestrian counters: 8 hours of per-minute history")
        melbourne_history(store)
        step("Hamburg: bike counters, traffic status, EV chargers (import-sta)")
        if hamburg(store_url, cache) != 0:
            raise RuntimeError("importing the Hamburg documents failed")
        with store.write() as (conn, _):
            _marker.create(conn, checkfirst=True)
            conn.execute(_marker.insert().values(version=VERSION, built_at=datetime.now(UTC).isoformat()))
    finally:
        store.close()

