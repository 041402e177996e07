"""Load the platform's WMS and WFS layers in headless QGIS (PyQGIS, Debian's /usr/bin/python3) and print what it got.

Run: QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_ows.py --url http://127.0.0.1:PORT --layer bikes \
--bbox 126.76,37.42,127.19,37.70 --colour '#1b7a5a'

The WMS layer (QGIS's `wms` provider) is drawn on a 512 × 512 map of the box and the pixels of the colour counted;
the WFS 2.0 layer (QGIS's `WFS` provider) is read whole. Prints one JSON object (`wms_valid`, `pixels`,
`wfs_valid`, `features`, `geometry`, `fields`, `requests` QGIS sent and `failed` ones) and exits 1 when a layer
is invalid or a request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402  (the environment above must be set before Qt loads)
    QgsCoordinateReferenceSystem,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis_draw import draw, drawing_arguments, record_requests, start_qgis  # noqa: E402  (beside this script)


def main() -> int:
    """Load both layers, print the JSON report, and return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="the platform's base URL")
    ap.add_argument("--layer", required=True, help="a collection id")
    drawing_arguments(ap)
    args = ap.parse_args()
    start_qgis()
    requests, failed = record_requests()

    wms = QgsRasterLayer(f"url={args.url}/wms&layers={args.layer}&styles=&format=image/png&crs=EPSG:4326",
                         args.layer, "wms")
    out: dict = {"wms_valid": wms.isValid(), "wms_error": wms.error().summary() if not wms.isValid() else ""}
    if wms.isValid():
        x0, y0, x1, y1 = (float(v) for v in args.bbox.split(","))
        out["pixels"], out["wms_errors"] = draw([wms], QgsCoordinateReferenceSystem("EPSG:4326"),
                                                QgsRectangle(x0, y0, x1, y1), args.colour)

    wfs = QgsVectorLayer(f"url='{args.url}/wfs' typename='udp:{args.layer}' version='2.0.0'", args.layer, "WFS")
    out["wfs_valid"] = wfs.isValid()
    if wfs.isValid():
        features = list(wfs.getFeatures())
        out["features"] = len(features)
        out["geometry"] = QgsWkbTypes.displayString(wfs.wkbType())
        out["fields"] = [f.name() for f in wfs.fields()]
    out["requests"] = requests
    out["failed"] = failed
    print(json.dumps(out, ensure_ascii=False))
    ok = out["wms_valid"] and out["wfs_valid"] and not failed
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    os._exit(main())  # QGIS 3.22 may crash in its own teardown after the work is done
