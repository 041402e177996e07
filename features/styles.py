"""Map documents generated from config.yml for the vector tiles: TileJSON 3.0 (a collection's tiles, or the
dataset's) and a MapLibre style (style specification v8) drawing every collection in its colour.

A collection's `style:` in config.yml sets its colour and the property that names its features; the others take
the platform's palette in collection order (the cockpit's map draws with this style). The style has no basemap and
no glyphs (the platform serves no fonts): labels are named in each layer's metadata (`udp:label`) for clients that
draw them themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.source import FeatureSource
from features.tiles import MAX_ZOOM

# the layer colours, in collection order; the cockpit draws its layers from this style, so they are its colours too
PALETTE = ("#1b7a5a", "#c2410c", "#6d28d9", "#be185d", "#4d7c0f", "#a16207", "#0e7490", "#57534e")
TEMPLATE = "/{z}/{y}/{x}"  # WebMercatorQuad's tileMatrix/tileRow/tileCol, as XYZ clients write them


def tile_fields(source: FeatureSource) -> dict[str, dict[str, str]]:
    """The properties a collection's tiles carry (config.yml `style.properties`, else all) and their types."""
    chosen = source.style.properties
    return {k: v for k, v in source.fields.items() if chosen is None or k in chosen}


def colours(sources: Sequence[FeatureSource]) -> dict[str, str]:
    """Each collection's colour: its own from config.yml, else the palette's next."""
    return {s.id: s.style.colour or PALETTE[i % len(PALETTE)] for i, s in enumerate(sources)}


def tilejson(sources: Sequence[FeatureSource], tiles_url: str, name: str, query: str = "") -> dict[str, Any]:
    """TileJSON 3.0.0 for WebMercatorQuad tiles at `tiles_url` (…/tiles/WebMercatorQuad, then `query`) holding
    `sources`."""
    boxes = [s.bbox for s in sources if s.bbox is not None]
    doc: dict[str, Any] = {
        "tilejson": "3.0.0", "name": name, "scheme": "xyz", "tiles": [tiles_url + TEMPLATE + query],
        "minzoom": 0, "maxzoom": MAX_ZOOM,
        "vector_layers": [{"id": s.id, "description": s.title,
                           "fields": {k: v.get("type", "string") for k, v in tile_fields(s).items()}}
                          for s in sources]}
    if boxes:
        doc["bounds"] = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                         max(b[3] for b in boxes)]
        doc["center"] = [(doc["bounds"][0] + doc["bounds"][2]) / 2, (doc["bounds"][1] + doc["bounds"][3]) / 2, 10]
    return doc


def maplibre_style(sources: Sequence[FeatureSource], tiles_url: str, name: str, query: str = "") -> dict[str, Any]:
    """A MapLibre style drawing every collection from the dataset's tiles: polygons filled and outlined, lines,
    points as circles (larger for a point standing for several, `point_count`)."""
    colour = colours(sources)
    layers: list[dict[str, Any]] = [{"id": "background", "type": "background",
                                     "paint": {"background-color": "#f3f5f8"}}]
    for s in sources:
        c = colour[s.id]
        meta = {"udp:collection": s.id, "udp:title": s.title} | ({"udp:label": s.style.label} if s.style.label else {})
        base = {"source": "udp", "source-layer": s.id, "metadata": meta}
        layers += [
            {**base, "id": f"{s.id}-fill", "type": "fill", "filter": ["==", ["geometry-type"], "Polygon"],
             "paint": {"fill-color": c, "fill-opacity": 0.25}},
            {**base, "id": f"{s.id}-outline", "type": "line", "filter": ["==", ["geometry-type"], "Polygon"],
             "paint": {"line-color": c, "line-width": 1}},
            {**base, "id": f"{s.id}-line", "type": "line", "filter": ["==", ["geometry-type"], "LineString"],
             "paint": {"line-color": c, "line-width": 2}},
            {**base, "id": f"{s.id}-point", "type": "circle",
             "filter": ["all", ["==", ["geometry-type"], "Point"], ["!", ["has", "point_count"]]],
             "paint": {"circle-color": c, "circle-stroke-color": "#1f2933", "circle-stroke-width": 0.5,
                       "circle-radius": 3.5}},
            # below z14 a point with `point_count` stands for that many (QGIS 3.22 converts no data-driven radius)
            {**base, "id": f"{s.id}-cluster", "type": "circle",
             "filter": ["all", ["==", ["geometry-type"], "Point"], ["has", "point_count"]],
             "paint": {"circle-color": c, "circle-stroke-color": "#1f2933", "circle-stroke-width": 1,
                       "circle-radius": 7}},
        ]
    doc = tilejson(sources, tiles_url, name, query)
    style: dict[str, Any] = {"version": 8, "name": name,
                             "sources": {"udp": {"type": "vector", "tiles": doc["tiles"], "minzoom": 0,
                                                 "maxzoom": MAX_ZOOM}},
                             "layers": layers}
    if "center" in doc:
        style["center"], style["zoom"] = doc["center"][:2], 10
    return style
