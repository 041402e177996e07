"""The dataArray extension's write side: CreateObservations, many Observations per request.

Rows are parsed one by one (a bad row is reported as "error" and skipped), then written with one
multi-row insert, and each Datastream's time range is widened once per request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sensorthings.body import BodyError, convert_value, parse_id
from sensorthings.model import OBSERVATION
from sensorthings.store.base import Change, Store, StoreError
from sensorthings.store.schema import TABLES
from sensorthings.times import now

COMPONENTS = {"phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters",
              "FeatureOfInterest/id"}


def create_observations(store: Store, tx: Any, data: Any, base: str) -> list[str]:
    """Insert every valid row of a CreateObservations body; a selfLink or "error" per row, in order."""
    if not isinstance(data, list):
        raise BodyError("CreateObservations takes a JSON array of {Datastream, components, dataArray}")
    conn = tx.conn
    out: list[str] = []
    for group in data:
        if not isinstance(group, dict):
            raise BodyError("each CreateObservations item must be a JSON object")
        stream_col, stream_id, arity = _stream(conn, group)
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
        prepared: list[dict[str, Any] | None] = []
        foi_ids: set[int] = set()
        for row in rows:
            prepared.append(_row(components, row, stream_col, stream_id, arity, foi_ids))
        _check_features(conn, foi_ids, prepared)
        if any(r is not None and r["feature_of_interest_id"] is None for r in prepared):
            try:
                foi = store.feature_for(conn, stream_id if stream_col == "datastream_id" else None,
                                        stream_id if stream_col == "multi_datastream_id" else None)
            except StoreError:
                foi = None
            for r in prepared:
                if r is not None and r["feature_of_interest_id"] is None:
                    r["feature_of_interest_id"] = foi
        good = [r for r in prepared if r is not None and r["feature_of_interest_id"] is not None]
        new_ids = store.insert_observations(conn, good) if good else []
        ids = iter(new_ids)
        for r in prepared:
            if r is None or r["feature_of_interest_id"] is None:
                out.append("error")
            else:
                out.append(f"{base}/Observations({next(ids)})")
        if good:
            store.cover_observations(conn, good)
            tx.changes.extend(Change(OBSERVATION, id_, "create") for id_ in new_ids)
    return out


def _stream(conn: Any, group: dict[str, Any]) -> tuple[str, int, int | None]:
    if "Datastream" in group:
        col, table, ref = "datastream_id", TABLES["datastreams"], group["Datastream"]
    elif "MultiDatastream" in group:
        col, table, ref = "multi_datastream_id", TABLES["multi_datastreams"], group["MultiDatastream"]
    else:
        raise BodyError("each CreateObservations item needs a Datastream or MultiDatastream")
    if not isinstance(ref, dict) or "@iot.id" not in ref:
        raise BodyError('the Datastream is given as {"@iot.id": <id>}')
    id_ = parse_id(ref["@iot.id"], "Datastream")
    if col == "multi_datastream_id":
        types = conn.execute(select(table.c.multi_observation_data_types).where(table.c.id == id_)).first()
        if types is None:
            raise StoreError(f"MultiDatastream {id_} does not exist")
        return col, id_, len(types[0] or [])
    if conn.execute(select(table.c.id).where(table.c.id == id_)).first() is None:
        raise StoreError(f"Datastream {id_} does not exist")
    return col, id_, None


def _row(components: list[str], row: Any, stream_col: str, stream_id: int, arity: int | None,
         foi_ids: set[int]) -> dict[str, Any] | None:
    if not isinstance(row, list) or len(row) != len(components):
        return None
    values: dict[str, Any] = {
        "phenomenon_time_start": None, "phenomenon_time_end": None, "result_time": None,
        "result_quality": None, "valid_time_start": None, "valid_time_end": None, "parameters": None,
        "datastream_id": None, "multi_datastream_id": None, "feature_of_interest_id": None,
    }
    values[stream_col] = stream_id
    try:
        for name, value in zip(components, row, strict=True):
            if name == "FeatureOfInterest/id":
                values["feature_of_interest_id"] = parse_id(value, "FeatureOfInterest/id")
                foi_ids.add(values["feature_of_interest_id"])
            else:
                convert_value(OBSERVATION, name, value, values)
    except (BodyError, ValueError):
        return None
    if arity is not None and (not isinstance(values.get("result_json"), list) or len(values["result_json"]) != arity):
        return None
    if values["phenomenon_time_start"] is None:
        values["phenomenon_time_start"] = now()
    return values


def _check_features(conn: Any, ids: set[int], rows: list[dict[str, Any] | None]) -> None:
    if not ids:
        return
    foi = TABLES["features_of_interest"]
    found = set(conn.execute(select(foi.c.id).where(foi.c.id.in_(ids))).scalars())
    for i, r in enumerate(rows):
        if r is not None and r["feature_of_interest_id"] is not None and r["feature_of_interest_id"] not in found:
            rows[i] = None
