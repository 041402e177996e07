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
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsNetworkAccessManager,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402


def main() -> int:
    """Load both layers, print the JSON report, and return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="the platform's base URL")
    ap.add_argument("--layer", required=True, help="a collection id")
    ap.add_argument("--bbox", required=True, help="lon0,lat0,lon1,lat1 to draw")
    ap.add_argument("--colour", required=True, help="#rrggbb: the pixels of this colour are counted")
    args = ap.parse_args()
    app = QgsApplication([], False)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    requests: list[str] = []
    failed: list[str] = []
    nam = QgsNetworkAccessManager.instance()

    def finished(reply: object) -> None:
        url = reply.request().url().toString()  # type: ignore[attr-defined]
        requests.append(url)
        if int(reply.error()) != 0:  # type: ignore[attr-defined]
            failed.append(url)

    nam.finished.connect(finished)

    wms = QgsRasterLayer(f"url={args.url}/wms&layers={args.layer}&styles=&format=image/png&crs=EPSG:4326",
                         args.layer, "wms")
    out: dict = {"wms_valid": wms.isValid(), "wms_error": wms.error().summary() if not wms.isValid() else ""}
    if wms.isValid():
        x0, y0, x1, y1 = (float(v) for v in args.bbox.split(","))
        settings = QgsMapSettings()
        settings.setLayers([wms])
        settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
        settings.setExtent(QgsRectangle(x0, y0, x1, y1))
        settings.setOutputSize(QSize(512, 512))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        image = job.renderedImage()
        want = QColor(args.colour)
        out["pixels"] = sum(
            1 for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)
            if all(abs(a - b) <= 40 for a, b in zip(QColor(image.pixel(x, y)).getRgb()[:3], want.getRgb()[:3])))
        out["wms_errors"] = list(job.errors()) and [e.message for e in job.errors()]

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
