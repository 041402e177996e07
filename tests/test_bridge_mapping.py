"""Bridge rules and message mapping, without a broker: every payload kind and every refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from mqtt_bridge.mapping import Unmappable, map_message, match
from mqtt_bridge.rules import RuleError, parse_rules

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RULES = parse_rules([
    {"topic": "city/pedestrians/{sensor}/count", "datastream": "pedestrians {sensor} total", "result": "$.count",
     "phenomenonTime": "$.time"},
    {"topic": "cctv/{camera}/counts", "each": "$.counts", "datastream": "cctv {camera} {key}",
     "phenomenonTime": "$.ts"},
    {"topic": "cctv/{camera}/all", "multidatastream": "cctv {camera}",
     "result": ["$.counts.person", "$.counts.bicycle"]},
    {"topic": "air/{station}/csv", "csv": ["phenomenonTime", "result"], "datastream": "pm10 {station}"},
    {"topic": "raw/{id}", "datastream_id": "{id}", "max_payload": 100},
])


def one(topic: str, payload: bytes) -> list:
    rule, captures = match(RULES, topic)
    return map_message(rule, captures, payload, NOW)


def test_json_with_captures_and_time() -> None:
    [r] = one("city/pedestrians/41/count", b'{"count": 17, "time": "2026-01-01T10:00:00+11:00"}')
    assert (r.stream, r.result, r.phenomenon_start) == ("pedestrians 41 total", 17, datetime(2025, 12, 31, 23,
                                                                                               tzinfo=UTC))


def test_cctv_counts_make_one_observation_per_class() -> None:
    msg = {"camera": "GN-0001", "ts": 1767225600, "counts": {"person": 12, "bicycle": 3}}
    readings = one("cctv/GN-0001/counts", orjson.dumps(msg))
    assert {(r.stream, r.result) for r in readings} == {("cctv GN-0001 person", 12), ("cctv GN-0001 bicycle", 3)}
    assert readings[0].phenomenon_start == datetime(2026, 1, 1, tzinfo=UTC)
    [multi] = one("cctv/GN-0001/all", orjson.dumps(msg))
    assert multi.multi and multi.result == [12, 3] and multi.stream == "cctv GN-0001"


def test_csv_and_bare_values() -> None:
    [r] = one("air/seoul-1/csv", b"2026-01-01T00:00:00Z, 42.5")
    assert r.result == 42.5 and r.stream == "pm10 seoul-1"
    assert one("raw/7", b"12")[0].result == 12
    assert one("raw/7", b"charging")[0].result == "charging"
    [r] = one("raw/7", b"12.5")
    assert r.by_id and r.stream == "7" and r.phenomenon_start == NOW


@pytest.mark.parametrize("topic,payload,reason", [
    ("city/pedestrians/41/count", b"{nope", "not JSON"),
    ("city/pedestrians/41/count", b'{"time": "2026-01-01T00:00:00Z"}', "missing field"),
    ("city/pedestrians/41/count", b'{"count": 1, "time": "yesterday"}', "wrong type"),
    ("cctv/x/counts", b'{"counts": 5, "ts": 1}', "wrong type"),
    ("raw/7", b"\xff\xd8\xff\xe0" + b"\x00" * 20, "image"),
    ("raw/7", b"\x89PNG\r\n\x1a\n", "image"),
    ("raw/7", b"x" * 101, "over the limit"),
    ("raw/7", b"\x80\x81", "binary"),
    ("air/s/csv", b"1,2,3", "CSV row"),
    ("city/pedestrians/41/count", orjson.dumps({"count": "A" * 600, "time": "2026-01-01T00:00:00Z"}), "image"),
])
def test_unmappable_messages_say_why(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Unmappable, match=reason):
        one(topic, payload)


def test_unknown_topic_has_no_rule() -> None:
    assert match(RULES, "elsewhere/1") is None


@pytest.mark.parametrize("raw,where", [
    ([{"datastream": "x"}], "bridge[0].topic"),
    ([{"topic": "a/{b}", "datastream": "{c}"}], "bridge[0].datastream"),
    ([{"topic": "a", "datastream": "x", "result": "$[[["}], "bridge[0].result"),
    ([{"topic": "a", "datastream": "x", "colour": 1}], "bridge[0].colour"),
    ([{"topic": "a", "datastream": "x", "datastream_id": 1}], "bridge[0]"),
    ([{"topic": "a", "multidatastream": "x", "result": "$.a"}], "bridge[0].result"),
    ([{"topic": "a", "datastream": "x", "csv": ["when"]}], "bridge[0].csv"),
])
def test_bad_rules_name_their_key(raw: list, where: str) -> None:
    with pytest.raises(RuleError, match=where.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_rules(raw)
