"""Entity bodies (JSON from POST, PUT, PATCH, MQTT) parsed into typed drafts the store trusts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sensorthings.geometry import GEOJSON_TYPES, geometry_of, to_wkb
from sensorthings.model import OBSERVATION, EntityType, Kind, Nav, NavKind, reverse_nav, target_of
from sensorthings.results import encode_result
from sensorthings.times import parse_instant, parse_interval, parse_time_or_interval

MAX_DEPTH = 16


class BodyError(ValueError):
    """A body that does not describe a valid entity; the message names the property."""


@dataclass
class Ref:
    """A link to an entity that exists already (`{"@iot.id": 7}`)."""

    entity: EntityType
    id: int


@dataclass
class Draft:
    """An entity to write: column values ready for the store, and the entities to link or create."""

    entity: EntityType
    values: dict[str, Any]
    links: dict[str, list[Draft | Ref]] = field(default_factory=dict)
    id: int | None = None


def parse_id(value: Any, where: str) -> int:
    """An entity id from JSON (integers, or digits as a string)."""
    if isinstance(value, bool):
        raise BodyError(f"{where}: @iot.id must be an integer")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 40:
        try:
            value = int(value)
        except ValueError:  # isdigit() holds for digits int() refuses, such as '²'
            raise BodyError(f"{where}: @iot.id must be an integer, got {value!r}") from None
    if isinstance(value, int):
        # ids are BIGINT columns: the database driver would refuse a larger number outright
        if not -(2**63) <= value < 2**63:
            raise BodyError(f"{where}: @iot.id {value} is out of range (64-bit integers)")
        return value
    raise BodyError(f"{where}: @iot.id must be an integer, got {value!r}")


def _is_annotation(key: str) -> bool:
    # links and counts a server wrote (Hamburg's and FROST's documents carry them); never data
    return "@iot." in key


Converter = Callable[[Any, dict[str, Any]], None]


def convert_value(entity: EntityType, name: str, value: Any, values: dict[str, Any]) -> None:
    """Put one property's value into `values` as the store's columns."""
    converters(entity)[name](value, values)


_CONVERTERS: dict[str, dict[str, Converter]] = {}


def converter(entity: EntityType, name: str) -> Converter:
    """What puts a value of the property `name` into a row's columns (a BodyError names the property)."""
    return converters(entity)[name]


def converters(entity: EntityType) -> dict[str, Converter]:
    """Per property of `entity`, what puts its value into a row's columns. Made once per entity type:
    CreateObservations converts a million values a minute, each through the same few, and devices post one
    Observation at a time by the thousand a second."""
    found = _CONVERTERS.get(entity.name)  # by name: hashing an entity's properties costs more than converting a value
    if found is None:
        found = _CONVERTERS[entity.name] = {p.name: _converter(entity, p.name) for p in entity.props}
    return found


def _converter(entity: EntityType, name: str) -> Converter:
    prop = entity.prop_by_name[name]
    col, kind = prop.column, prop.kind
    where = f"{entity.name}.{name}"

    def null(values: dict[str, Any]) -> None:
        # a null result is a value (nothing was measured); other required properties need one
        if prop.required and kind is not Kind.RESULT:
            raise BodyError(f"{where} must not be null")
        _set_null(kind, col, values)

    def typed(check: Callable[[Any], bool], message: str) -> Converter:
        def convert(value: Any, values: dict[str, Any]) -> None:
            if value is None:
                null(values)
            elif not check(value):
                raise BodyError(f"{where} {message}")
            else:
                values[col] = value
        return convert

    def parsed(parse: Callable[[Any], Any], *cols: str) -> Converter:
        one, first = len(cols) == 1, cols[0]

        def convert(value: Any, values: dict[str, Any]) -> None:
            if value is None:
                null(values)
                return
            try:
                out = parse(value)
            except BodyError:
                raise
            except ValueError as exc:
                raise BodyError(f"{where}: {exc}") from None
            if one:
                values[first] = out
            else:
                values.update(zip(cols, out, strict=True))
        return convert

    if kind is Kind.TEXT:
        return typed(lambda v: isinstance(v, str), "must be a string")
    if kind is Kind.JSON:
        return typed((lambda v: isinstance(v, dict)) if name == "properties" else (lambda _v: True),
                     "must be a JSON object")
    if kind is Kind.TIME:
        return parsed(parse_instant, col)
    if kind is Kind.INTERVAL:
        return parsed(parse_interval, f"{col}_start", f"{col}_end")
    if kind is Kind.TIME_OR_INTERVAL:
        return parsed(parse_time_or_interval, f"{col}_start", f"{col}_end")
    if kind is Kind.GEOJSON:
        def geojson(value: Any) -> tuple[Any, bytes]:
            if not isinstance(value, dict):
                raise BodyError(f"{where} must be a GeoJSON object")
            return value, to_wkb(geometry_of(value))
        return parsed(geojson, col, "geom")
    return parsed(encode_result, "result_type", "result_number", "result_string", "result_json")  # Kind.RESULT


def _set_null(kind: Kind, col: str, values: dict[str, Any]) -> None:
    if kind in (Kind.INTERVAL, Kind.TIME_OR_INTERVAL):
        values[f"{col}_start"] = values[f"{col}_end"] = None
    elif kind is Kind.GEOJSON:
        values[col] = values["geom"] = None
    elif kind is Kind.RESULT:
        values.update(result_type=5, result_number=None, result_string=None, result_json=None)
    else:
        values[col] = None


def parse_entity(
    entity: EntityType,
    data: Any,
    *,
    mode: str = "create",
    implied: frozenset[str] = frozenset(),
    depth: int = 0,
) -> Draft | Ref:
    """A Draft (or a Ref when the object only names an existing entity) from a JSON body.

    mode is `create` (required properties enforced), `put` (all writable properties replaced,
    required ones enforced) or `patch` (only what is given). `implied` names navigation
    properties the URL provides (POST /Things(1)/Datastreams implies `Thing`).
    """
    if depth > MAX_DEPTH:
        raise BodyError(f"{entity.name}: deep insert nested more than {MAX_DEPTH} levels")
    if not isinstance(data, dict):
        raise BodyError(f"{entity.name} must be a JSON object")
    if mode == "create" and "@iot.id" in data:
        return Ref(entity, parse_id(data["@iot.id"], entity.name))
    values: dict[str, Any] = {}
    links: dict[str, list[Draft | Ref]] = {}
    convert = converters(entity)
    for key, value in data.items():
        if _is_annotation(key):
            continue
        into = convert.get(key)
        if into is not None:
            into(value, values)
        elif key in entity.nav_by_name:
            links[key] = _parse_links(entity, entity.nav_by_name[key], value, mode, depth)
        else:
            raise BodyError(f"{entity.name} has no property {key!r}")
    if mode == "put":
        for prop in entity.props:
            if prop.name in data:
                continue
            if prop.required and prop.name != "phenomenonTime":
                raise BodyError(f"{entity.name}.{prop.name} is required")
            if not prop.read_only:
                _set_null(prop.kind, prop.column, values)
    elif mode == "create":
        props, navs = _required(entity)
        for name in props:
            if name not in data:
                raise BodyError(f"{entity.name}.{name} is required")
        for name in navs:
            if name not in links and name not in implied:
                raise BodyError(f"{entity.name}.{name} is required")
        if entity is OBSERVATION and ("Datastream" in links or "Datastream" in implied) == (
                "MultiDatastream" in links or "MultiDatastream" in implied):
            raise BodyError("an Observation needs exactly one of Datastream or MultiDatastream")
    _check_geojson_encoding(entity, values, data)
    return Draft(entity, values, links)


_REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _required(entity: EntityType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The properties and navigation properties a new `entity` must be given (phenomenonTime defaults to now)."""
    found = _REQUIRED.get(entity.name)  # by name, as `converters`
    if found is None:
        found = _REQUIRED[entity.name] = (
            tuple(p.name for p in entity.props if p.required and p.name != "phenomenonTime"),
            tuple(n.name for n in entity.navs if n.required))
    return found


def _check_geojson_encoding(entity: EntityType, values: dict[str, Any], data: dict) -> None:
    # geometry only means something when the encoding says GeoJSON; other encodings are stored as given
    enc = data.get("encodingType")
    if enc is not None and "geom" in values and enc not in GEOJSON_TYPES:
        values["geom"] = None


def _parse_links(entity: EntityType, nav: Nav, value: Any, mode: str, depth: int) -> list[Draft | Ref]:
    target = target_of(nav)
    where = f"{entity.name}.{nav.name}"
    if nav.kind is NavKind.FK:
        if not isinstance(value, dict):
            raise BodyError(f"{where} must be a JSON object")
        items = [value]
    else:
        if not isinstance(value, list):
            raise BodyError(f"{where} must be a JSON array")
        items = value
    out: list[Draft | Ref] = []
    for item in items:
        if not isinstance(item, dict):
            raise BodyError(f"{where} must hold JSON objects")
        if "@iot.id" in item:
            out.append(Ref(target, parse_id(item["@iot.id"], where)))
        elif mode == "patch" and nav.kind is not NavKind.LINK:
            raise BodyError(f"{where}: only links by @iot.id can be changed with PATCH")
        elif mode == "put" and nav.kind is NavKind.REVERSE:
            # FROST's client PUTs the object it created, nested new entities and all: say so, not a 500
            raise BodyError(f"{where}: PUT links existing entities by @iot.id; create new ones with POST")
        else:
            back = _back_name(entity, nav)
            out.append(parse_entity(target, item, mode="create", implied=back, depth=depth + 1))
    return out


def _back_name(entity: EntityType, nav: Nav) -> frozenset[str]:
    back = reverse_nav(entity, nav)
    return frozenset({back.name}) if back is not None else frozenset()
