"""The dataArray extension's write side: CreateObservations, many Observations per request.

Rows are parsed one by one; a row that is malformed or that the store refuses (see
`Store.write_observations`) is reported as "error" and skipped, the others are written together.
"""

from __future__ import annotations

from typing import Any

from sensorthings.body import BodyError, Converter, converter, parse_id
from sensorthings.model import DATASTREAM, MULTI_DATASTREAM, OBSERVATION, EntityType
from sensorthings.store.base import Store, StoreError
from sensorthings.store.observations import ObservationRow

COMPONENTS = {"phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters",
              "FeatureOfInterest/id"}


def create_observations(store: Store, tx: Any, data: Any, base: str) -> list[str]:
    """Insert every valid row of a CreateObservations body; a selfLink or "error" per row, in order.

    Inside a `$batch` changeset (`tx`) the rows go into its transaction; otherwise to the group-commit writer,
    which may share a transaction with other requests' rows."""
    if tx is not None:
        parsed = _parse(store, tx.conn, data)
        good = [r for r in parsed if r is not None]
        ids = store.write_observations(tx.conn, good, tx.changes, refused=lambda _i, _reason: None)
    else:
        with store.read() as conn:
            parsed = _parse(store, conn, data)
        ids = store.writer.write([r for r in parsed if r is not None]).ids
    it = iter(ids)
    out: list[str] = []
    for r in parsed:
        new_id = None if r is None else next(it)
        out.append("error" if new_id is None else f"{base}/Observations({new_id})")
    return out


def _parse(store: Store, conn: Any, data: Any) -> list[ObservationRow | None]:
    """Every row of a body in order; None for a malformed one."""
    if not isinstance(data, list):
        raise BodyError("CreateObservations takes a JSON array of {Datastream, components, dataArray}")
    out: list[ObservationRow | None] = []
    named: dict[EntityType, set[int]] = {DATASTREAM: set(), MULTI_DATASTREAM: set()}
    for group in data:
        if not isinstance(group, dict):
            raise BodyError("each CreateObservations item must be a JSON object")
        entity, stream_col, stream_id = _stream(group)
        named[entity].add(stream_id)
        components = group.get("components")
        rows = group.get("dataArray")
        if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
            raise BodyError("components must be an array of property names")
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise BodyError(f"unknown dataArray components: {', '.join(unknown)}")
        if "result" not in components:
            raise BodyError("components must include result")
        if not isinstance(rows, list):
            raise BodyError("dataArray must be an array of arrays")
        converters = [_foi_id if c == "FeatureOfInterest/id" else converter(OBSERVATION, c) for c in components]
        out.extend(_row(converters, row, stream_col, stream_id) for row in rows)
    # a request naming a Datastream that does not exist is wrong as a whole, not row by row
    for entity, ids in named.items():
        if missing := store.missing(conn, entity, ids):
            raise StoreError(f"{entity.name} {min(missing)} does not exist")
    return out


def _stream(group: dict[str, Any]) -> tuple[EntityType, str, int]:
    if "Datastream" in group:
        col, entity, ref = "datastream_id", DATASTREAM, group["Datastream"]
    elif "MultiDatastream" in group:
        col, entity, ref = "multi_datastream_id", MULTI_DATASTREAM, group["MultiDatastream"]
    else:
        raise BodyError("each CreateObservations item needs a Datastream or MultiDatastream")
    if not isinstance(ref, dict) or "@iot.id" not in ref:
        raise BodyError('the Datastream is given as {"@iot.id": <id>}')
    return entity, col, parse_id(ref["@iot.id"], entity.name)


def _foi_id(value: Any, values: dict[str, Any]) -> None:
    values["feature_of_interest_id"] = parse_id(value, "FeatureOfInterest/id")


def _row(converters: list[Converter], row: Any, stream_col: str, stream_id: int) -> ObservationRow | None:
    if not isinstance(row, list) or len(row) != len(converters):
        return None
    values: dict[str, Any] = {stream_col: stream_id}
    try:
        for convert, value in zip(converters, row, strict=True):
            convert(value, values)
    except ValueError:  # BodyError among them
        return None
    return ObservationRow(**values)
