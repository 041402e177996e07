"""The `sensors:` section of config.yml: Things, Locations, Sensors, ObservedProperties and Datastreams
made from a table at start-up, idempotently.

Each Thing made here carries `properties.udpKey` (`<entry>:<row key>`): a restart finds it by that key
and creates nothing twice; a row whose name, description, properties or place changed updates its
Thing (a moved Thing's Location is moved with it); a Datastream missing from a Thing is added.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import shapely

from apicommon.declaration import declared
from features.metadata import DATASET_KEYS, DatasetMetadata, MetadataError, parse_dataset_metadata
from features.spec import CollectionSpec, SpecError, parse_collections
from sensorthings.service import Service
from udp.errors import ConfigError

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
ENTRY_KEYS = {"things", "name", "description", "properties", "datastreams", "access", "layer", "crs", "x", "y",
              "wkt", "latlon", "id", "encoding", "key", "title", "keywords", *DATASET_KEYS}
DATASTREAM_KEYS = {"name", "description", "observedProperty", "unit", "observationType", "sensor"}


class _Keep(dict):
    """Template values: a name that is not a column stays as written (UCUM's `{count}`)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, row: dict[str, Any]) -> str:
    """A template with the row's columns put in."""
    try:
        return string.Formatter().vformat(template, (), _Keep({k: "" if v is None else v for k, v in row.items()}))
    except (ValueError, IndexError, AttributeError):
        return template


@dataclass(frozen=True)
class DatastreamTemplate:
    """One Datastream per Thing."""

    name: str
    observed_property: str
    unit: dict[str, str]
    description: str = ""
    observation_type: str = "OM_Measurement"
    sensor: str = "{name} sensor"


@dataclass(frozen=True)
class SensorsEntry:
    """One `sensors:` entry: a table and what to make of each row."""

    index: int
    table: CollectionSpec
    name: str
    description: str
    properties: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    datastreams: tuple[DatastreamTemplate, ...] = ()
    key: str | None = None  # the column that identifies a row; else the table's id column or the name
    access: str = "public"
    title: str = ""  # the catalogue record's title; "" when not declared
    keywords: tuple[str, ...] = ()
    metadata: DatasetMetadata = field(default=DatasetMetadata(), hash=False, compare=False)


def parse_sensors(doc: Any, base: Path) -> list[SensorsEntry]:
    """The `sensors:` list as entries; ConfigError names the key path."""
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise ConfigError("sensors: must be a list of entries, each with `things:` (a table) and `name:`")
    out = []
    for i, entry in enumerate(doc):
        where = f"sensors[{i}]"
        declared(entry, where, ENTRY_KEYS, ConfigError)
        if "things" not in entry or "name" not in entry:
            raise ConfigError(f"{where}: needs `things` (the table) and `name` (a template)")
        source = {k: entry[k] for k in ("layer", "crs", "x", "y", "wkt", "latlon", "id", "encoding") if k in entry}
        try:
            table = parse_collections({f"sensors-{i}": {"source": entry["things"], **source}}, base)[f"sensors-{i}"]
        except SpecError as exc:
            raise ConfigError(str(exc).replace(f"collections.sensors-{i}", where)) from None
        streams = []
        for j, ds in enumerate(entry.get("datastreams") or []):
            dw = f"{where}.datastreams[{j}]"
            declared(ds, dw, DATASTREAM_KEYS, ConfigError, required=("name", "observedProperty", "unit"))
            unit = ds["unit"]
            if not isinstance(unit, dict) or not {"name", "symbol", "definition"} <= set(unit):
                raise ConfigError(f"{dw}.unit: needs name, symbol and definition")
            kind = str(ds.get("observationType", "OM_Measurement"))
            if kind.rsplit("/", 1)[-1] not in ("OM_Measurement", "OM_CountObservation", "OM_CategoryObservation",
                                               "OM_TruthObservation", "OM_Observation"):
                raise ConfigError(f"{dw}.observationType: unknown {kind!r}")
            streams.append(DatastreamTemplate(str(ds["name"]), str(ds["observedProperty"]),
                                              {k: str(v) for k, v in unit.items()}, str(ds.get("description", "")),
                                              kind.rsplit("/", 1)[-1], str(ds.get("sensor", "{name} sensor"))))
        props = entry.get("properties") or {}
        if not isinstance(props, dict):
            raise ConfigError(f"{where}.properties: must be a mapping of name to template")
        access = entry.get("access", "public")
        if access not in ("public", "internal"):
            raise ConfigError(f"{where}.access: must be public or internal")
        keywords = entry.get("keywords", [])
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ConfigError(f"{where}.keywords: must be a list of strings")
        try:
            metadata = parse_dataset_metadata(entry, where)
        except MetadataError as exc:
            raise ConfigError(str(exc)) from None
        out.append(SensorsEntry(i, table, str(entry["name"]), str(entry.get("description", "")),
                                {str(k): str(v) for k, v in props.items()}, tuple(streams),
                                None if entry.get("key") is None else str(entry["key"]), access,
                                str(entry.get("title", "")), tuple(keywords), metadata))
    return out


@dataclass
class Outcome:
    """What provisioning did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    datastreams: int = 0
    problems: list[str] = field(default_factory=list)


def provision(service: Service, entries: list[SensorsEntry], progress: Any = None) -> Outcome:
    """Make or update the entities of every entry (progress(done, total) after each row)."""
    from provider_plugins.table import load

    out = Outcome()
    for entry in entries:
        table = load(entry.table)
        rows = table.columns.astype(object).where(table.columns.notna(), None).to_dict("records")
        existing = _existing(service, entry)
        ops = _names(service)
        for n, (row, geom, fid) in enumerate(zip(rows, table.geoms, table.ids.tolist(), strict=True)):
            key = f"{entry.index}:{row.get(entry.key) if entry.key else fid}"
            try:
                _one(service, entry, row, geom, key, existing.get(key), ops, out)
            except RuntimeError as exc:
                out.problems.append(f"sensors[{entry.index}] row {n + 1}: {exc}")
            if progress is not None:
                progress(n + 1, len(rows))
    return out


def _existing(service: Service, entry: SensorsEntry) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    skip = 0
    while True:
        page = service.call("GET", "Things", **{
            "$filter": f"startswith(properties/udpKey, '{entry.index}:')", "$top": "10000", "$skip": str(skip),
            "$expand": "Locations($top=1),Datastreams($select=id,name;$top=10000)"})
        for thing in page["value"]:
            found[str(thing["properties"]["udpKey"])] = thing
        if "@iot.nextLink" not in page:
            return found
        skip += len(page["value"])


def _names(service: Service) -> dict[str, dict[str, int]]:
    """Ids of ObservedProperties and Sensors by name (reused, never duplicated)."""
    out: dict[str, dict[str, int]] = {"ObservedProperties": {}, "Sensors": {}}
    for kind in out:
        for e in service.call("GET", kind, **{"$select": "id,name", "$top": "10000"})["value"]:
            out[kind].setdefault(e["name"], e["@iot.id"])
    return out


def _location(name: str, geom: Any) -> dict[str, Any] | None:
    if geom is None or shapely.is_missing(geom) or shapely.is_empty(geom):
        return None
    # through JSON, so that it compares equal with what the store gives back
    return {"name": name, "description": f"location of {name}", "encodingType": "application/geo+json",
            "location": orjson.loads(orjson.dumps(shapely.geometry.mapping(geom)))}


def _ensure(service: Service, ops: dict[str, dict[str, int]], kind: str, name: str) -> int:
    """The id of the ObservedProperty or Sensor with this name, made when there is none."""
    if name not in ops[kind]:
        body = {"name": name, "description": name, "definition": name} if kind == "ObservedProperties" else {
            "name": name, "description": name, "encodingType": "text/plain", "metadata": name}
        ops[kind][name] = service.call("POST", kind, body)["@iot.id"]
    return ops[kind][name]


def _datastream(service: Service, tpl: DatastreamTemplate, row: dict[str, Any], thing_name: str,
                ops: dict[str, dict[str, int]]) -> dict[str, Any]:
    name = fill(tpl.name, row)
    return {
        "name": name, "description": fill(tpl.description, row) or name, "observationType": OM + tpl.observation_type,
        "unitOfMeasurement": {k: fill(v, row) for k, v in tpl.unit.items()},
        "ObservedProperty": {"@iot.id": _ensure(service, ops, "ObservedProperties", fill(tpl.observed_property, row))},
        "Sensor": {"@iot.id": _ensure(service, ops, "Sensors", fill(tpl.sensor, {**row, "name": thing_name}))},
    }


def _one(service: Service, entry: SensorsEntry, row: dict[str, Any], geom: Any, key: str,
         thing: dict[str, Any] | None, ops: dict[str, dict[str, int]], out: Outcome) -> None:
    name = fill(entry.name, row)
    props = {k: fill(v, row) for k, v in entry.properties.items()} | {"udpKey": key}
    if entry.access == "internal":
        props["udpAccess"] = "internal"
    desc = fill(entry.description, row) or name
    location = _location(name, geom)
    if thing is None:
        body: dict[str, Any] = {"name": name, "description": desc, "properties": props,
                                "Datastreams": [_datastream(service, t, row, name, ops) for t in entry.datastreams]}
        if location is not None:
            body["Locations"] = [location]
        service.call("POST", "Things", body)
        out.created += 1
        out.datastreams += len(entry.datastreams)
        return
    tid = thing["@iot.id"]
    changed = False
    if thing.get("name") != name or thing.get("description") != desc or thing.get("properties") != props:
        service.call("PATCH", f"Things({tid})", {"name": name, "description": desc, "properties": props})
        changed = True
    locs = thing.get("Locations") or []
    if location is not None and not locs:
        service.call("POST", f"Things({tid})/Locations", location)
        changed = True
    elif location is not None and locs[0].get("location") != location["location"]:
        service.call("PATCH", f"Locations({locs[0]['@iot.id']})", {"location": location["location"]})
        changed = True
    have = {ds["name"] for ds in thing.get("Datastreams") or []}
    for tpl in entry.datastreams:
        if fill(tpl.name, row) not in have:
            ds = _datastream(service, tpl, row, name, ops)
            service.call("POST", "Datastreams", {**ds, "Thing": {"@iot.id": tid}})
            out.datastreams += 1
            changed = True
    if changed:
        out.updated += 1
    else:
        out.unchanged += 1
