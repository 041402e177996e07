"""What a GetMap request shows: its box in CRS84 and its size in pixels, so that a point layer can be drawn
from an overview as coarse as the map's pixels (ows/snapshot.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError


@dataclass(frozen=True)
class View:
    """A map's box in CRS84 (lon0, lat0, lon1, lat1) and its pixels across and down."""

    box: tuple[float, float, float, float]
    width: int
    height: int

    def pixel(self) -> float:
        """The size of a pixel in degrees (the coarser of its two sides: a box stretched to the image's shape)."""
        return max((self.box[2] - self.box[0]) / self.width, (self.box[3] - self.box[1]) / self.height)


def parse_view(params: Mapping[str, str]) -> View | None:
    """The view of a WMS GetMap (parameter names in any case), None for any other request or one MapServer will
    refuse anyway (it says why)."""
    p = {k.lower(): v for k, v in params.items()}
    if p.get("request", "").lower() != "getmap":
        return None
    try:
        corners = [float(v) for v in p.get("bbox", "").split(",")[:4]]
        width, height = int(p.get("width", "")), int(p.get("height", ""))
        code = p.get("crs") or p.get("srs") or ""
        if len(corners) != 4 or width <= 0 or height <= 0 or not code:
            return None
        to_crs84, lat_first = _transformer(code.upper())
    except (ValueError, CRSError):
        return None
    x0, y0, x1, y1 = corners
    if lat_first and p.get("version", "1.3.0") >= "1.3":  # WMS 1.3.0 writes the box in the CRS's axis order
        x0, y0, x1, y1 = y0, x0, y1, x1
    try:
        box = to_crs84.transform_bounds(x0, y0, x1, y1)
    except Exception:  # noqa: BLE001  (pyproj's errors for a box it cannot transform: MapServer answers it)
        return None
    if not all(map(_finite, box)) or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return View(box, width, height)


@lru_cache(maxsize=64)
def _transformer(code: str) -> tuple[Transformer, bool]:
    crs = CRS.from_user_input("OGC:CRS84" if code == "CRS:84" else code)
    lat_first = crs.axis_info[0].direction.lower() in ("north", "south") if crs.axis_info else False
    return Transformer.from_crs(crs, "OGC:CRS84", always_xy=True), lat_first


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
