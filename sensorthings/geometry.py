"""GeoJSON in entity bodies turned into shapely geometries and WKB for the stores."""

from __future__ import annotations

from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

GEOJSON_TYPES = ("application/geo+json", "application/vnd.geo+json", "application/json")


def geometry_of(value: Any) -> BaseGeometry:
    """The geometry of a GeoJSON Geometry or Feature; ValueError when it is neither."""
    if not isinstance(value, dict):
        raise ValueError("expected a GeoJSON object")
    if value.get("type") == "Feature":
        value = value.get("geometry")
        if not isinstance(value, dict):
            raise ValueError("GeoJSON Feature without a geometry")
    try:
        geom = shapely.geometry.shape(value)
    except Exception as exc:  # shapely raises several types for bad GeoJSON
        raise ValueError(f"invalid GeoJSON geometry: {exc}") from None
    if geom.is_empty:
        raise ValueError("empty GeoJSON geometry")
    return geom


def to_wkb(geom: BaseGeometry) -> bytes:
    """2D WKB, as both stores keep it."""
    return shapely.to_wkb(geom, output_dimension=2)
