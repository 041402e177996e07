"""The query of an items request parsed once into a typed object; anything unknown or malformed is a 400."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
from pygeofilter import ast

from features import crs as crsmod
from features.cql import FilterError, check_attributes, parse_filter

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_OFFSET = 2**63 - 1  # SQL's OFFSET is a BIGINT: the SensorThings collections pass it on
COMMON = {"f", "lang"}
ITEMS = COMMON | {"bbox", "bbox-crs", "datetime", "limit", "offset", "filter", "filter-lang", "filter-crs",
                  "sortby", "properties", "skipGeometry", "crs", "resulttype", "cursor"}
ITEM = COMMON | {"crs", "properties", "skipGeometry"}


class ParamError(ValueError):
    """A query parameter that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Sort:
    """One `sortby` key."""

    property: str
    descending: bool


@dataclass(frozen=True)
class ItemsQuery:
    """What an items request asks for."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    bbox: tuple[float, float, float, float] | None = None  # CRS84
    time: tuple[pd.Timestamp | None, pd.Timestamp | None] | None = None
    equals: tuple[tuple[str, str], ...] = ()
    filter: ast.Node | None = None
    filter_crs: int | None = None
    sortby: tuple[Sort, ...] = ()
    properties: tuple[str, ...] | None = None
    skip_geometry: bool = False
    crs: int | None = None
    hits: bool = False
    format: str | None = None
    sees_internal: bool = False  # the requester holds the read role (access: internal is shown)
    moderator: bool = False  # the requester holds the moderate role (feedback: every item, with its contact)
    # keyset paging: the previous page's last row, its sort-key values then its key, as the source's text
    after: tuple[str | None, ...] | None = None


def _sort_names(sortby: tuple[Sort, ...] | list[Sort]) -> list[str]:
    return [("-" if s.descending else "") + s.property for s in sortby]


def encode_cursor(sortby: tuple[Sort, ...], values: tuple[str | None, ...]) -> str:
    """The opaque `cursor` of the page after the row holding `values` (its sort keys, then its key)."""
    raw = orjson.dumps({"s": _sort_names(sortby), "v": list(values)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _cursor(params: dict[str, str], sortby: list[Sort]) -> tuple[str | None, ...] | None:
    """`cursor=`, checked against the request's sortby: the row the page starts after."""
    text = params.get("cursor")
    if text is None:
        return None
    if "offset" in params:
        raise ParamError("cursor: cannot be combined with offset")
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise ParamError("cursor: not a cursor from a next link of this collection") from None
    values = doc.get("v") if isinstance(doc, dict) else None
    if (not isinstance(values, list) or len(values) != len(sortby) + 1 or values[-1] is None
            or not all(v is None or isinstance(v, str) for v in values)):
        raise ParamError("cursor: not a cursor from a next link of this collection")
    if doc.get("s") != _sort_names(sortby):
        raise ParamError("cursor: made for another sortby; keep the next link's parameters as they are")
    return tuple(values)


def _int(params: dict[str, str], name: str, default: int, low: int, high: int | None, setting: str = "") -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ParamError(f"{name}: {text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        bound += f" ({setting})" if setting else ""
        raise ParamError(f"{name}: must be {bound}, got {value}")
    return value


def _bool(params: dict[str, str], name: str) -> bool:
    text = params.get(name)
    if text is None:
        return False
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ParamError(f"{name}: must be true or false, got {text!r}")


def _crs(params: dict[str, str], name: str, offered: list[int | None]) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        code = crsmod.parse_crs(text)
    except crsmod.CrsError as exc:
        raise ParamError(f"{name}: {exc}") from None
    if code not in offered:
        raise ParamError(f"{name}: {text} is not offered for this collection (offered: "
                         f"{', '.join(crsmod.uri(c) for c in offered)})")
    return code


def parse_bbox(text: str, bbox_crs: int | None) -> tuple[float, float, float, float]:
    """A `bbox` value (4 or 6 numbers in the bbox-crs axis order) as a CRS84 box."""
    try:
        nums = [float(v) for v in text.split(",")]
    except ValueError:
        raise ParamError(f"bbox: {text!r} is not a list of numbers") from None
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ParamError(f"bbox: needs 4 (or 6) numbers, got {text!r}")
    a, b, c, d = nums
    if bbox_crs is None:
        if b > d:
            raise ParamError(f"bbox: the lower corner's latitude {b} is above the upper corner's {d}")
        if not (-180 <= a <= 180 and -180 <= c <= 180 and -90 <= b <= 90 and -90 <= d <= 90):
            raise ParamError(f"bbox: {text!r} is outside longitude -180..180 / latitude -90..90 (CRS84)")
        return (a, b, c, d)
    if a > c or b > d:
        raise ParamError(f"bbox: the lower corner {a},{b} is not below the upper corner {c},{d}")
    return crsmod.transform_bbox((a, b, c, d), bbox_crs)  # type: ignore[return-value]


def _instant(text: str) -> pd.Timestamp | None:
    if text in ("..", ""):
        return None
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise ParamError(f"datetime: {text!r} is not an RFC 3339 date-time") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_datetime(text: str) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """A `datetime` instant or interval (open ends as `..`)."""
    if "/" in text:
        start, _, end = text.partition("/")
        lo, hi = _instant(start), _instant(end)
        if lo is not None and hi is not None and lo > hi:
            raise ParamError(f"datetime: the interval {text!r} ends before it starts")
        return lo, hi
    t = _instant(text)
    if t is None:
        raise ParamError("datetime: an instant cannot be open")
    return t, t


def parse_items(params: dict[str, str], fields: dict[str, Any], offered: list[int | None],
                has_time: bool, max_limit: int = MAX_LIMIT) -> ItemsQuery:
    """An items query from its parameters; `fields` are the queryables, `offered` the output CRSs, `limit` at
    most `max_limit` (the platform's server.max_top)."""
    for name in params:
        if name not in ITEMS and name not in fields:
            raise ParamError(f"{name}: unknown query parameter (parameters: {', '.join(sorted(ITEMS))}, "
                             "or a queryable property)")
    bbox_crs = _crs(params, "bbox-crs", offered)
    if bbox_crs is not None and "bbox" not in params:
        raise ParamError("bbox-crs: given without bbox")
    bbox = parse_bbox(params["bbox"], bbox_crs) if "bbox" in params else None
    time = None
    if "datetime" in params:
        if not has_time:
            raise ParamError("datetime: this collection has no time property to filter on")
        time = parse_datetime(params["datetime"])
    filt = None
    filter_crs = _crs(params, "filter-crs", offered)
    lang = params.get("filter-lang", "cql2-text")
    if lang not in ("cql2-text", "cql2-json"):
        raise ParamError(f"filter-lang: {lang!r} is not supported (cql2-text, cql2-json)")
    if "filter" in params:
        try:
            filt = parse_filter(params["filter"], lang)
            check_attributes(filt, fields)
        except FilterError as exc:
            raise ParamError(f"filter: {exc}") from None
    elif "filter-lang" in params or "filter-crs" in params:
        raise ParamError("filter-lang/filter-crs: given without filter")
    sortby = []
    for key in filter(None, params.get("sortby", "").split(",")):
        key = key.strip()
        desc = key.startswith("-")
        name = key.lstrip("+-")
        if name not in fields:
            raise ParamError(f"sortby: unknown property {name!r}")
        sortby.append(Sort(name, desc))
    props = _properties(params, fields)
    after = _cursor(params, sortby)
    resulttype = params.get("resulttype", "results")
    if resulttype not in ("results", "hits"):
        raise ParamError(f"resulttype: must be results or hits, got {resulttype!r}")
    equals = tuple((k, v) for k, v in params.items() if k not in ITEMS)
    return ItemsQuery(
        limit=_int(params, "limit", DEFAULT_LIMIT, 1, max_limit, "server.max_top"),
        offset=_int(params, "offset", 0, 0, MAX_OFFSET),
        bbox=bbox, time=time, equals=equals, filter=filt, filter_crs=filter_crs, sortby=tuple(sortby),
        properties=props, skip_geometry=_bool(params, "skipGeometry"), crs=_crs(params, "crs", offered),
        hits=resulttype == "hits", format=params.get("f"), after=after)


def parse_item(params: dict[str, str], fields: dict[str, Any], offered: list[int | None]) -> ItemsQuery:
    """The query of a single-feature request."""
    for name in params:
        if name not in ITEM:
            raise ParamError(f"{name}: unknown query parameter (parameters: {', '.join(sorted(ITEM))})")
    props = _properties(params, fields)
    return ItemsQuery(properties=props, skip_geometry=_bool(params, "skipGeometry"),
                      crs=_crs(params, "crs", offered), format=params.get("f"))


def _properties(params: dict[str, str], fields: dict[str, Any]) -> tuple[str, ...] | None:
    """`properties=a,b`: the names to keep, each a queryable; None when not asked."""
    if "properties" not in params:
        return None
    props = tuple(p.strip() for p in params["properties"].split(",") if p.strip())
    for p in props:
        if p not in fields:
            raise ParamError(f"properties: unknown property {p!r}")
    return props
