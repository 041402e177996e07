"""Draw the platform's vector tiles in headless QGIS (PyQGIS, Debian's /usr/bin/python3) with the platform's own
MapLibre style, and print what it drew.

Run: QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_vector_tiles.py --tiles 'http://…/{z}/{y}/{x}' \
--style http://…/ogcapi/styles/default --bbox 9.9,53.5,10.0,53.6 --colour '#123456'

QGIS's XYZ vector tile layer reads the tiles, QgsMapBoxGlStyleConverter turns the style into its renderer, and a
512 × 512 map of the box is rendered. Prints one JSON object (`valid`, `converted`, `warnings`, `pixels` of the
colour, `requests` QGIS sent) and exits 1 when the layer is invalid or a request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402  (the environment above must be set before Qt loads)
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapBoxGlStyleConverter,
    QgsProject,
    QgsRectangle,
    QgsVectorTileLayer,
)
from qgis_draw import draw, drawing_arguments, record_requests, start_qgis  # noqa: E402  (beside this script)


def main() -> int:
    """Draw the layer, print the JSON report, and return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiles", required=True, help="the XYZ template, …/WebMercatorQuad/{z}/{y}/{x}")
    ap.add_argument("--style", required=True, help="the MapLibre style's URL")
    drawing_arguments(ap)
    args = ap.parse_args()
    start_qgis()
    requests, failed = record_requests()
    layer = QgsVectorTileLayer(f"type=xyz&url={args.tiles}&zmin=0&zmax=22", "city")
    with urllib.request.urlopen(args.style, timeout=60) as answer:
        style = json.load(answer)
    converter = QgsMapBoxGlStyleConverter()
    converted = converter.convert(style)
    if converter.renderer() is not None:
        layer.setRenderer(converter.renderer())
    x0, y0, x1, y1 = (float(v) for v in args.bbox.split(","))
    mercator = QgsCoordinateReferenceSystem("EPSG:3857")
    to_mercator = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), mercator, QgsProject.instance())
    pixels, _errors = draw([layer], mercator, to_mercator.transformBoundingBox(QgsRectangle(x0, y0, x1, y1)),
                           args.colour)
    report = {"valid": layer.isValid(), "converted": int(converted), "warnings": converter.warnings(),
              "pixels": pixels, "requests": requests, "failed": failed}
    print(json.dumps(report))
    return 0 if layer.isValid() else 1


if __name__ == "__main__":
    sys.exit(main())
