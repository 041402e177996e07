"""The query of a records search (OGC API Records Part 1) parsed once into a typed object: the Records parameters
(`q`, `type`, `ids`, `externalIds`, `datetime` on the records' temporal extents) beside the items parameters, which
parse as for any collection; anything unknown or malformed is a 400 naming the parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.record import DATASET, SERVICE
from features.request import MAX_LIMIT, ItemsQuery, ParamError, parse_datetime, parse_items

RECORDS_PARAMS = ("q", "type", "ids", "externalIds", "datetime")
# what a record offers to filter and sort on (CQL2 `filter`, `sortby`, `prop=value`)
FIELDS: dict[str, dict[str, str]] = {
    "id": {"type": "string"}, "type": {"type": "string", "enum": [DATASET, SERVICE]}, "title": {"type": "string"},
    "description": {"type": "string"}, "keywords": {"type": "string"}, "themes": {"type": "string"},
    "license": {"type": "string", "format": "uri"}, "recordKind": {"type": "string"},
    "accrualPeriodicity": {"type": "string", "format": "uri"},
    "start": {"type": "string", "format": "date-time"}, "end": {"type": "string", "format": "date-time"},
}
_MAX_TERMS = 50


@dataclass(frozen=True)
class RecordsQuery:
    """A records search: the items query plus the Records parameters."""

    items: ItemsQuery
    terms: tuple[str, ...] = ()  # `q`: any of them matches (each a word or a phrase)
    types: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    interval: tuple[pd.Timestamp | None, pd.Timestamp | None] | None = None  # overlaps the record's time


def _list(params: dict[str, str], name: str) -> tuple[str, ...]:
    if name not in params:
        return ()
    items = tuple(v.strip() for v in params[name].split(","))
    if not items or any(not v for v in items):
        raise ParamError(f"{name}: a comma-separated list of non-empty values, got {params[name]!r}")
    if len(items) > _MAX_TERMS:
        raise ParamError(f"{name}: at most {_MAX_TERMS} values")
    return items


def parse_records(params: dict[str, str], max_limit: int = MAX_LIMIT) -> RecordsQuery:
    """A records search from its query parameters."""
    rest = {k: v for k, v in params.items() if k not in RECORDS_PARAMS}
    items = parse_items(rest, FIELDS, [None], False, max_limit)
    if items.after is not None:
        raise ParamError("cursor: the catalogue pages by offset")
    terms = _list(params, "q")
    for t in terms:
        if len(t) > 200 or not any(c.isalnum() for c in t):
            raise ParamError(f"q: {t!r} is not a search term (words of letters or digits, at most 200 characters)")
    types = _list(params, "type")
    for t in types:
        if t not in (DATASET, SERVICE):
            raise ParamError(f"type: {t!r} is not a record type here ({DATASET}, {SERVICE})")
    ids = _list(params, "ids") + _list(params, "externalIds")
    interval = parse_datetime(params["datetime"]) if "datetime" in params else None
    return RecordsQuery(items, terms, types, ids, interval)


def search_expression(term: str) -> str:
    """One `q` term as an FTS5 phrase: its words, quoted, so no FTS5 syntax can come in through it."""
    words = "".join(c if c.isalnum() else " " for c in term).split()
    return '"' + " ".join(words) + '"'


def fields() -> dict[str, Any]:
    """The records' queryables."""
    return {k: dict(v) for k, v in FIELDS.items()}
