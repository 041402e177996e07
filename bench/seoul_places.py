"""Real Seoul locations for the features benchmarks: the Ttareungyi bike stations, Gangnam's CCTV cameras and the
S-DoT sensors (/work/shared/data/seoul)."""

from __future__ import annotations

import csv
from pathlib import Path

SEOUL = Path("/work/shared/data/seoul")
BIKES = SEOUL / "mobility" / "ttareungyi_bike_stations.csv"
CCTV = SEOUL / "sensors" / "gangnam_cctv_locations.csv"
SDOT = SEOUL / "sensors" / "sdot_sensor_locations.csv"


def _district(address: str) -> str:
    """The gu of a Seoul address ("서울특별시 강남구 …" → "강남구"); "" when there is none."""
    parts = address.split()
    return parts[1] if len(parts) > 1 and parts[1].endswith("구") else ""


def real_points() -> list[tuple[str, str, int, float, float]]:
    """(name, district, units, lon, lat) of every real point that has coordinates."""
    out: list[tuple[str, str, int, float, float]] = []
    with BIKES.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["place"] == "합계" or not row["latitude"] or not row["longitude"]:
                continue
            out.append((row["name"].strip() or f"station {row['id']}", row["place"].strip(),
                        int(row["numOfUnits"] or 0), float(row["longitude"]), float(row["latitude"])))
    with CCTV.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            if not row["latitude"] or not row["longitude"]:
                continue
            address = (row["new_address"] or row["old_address"]).strip()
            out.append((f"CCTV {address}" if address else "CCTV", _district(address) or "강남구",
                        int(row["count"] or 0), float(row["longitude"]), float(row["latitude"])))
    if SDOT.exists():
        bikes = [(p[3], p[4], p[1]) for p in out]  # a sensor's district: its nearest bike station's
        with SDOT.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    lat, lon = float(row["위도"]), float(row["경도"])
                except (KeyError, ValueError):
                    continue
                near = min(bikes, key=lambda b: (b[0] - lon) ** 2 + (b[1] - lat) ** 2)[2] if bikes else ""
                out.append((f"S-DoT {row['시리얼']}", near, 1, lon, lat))
    return out
