"""Recorded readings replayed as live device messages, shifted to now, at a chosen speed-up: the demo's
live feed and the load generator for benchmarks.

Formats, told apart by their content:
- Melbourne's per-minute pedestrian counts (CSV with `Location_ID`, `Sensing_DateTime`,
  `Direction_1`, `Direction_2`, `Total_of_Directions`) → `city/pedestrians/{Location_ID}/count` with
  `{"time": …, "counts": {"direction_1": …, "direction_2": …, "total": …}}`, the shape CCTV and
  counter analytics publish;
- the Hamburg observation stream (JSON lines, optionally gzipped, with `source`, `datastream_id`,
  `phenomenon_time`, `result_time`, `result`) → `hamburg/{source}/{datastream_id}` with
  `{"result": …, "phenomenonTime": …, "resultTime": …}`.
"""

from __future__ import annotations

import csv
import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sensorthings.mqtt.client import publish
from sensorthings.times import format_instant, parse_time_or_interval


@dataclass(frozen=True)
class Record:
    """One recorded reading: when it was taken, where it goes, what it says (times still recorded)."""

    at: datetime
    topic: str
    payload: dict[str, Any]


class ReplayError(ValueError):
    """A file that is none of the replayable formats."""


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8-sig", newline="")


def melbourne(path: Path) -> Iterator[Record]:
    """Per-minute pedestrian counts as counter messages."""
    with _open_text(path) as handle:
        for row in csv.DictReader(handle):
            at = datetime.fromisoformat(row["Sensing_DateTime"]).astimezone(UTC)
            counts = {"direction_1": int(row["Direction_1"]), "direction_2": int(row["Direction_2"]),
                      "total": int(row["Total_of_Directions"])}
            yield Record(at, f"city/pedestrians/{row['Location_ID']}/count", {"time": at, "counts": counts})


def hamburg(path: Path) -> Iterator[Record]:
    """The iot.hamburg.de observation stream as device messages."""
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            doc = orjson.loads(line)
            start, end = parse_time_or_interval(doc["phenomenon_time"])
            payload: dict[str, Any] = {"result": doc["result"], "phenomenonTime": (start, end)}
            if doc.get("result_time"):
                payload["resultTime"] = parse_time_or_interval(doc["result_time"])[0]
            yield Record(start, f"hamburg/{doc['source']}/{doc['datastream_id']}", payload)


def read(path: Path) -> list[Record]:
    """Every record of a file, oldest first."""
    with _open_text(path) as handle:
        head = handle.readline()
    if head.startswith("Location_ID") or "Sensing_DateTime" in head:
        records = list(melbourne(path))
    elif head.lstrip().startswith("{") and "datastream_id" in head:
        records = list(hamburg(path))
    else:
        raise ReplayError(f"{path}: neither Melbourne per-minute counts (CSV) nor the Hamburg stream (JSON lines)")
    records.sort(key=lambda r: r.at)
    return records


def _shift(value: Any, offset: timedelta) -> Any:
    if isinstance(value, datetime):
        return format_instant(value + offset)
    if isinstance(value, tuple):
        start, end = value
        return format_instant(start + offset) if end is None else \
            f"{format_instant(start + offset)}/{format_instant(end + offset)}"
    return value


def message(record: Record, offset: timedelta) -> bytes:
    """A record's payload with its times moved by `offset`."""
    return orjson.dumps({k: _shift(v, offset) for k, v in record.payload.items()})


@dataclass
class Progress:
    """How far a replay got."""

    published: int = 0
    dropped: int = 0  # not taken: the broker made no room for them while it was there (sensorthings.mqtt.client)
    seconds: float = 0.0


def replay(records: list[Record], client: mqtt.Client, *, speed: float = 60.0, rate: float | None = None,
           qos: int = 1, limit: int | None = None, now: datetime | None = None, report: Any = None,
           live: bool = False, stop: threading.Event | None = None) -> Progress:
    """Publish the records as if they happened now: paced by their own times divided by `speed`, or at a
    fixed `rate` of messages per second. The last record's time is now: the replay catches up with it.
    With `live`, each message carries the moment it is published instead (a demo's live feed, where a
    speed-up must not put readings hours in the past). `stop`: ends it before the next record."""
    if limit is not None:
        records = records[:limit]
    progress = Progress()
    if not records:
        return progress
    first, last = records[0].at, records[-1].at
    wall0 = time.monotonic()
    span = (last - first).total_seconds() / speed if rate is None else len(records) / rate
    # the last reading lands at the moment the replay ends
    offset = (now or datetime.now(UTC)) + timedelta(seconds=span) - last
    for i, record in enumerate(records):
        due = (record.at - first).total_seconds() / speed if rate is None else i / rate
        wait = wall0 + due - time.monotonic()
        if stop is not None:
            if stop.wait(max(wait, 0.0)):
                break
        elif wait > 0:
            time.sleep(wait)
        shift = datetime.now(UTC) - record.at if live else offset
        if not publish(client, record.topic, message(record, shift), qos):
            progress.dropped += 1
            continue
        progress.published += 1
        if report is not None and progress.published % 1000 == 0:
            report(progress.published, len(records))
    progress.seconds = time.monotonic() - wall0
    return progress
