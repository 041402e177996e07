"""Coordinate reference systems (OGC API Features Part 2): URIs, parsing, transforming geometries.

Geometries are kept in CRS84 (longitude, latitude); output in another CRS follows that CRS's own axis
order, as Part 2 requires (latitude first for EPSG:4326, northing first for the Korean TM systems).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError as _PyprojError

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/"
# offered for every collection, besides the source's own: web maps, Hamburg and Seoul's working systems
OUTPUT_EPSG = (4326, 3857, 25832, 5186, 5179)
_FORMS = [
    re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/0/(\d+)$"),
    re.compile(r"^\[?EPSG:(\d+)\]?$", re.I),
    re.compile(r"^urn:ogc:def:crs:EPSG:[\d.]*:(\d+)$", re.I),
]


class CrsError(ValueError):
    """A CRS that is not known or not offered."""


def uri(code: int | None) -> str:
    """The OGC URI of an EPSG code (None: CRS84)."""
    return CRS84 if code is None else f"{_EPSG_URI}{code}"


def parse_crs(text: str) -> int | None:
    """An EPSG code from a URI, `EPSG:n` or URN; None for CRS84. CrsError when unknown."""
    t = text.strip()
    if t in (CRS84, "CRS84", "OGC:CRS84", "[OGC:CRS84]", "urn:ogc:def:crs:OGC:1.3:CRS84"):
        return None
    for form in _FORMS:
        m = form.match(t)
        if m:
            code = int(m.group(1))
            try:
                CRS.from_epsg(code)
            except _PyprojError:
                raise CrsError(f"unknown CRS {text!r} (no EPSG:{code})") from None
            return code
    raise CrsError(f"unknown CRS {text!r} (use an http://www.opengis.net/def/crs/… URI)")


def epsg_of(crs: CRS) -> int | None:
    """The EPSG code of a pyproj CRS (None: CRS84 / WGS84 longitude-latitude); CrsError when it has none."""
    code = crs.to_epsg(min_confidence=70)
    if code == 4326 or (code is None and crs.equals(_crs(None), ignore_axis_order=True)):
        return None  # files in EPSG:4326 carry longitude first in practice
    if code is None:
        raise CrsError(f"the source's CRS ({crs.name}) has no EPSG code: declare it with `crs: EPSG:…`")
    return code


@lru_cache(maxsize=64)
def _crs(code: int | None) -> CRS:
    return CRS.from_user_input("OGC:CRS84") if code is None else CRS.from_epsg(code)


@lru_cache(maxsize=128)
def transformer(source: int | None, target: int | None) -> Transformer:
    """Between two CRSs, each in its authority's axis order (CRS84 is longitude first)."""
    return Transformer.from_crs(_crs(source), _crs(target))


@lru_cache(maxsize=128)
def _xy_transformer(source: int | None, target: int | None) -> Transformer:
    return Transformer.from_crs(_crs(source), _crs(target), always_xy=True)


def transform(geoms: np.ndarray, source: int | None, target: int | None, *, xy: bool = False) -> np.ndarray:
    """Geometries from one CRS to another (vectorized), in the CRSs' axis orders; with `xy`, easting
    (longitude) first on both sides, as files and GDAL hold coordinates."""
    if source == target:
        return geoms
    t = _xy_transformer(source, target) if xy else transformer(source, target)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = t.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, fn)


def northing_first(code: int | None) -> bool:
    """True when the CRS lists latitude or northing first (EPSG:4326, the Korean TM systems)."""
    return _crs(code).axis_info[0].direction.lower() in ("north", "south")


def transform_bbox(box: tuple[float, float, float, float], source: int | None) -> tuple[float, ...]:
    """A bbox in `source` (its axis order) as a CRS84 bbox that covers it."""
    if source is None:
        return box
    t = transformer(source, None)
    return tuple(t.transform_bounds(*box, densify_pts=21))


def label(code: int | None) -> str:
    """A human name: `EPSG:25832` or `CRS84`."""
    return "CRS84" if code is None else f"EPSG:{code}"

