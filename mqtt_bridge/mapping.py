"""One device message mapped by its rule to readings: which Datastream, which result, which times.

Everything that makes a message unusable raises `Unmappable` with the reason the dead-letter
store keeps: not JSON, a missing field, a payload over the size limit, anything that looks like
an image rather than a count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from mqtt_bridge.rules import Rule
from sensorthings.times import parse_time_or_interval

# file signatures of images and video frames: cameras must send counts, never pictures
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x18ftyp",
                b"\x00\x00\x00\x1cftyp", b"\x00\x00\x00 ftyp")
_BASE64_BLOB = re.compile(r"^(data:image/[a-z+]+;base64,)?[A-Za-z0-9+/=\s]{512,}$")


class Unmappable(ValueError):
    """A message that cannot become Observations; the message is the reason."""


@dataclass
class Reading:
    """One Observation to be: its (Multi)Datastream by name or id, and its values."""

    stream: str
    by_id: bool
    multi: bool
    result: Any
    phenomenon_start: datetime
    phenomenon_end: datetime | None = None
    result_time: datetime | None = None
    parameters: dict[str, Any] | None = field(default=None)
    forward: str | None = None  # an external SensorThings service root to write to instead


def match(rules: list[Rule], topic: str) -> tuple[Rule, dict[str, str]] | None:
    """The first rule whose pattern the topic matches, with its captures."""
    for rule in rules:
        m = rule.pattern.match(topic)
        if m:
            return rule, m.groupdict()
    return None


def _looks_like_image(payload: bytes) -> bool:
    return payload.startswith(_IMAGE_MAGIC) or (payload[:4] == b"RIFF" and payload[8:12] == b"WEBP")


def _first(path: Any, doc: Any, what: str) -> Any:
    try:
        found = path.find(doc)
    # jsonpath-ng indexes whatever it meets: $.counts[0] on an object is a KeyError, on a number a TypeError
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise Unmappable(f"missing field: {what} ({path}) does not fit the message's shape") from None
    if not found:
        raise Unmappable(f"missing field: {what} ({path}) is not in the message")
    return found[0].value


def _time(value: Any, what: str) -> tuple[datetime, datetime | None]:
    if isinstance(value, bool):
        raise Unmappable(f"wrong type: {what} is a boolean, not a time")
    if isinstance(value, int | float):
        # epoch seconds, or milliseconds when the number is too large for seconds
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC), None
        except (OverflowError, OSError, ValueError):
            raise Unmappable(f"wrong type: {what} {value!r} is not a time") from None
    try:
        return parse_time_or_interval(value)
    except ValueError as exc:
        raise Unmappable(f"wrong type: {what}: {exc}") from None


def _check_result(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 512 and _BASE64_BLOB.match(value):
        raise Unmappable("looks like an image (a base64 blob), not a count")
    return value


def decode(rule: Rule, payload: bytes) -> Any:
    """The payload as a value: JSON, a CSV row (a list), or a bare number or word."""
    if len(payload) > rule.max_payload:
        raise Unmappable(f"payload of {len(payload)} bytes over the limit of {rule.max_payload}")
    if _looks_like_image(payload):
        raise Unmappable("looks like an image, not a count")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Unmappable("binary payload, not UTF-8 text") from None
    if rule.csv is not None:
        cells = [c.strip() for c in re.split(r"[,;\t]", text.strip())]
        if len(cells) != len(rule.csv):
            raise Unmappable(f"CSV row has {len(cells)} fields, the rule names {len(rule.csv)}")
        return cells
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        if rule.result is None and rule.each is None and text.strip() and "\n" not in text.strip():
            return text.strip()  # a bare word, e.g. a status such as "charging"
        raise Unmappable("not JSON") from None


def map_message(rule: Rule, captures: dict[str, str], payload: bytes, arrival: datetime) -> list[Reading]:
    """The readings one message carries under its rule."""
    doc = decode(rule, payload)
    if rule.csv is not None:
        return [_csv_reading(rule, captures, doc, arrival)]
    start, end = _time(_first(rule.phenomenon_time, doc, "phenomenonTime"), "phenomenonTime") \
        if rule.phenomenon_time is not None else (arrival, None)
    result_time = _time(_first(rule.result_time, doc, "resultTime"), "resultTime")[0] \
        if rule.result_time is not None else None
    parameters = {k: _first(p, doc, f"parameters.{k}") for k, p in rule.parameters.items()} or None
    items: list[tuple[str | None, Any]]
    if rule.each is not None:
        members = _first(rule.each, doc, "each")
        if isinstance(members, dict):
            items = list(members.items())
        elif isinstance(members, list):
            items = [(str(i), v) for i, v in enumerate(members)]
        else:
            raise Unmappable(f"wrong type: each ({rule.each}) is {type(members).__name__}, not an object or list")
        if not items:
            raise Unmappable("missing field: each found no members")
    else:
        items = [(None, doc)]
    readings = []
    for key, value in items:
        if rule.multi:
            result: Any = [_first(p, value, "result") for p in rule.result]
        elif rule.result is not None:
            result = _first(rule.result, value, "result")
        else:
            result = value
            if isinstance(result, dict):
                raise Unmappable("the payload is an object: the rule needs result: $.field")
        values = dict(captures)
        if key is not None:
            values["key"] = str(key)
        stream = (rule.stream_id or rule.stream).fill(values)  # type: ignore[union-attr]
        readings.append(Reading(stream, rule.stream_id is not None, rule.multi, _check_result(result), start, end,
                                result_time, parameters, rule.forward))
    return readings


def _csv_reading(rule: Rule, captures: dict[str, str], cells: list[str], arrival: datetime) -> Reading:
    row = dict(zip(rule.csv or (), cells, strict=True))
    raw = row["result"]
    try:
        result: Any = int(raw)
    except ValueError:
        try:
            result = float(raw)
        except ValueError:
            result = raw
    start, end = _time(row["phenomenonTime"], "phenomenonTime") if "phenomenonTime" in row else (arrival, None)
    result_time = _time(row["resultTime"], "resultTime")[0] if "resultTime" in row else None
    stream = (rule.stream_id or rule.stream).fill(captures)  # type: ignore[union-attr]
    return Reading(stream, rule.stream_id is not None, rule.multi, result, start, end, result_time,
                   forward=rule.forward)
