"""The mapfile MapServer answers WMS and WFS from: the service's metadata from config.yml, and one layer per
collection the requester may see, drawn in the collection's colour (the one its tiles' style has).

A layer reads its rows in place when they live in PostgreSQL (`DatabaseTable`: MapServer's PostGIS driver, the
box pushed into SQL) and a FlatGeobuf snapshot otherwise (ows/snapshot.py). Every feature carries its OGC API id
as `udp_id` (the GML id, not an attribute) and its properties under their OGC API names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.source import DatabaseTable, FeatureSource
from ows.snapshot import KEY, Overview, Snapshot
from ows.view import View

# the CRSs the services answer in: CRS84/WGS 84, Web Mercator, and the national grids of Germany and Korea
CRS = ("EPSG:4326", "EPSG:3857", "EPSG:25832", "EPSG:5186", "CRS:84")
MAX_SIZE = 4096  # pixels a side of a GetMap image
MAX_FEATURES = 10_000  # features of one GetFeature answer (a client pages on with STARTINDEX)
_MS_TYPE = {"point": "POINT", "line": "LINE", "polygon": "POLYGON"}
_GML_TYPE = {"point": "point", "line": "multiline", "polygon": "multipolygon"}


@dataclass(frozen=True)
class ServiceInfo:
    """What the capabilities documents say of the services."""

    title: str
    abstract: str = ""
    organisation: str | None = None
    person: str | None = None
    email: str | None = None
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class MapLayer:
    """One collection and where MapServer reads it."""

    source: FeatureSource
    data: DatabaseTable | Snapshot
    colour: str
    overviews: tuple[Overview, ...] = ()  # coarsest last

    def overview_for(self, view: View | None) -> Overview | None:
        """The coarsest overview whose cells are at most two of the view's pixels (a point's symbol is 7 pixels
        wide: the map looks the same); None: the layer itself."""
        if view is None:
            return None
        fits = [o for o in self.overviews if o.cell <= 2 * view.pixel()]
        return max(fits, key=lambda o: o.cell) if fits else None


def render(service: ServiceInfo, base: str, layers: Sequence[MapLayer], fontset: str | None,
           view: View | None = None) -> str:
    """The mapfile's text; for a GetMap's `view`, point layers read from the overview its pixels allow."""
    boxes = [b for b in (_bbox(layer) for layer in layers) if b is not None]
    extent = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
              max(b[3] for b in boxes)) if boxes else (-180.0, -90.0, 180.0, 90.0)
    web = {
        "ows_title": service.title,
        "ows_abstract": service.abstract,
        "ows_keywordlist": ",".join(service.keywords),
        "ows_contactorganization": service.organisation or "",
        "ows_contactperson": service.person or "",
        "ows_contactelectronicmailaddress": service.email or "",
        "ows_srs": " ".join(CRS),
        "ows_encoding": "UTF-8",
        "ows_namespace_prefix": "udp",
        "ows_namespace_uri": f"{base}/wfs",
        "wms_onlineresource": f"{base}/wms?",
        "wfs_onlineresource": f"{base}/wfs?",
        # read-only services; WMS's DescribeLayer and GetStyles answer nothing a portal uses
        "wms_enable_request": "GetCapabilities GetMap GetFeatureInfo GetLegendGraphic",
        "wfs_enable_request": "GetCapabilities DescribeFeatureType GetFeature ListStoredQueries "
                              "DescribeStoredQueries GetPropertyValue",
        "wms_getfeatureinfo_formatlist": "text/plain,application/vnd.ogc.gml,geojson",
        "wfs_getfeature_formatlist": "geojson",
        "wfs_maxfeatures": str(MAX_FEATURES),
        "wms_title": service.title,
    }
    lines = [
        "MAP",
        '  NAME "udp"',
        f"  EXTENT {_numbers(extent)}",
        "  SIZE 256 256",
        f"  MAXSIZE {MAX_SIZE}",
        "  UNITS DD",
        "  IMAGECOLOR 255 255 255",
        '  PROJECTION "init=epsg:4326" END',
        *([f"  FONTSET {_q(fontset)}"] if fontset else []),
        '  SYMBOL NAME "circle" TYPE ELLIPSE FILLED TRUE POINTS 1 1 END END',
        '  OUTPUTFORMAT NAME "png" DRIVER "AGG/PNG" MIMETYPE "image/png" IMAGEMODE RGBA EXTENSION "png" '
        'TRANSPARENT ON END',
        '  OUTPUTFORMAT NAME "jpeg" DRIVER "AGG/JPEG" MIMETYPE "image/jpeg" IMAGEMODE RGB EXTENSION "jpg" '
        'FORMATOPTION "QUALITY=85" END',
        '  OUTPUTFORMAT NAME "geojson" DRIVER "OGR/GEOJSON" MIMETYPE "application/geo+json" '
        'FORMATOPTION "STORAGE=stream" FORMATOPTION "FORM=SIMPLE" FORMATOPTION "LCO:RFC7946=YES" '
        'FORMATOPTION "LCO:ID_FIELD=udp_id" END',
        "  LEGEND",
        "    KEYSIZE 18 12",
        *(["    LABEL TYPE TRUETYPE FONT \"sans\" SIZE 9 COLOR 30 30 30 END"] if fontset else []),
        "  END",
        "  WEB",
        "    METADATA",
        *(f"      {_q(k)} {_q(v)}" for k, v in web.items() if v),
        "    END",
        "  END",
    ]
    for layer in layers:
        lines += _layer(layer, layer.overview_for(view))
    lines.append("END")
    return "\n".join(lines) + "\n"


def _layer(layer: MapLayer, overview: Overview | None) -> list[str]:
    source, data = layer.source, layer.data
    kind = data.kind
    meta = {
        "ows_title": source.title or source.id,
        "ows_abstract": source.description,
        "ows_keywordlist": ",".join(source.keywords),
        "gml_include_items": "all",
        "gml_featureid": KEY,
        "gml_types": "auto",
        # the geometry's element and type in DescribeFeatureType (a client then knows the layer's geometry)
        "gml_geometries": "geometry",
        "gml_geometry_type": _GML_TYPE[kind] if not (kind == "point" and data.multi) else "multipoint",
        "wms_include_items": "all",
        "wms_exclude_items": KEY,
    }
    box = _bbox(layer)
    if box is not None:
        meta["ows_extent"] = _numbers(box)
    if overview is not None:
        where = [
            "    CONNECTIONTYPE OGR",
            f"    CONNECTION {_q(str(overview.path))}",
            '    PROJECTION "init=epsg:4326" END',
        ]
    elif isinstance(data, DatabaseTable):
        meta["ows_srs"] = f"EPSG:{data.srid}"  # the layer's own CRS; the map's list applies as well
        where = [
            "    CONNECTIONTYPE POSTGIS",
            f"    CONNECTION {_q(data.dsn)}",
            f"    DATA {_q(f'udp_geom from ({data.select}) as t using unique {KEY} using srid={data.srid}')}",
            '    PROCESSING "CLOSE_CONNECTION=DEFER"',
            f'    PROJECTION "init=epsg:{data.srid}" END',
        ]
    else:
        # through OGR: MapServer 8.0's own FlatGeobuf reader (4× faster to draw) misses features in small boxes
        # and answers GetFeatureInfo with nothing
        where = [
            "    CONNECTIONTYPE OGR",
            f"    CONNECTION {_q(str(data.path))}",
            '    PROJECTION "init=epsg:4326" END',
        ]
    r, g, b = (int(layer.colour[i:i + 2], 16) for i in (1, 3, 5))
    if kind == "point":
        style = f"STYLE SYMBOL \"circle\" SIZE 7 COLOR {r} {g} {b} OUTLINECOLOR 255 255 255 WIDTH 1 END"
    elif kind == "line":
        style = f"STYLE COLOR {r} {g} {b} WIDTH 2 END"
    else:
        style = f"STYLE COLOR {r} {g} {b} OPACITY 35 END STYLE OUTLINECOLOR {r} {g} {b} WIDTH 1.5 END"
    return [
        "  LAYER",
        f"    NAME {_q(source.id)}",
        f"    TYPE {_MS_TYPE[kind]}",
        "    STATUS ON",
        *where,
        '    TEMPLATE "query"',  # makes the layer queryable (GetFeatureInfo, GetFeature)
        "    TOLERANCE 4",
        "    TOLERANCEUNITS PIXELS",
        "    METADATA",
        *(f"      {_q(k)} {_q(v)}" for k, v in meta.items() if v),
        "    END",
        f"    CLASS NAME {_q(source.title or source.id)} {style} END",
        "  END",
    ]


def _bbox(layer: MapLayer) -> tuple[float, float, float, float] | None:
    data = layer.data
    if isinstance(data, DatabaseTable):
        return layer.source.bbox if data.srid == 4326 else None
    return data.bbox or layer.source.bbox


def _numbers(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _q(text: str) -> str:
    """A mapfile string: double-quoted, with backslashes and quotes escaped and no line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ") + '"'
