"""The `bridge:` section of config.yml parsed into typed rules: which device topics map to which
Datastreams, and where in a payload the result and times are.

```yaml
bridge:
  - topic: city/pedestrians/{sensor}/count     # {name} matches one topic level
    datastream: "pedestrians {sensor} total"   # by name (a template), or datastream_id: 7
    result: $.count                            # JSONPath; without it the payload itself is the result
    phenomenonTime: $.time                     # optional; the arrival time otherwise
  - topic: cctv/{camera}/counts                # {"camera": "GN-0001", "ts": ..., "counts": {"person": 12}}
    each: $.counts                             # one Observation per member: {key} names it
    datastream: "cctv {camera} {key}"
    phenomenonTime: $.ts
  - topic: cctv/{camera}/all
    multidatastream: "cctv {camera}"           # one MultiDatastream Observation, result an array
    result: [$.counts.person, $.counts.bicycle]
  - topic: river/{gauge}/level
    datastream: "water level {gauge}"
    result: $.cm
    forward: https://frost.example.org/FROST-Server/v1.1   # written there (CreateObservations), not here
  - topic: air/{station}/csv                   # "2024-05-01T10:00:00Z,12.5"
    csv: [phenomenonTime, result]
    datastream: "pm10 {station}"
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath

from apicommon.declaration import declared

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEYS = {"topic", "datastream", "datastream_id", "multidatastream", "multidatastream_id", "result", "each",
        "phenomenonTime", "resultTime", "parameters", "csv", "qos", "max_payload", "forward"}
CSV_FIELDS = ("phenomenonTime", "resultTime", "result", "ignore")


class RuleError(ValueError):
    """A bridge rule that cannot work; the message starts with the key's path."""


@dataclass(frozen=True)
class Template:
    """A string with `{name}` placeholders filled from topic captures and `{key}`."""

    text: str
    names: tuple[str, ...]

    def fill(self, values: dict[str, str]) -> str:
        """The text with every placeholder replaced."""
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


@dataclass(frozen=True)
class Rule:
    """One device topic pattern and how its messages become Observations."""

    index: int
    topic: str
    pattern: re.Pattern[str]
    subscription: str  # the pattern as an MQTT subscription (`{x}` → `+`)
    captures: tuple[str, ...]
    stream: Template | None = None  # a Datastream or MultiDatastream name
    stream_id: Template | None = None  # ... or its id (a template: `{id}` may come from the topic)
    multi: bool = False
    result: Any = None  # a JSONPath, a list of JSONPaths (MultiDatastream), or None: the payload itself
    each: Any = None
    phenomenon_time: Any = None
    result_time: Any = None
    parameters: dict[str, Any] = field(default_factory=dict)
    csv: tuple[str, ...] | None = None
    qos: int = 1
    max_payload: int = 64 * 1024
    forward: str | None = None  # write to this external SensorThings service root (FROST, istSOS) instead


_SIMPLE_PATH = re.compile(r"^\$(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class FieldPath:
    """A JSONPath of plain member names (`$.counts.person`), looked up directly: the common case,
    and on the hot path of every message, where a general JSONPath engine costs ten times more."""

    text: str
    keys: tuple[str, ...]

    def find(self, doc: Any) -> list[Any]:
        """[a match with .value] or [] (the interface of jsonpath-ng's find)."""
        for key in self.keys:
            if not isinstance(doc, dict) or key not in doc:
                return []
            doc = doc[key]
        return [_Found(doc)]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class _Found:
    value: Any


def _path(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        raise RuleError(f"{where}: expected a JSONPath such as $.value, got {value!r}")
    if _SIMPLE_PATH.match(value):
        return FieldPath(value, tuple(value[2:].split(".")))
    try:
        return parse_jsonpath(value)
    except (JsonPathParserError, Exception) as exc:  # jsonpath-ng raises several types
        raise RuleError(f"{where}: bad JSONPath {value!r}: {exc}") from None


def _template(value: Any, where: str, known: set[str]) -> Template:
    text = str(value)
    names = tuple(_PLACEHOLDER.findall(text))
    unknown = [n for n in names if n not in known]
    if unknown:
        captured = ", ".join(sorted(known))
        raise RuleError(f"{where}: {{{unknown[0]}}} is not captured by the topic (captures: {captured})")
    return Template(text, names)


def parse_rule(raw: Any, index: int) -> Rule:
    """One rule from its config mapping."""
    where = f"bridge[{index}]"
    declared(raw, where, KEYS, RuleError)
    topic = raw.get("topic")
    if not isinstance(topic, str) or not topic or "#" in topic:
        raise RuleError(f"{where}.topic: a topic pattern such as city/{{sensor}}/count is required")
    captures = tuple(_PLACEHOLDER.findall(topic))
    regex = "^"
    for level in topic.split("/"):
        part = re.escape(level)
        for name in _PLACEHOLDER.findall(level):
            part = part.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
        regex += part + "/"
    pattern = re.compile(regex[:-1] + "$")
    subscription = "/".join("+" if _PLACEHOLDER.search(level) else level for level in topic.split("/"))
    known = set(captures) | ({"key"} if "each" in raw else set())
    targets = [k for k in ("datastream", "datastream_id", "multidatastream", "multidatastream_id") if k in raw]
    if len(targets) != 1:
        raise RuleError(f"{where}: name exactly one of datastream, datastream_id, multidatastream, multidatastream_id")
    target = targets[0]
    multi = target.startswith("multi")
    by_id = target.endswith("_id")
    tpl = _template(raw[target], f"{where}.{target}", known)
    result: Any = None
    if "result" in raw:
        if multi:
            if not isinstance(raw["result"], list) or not raw["result"]:
                raise RuleError(f"{where}.result: a MultiDatastream takes a list of JSONPaths")
            result = tuple(_path(p, f"{where}.result[{i}]") for i, p in enumerate(raw["result"]))
        else:
            result = _path(raw["result"], f"{where}.result")
    csv = None
    if "csv" in raw:
        columns = raw["csv"]
        if not isinstance(columns, list) or "result" not in columns or any(c not in CSV_FIELDS for c in columns):
            raise RuleError(f"{where}.csv: a list of column names from {', '.join(CSV_FIELDS)} including result")
        csv = tuple(raw["csv"])
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise RuleError(f"{where}.parameters: a mapping of parameter name to JSONPath")
    qos = raw.get("qos", 1)
    if qos not in (0, 1, 2):
        raise RuleError(f"{where}.qos: 0, 1 or 2")
    max_payload = raw.get("max_payload", 64 * 1024)
    if not isinstance(max_payload, int) or max_payload <= 0:
        raise RuleError(f"{where}.max_payload: a positive number of bytes")
    forward = raw.get("forward")
    if forward is not None and (not isinstance(forward, str) or not forward.startswith(("http://", "https://"))):
        raise RuleError(f"{where}.forward: the service root of a SensorThings server, e.g. https://host/FROST/v1.1")
    return Rule(
        forward=forward.rstrip("/") if forward else None,
        index=index, topic=topic, pattern=pattern, subscription=subscription, captures=captures,
        stream=None if by_id else tpl, stream_id=tpl if by_id else None, multi=multi, result=result,
        each=_path(raw["each"], f"{where}.each") if "each" in raw else None,
        phenomenon_time=_path(raw["phenomenonTime"], f"{where}.phenomenonTime") if "phenomenonTime" in raw else None,
        result_time=_path(raw["resultTime"], f"{where}.resultTime") if "resultTime" in raw else None,
        parameters={k: _path(v, f"{where}.parameters.{k}") for k, v in params.items()},
        csv=csv, qos=qos, max_payload=max_payload,
    )


def parse_rules(raw: Any) -> list[Rule]:
    """Every rule of the `bridge:` section."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RuleError("bridge: must be a list of rules")
    return [parse_rule(item, i) for i, item in enumerate(raw)]
