"""What the headless QGIS scripts share (run under Debian's /usr/bin/python3 with PyQGIS): QGIS started without a
screen, and a map of layers drawn and its pixels of one colour counted."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse  # noqa: E402

from qgis.core import (  # noqa: E402  (the environment above must be set before Qt loads)
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsNetworkAccessManager,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

_APP: list[QgsApplication] = []  # held for the process's life: QGIS crashes once its application is collected


def start_qgis() -> QgsApplication:
    """QGIS, initialised, without a screen."""
    app = QgsApplication([], False)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    _APP.append(app)
    return app


def drawing_arguments(ap: argparse.ArgumentParser) -> None:
    """The box to draw and the colour to count."""
    ap.add_argument("--bbox", required=True, help="lon0,lat0,lon1,lat1 to draw")
    ap.add_argument("--colour", required=True, help="#rrggbb: the pixels of this colour are counted")


def record_requests() -> tuple[list[str], list[str]]:
    """The URLs QGIS's network manager finishes, and those that failed, as they happen."""
    requests: list[str] = []
    failed: list[str] = []

    def finished(reply: object) -> None:
        url = reply.request().url().toString()  # type: ignore[attr-defined]
        requests.append(url)
        if int(reply.error()) != 0:  # type: ignore[attr-defined]
            failed.append(url)

    QgsNetworkAccessManager.instance().finished.connect(finished)
    return requests, failed


def draw(layers: list[QgsMapLayer], crs: QgsCoordinateReferenceSystem, extent: QgsRectangle,
         colour: str) -> tuple[int, list[str]]:
    """A 512 × 512 map of the layers on white: how many pixels are near the colour, and the render's errors."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(512, 512))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    want = QColor(colour)
    pixels = 0
    for y in range(image.height()):
        for x in range(image.width()):
            c = QColor(image.pixel(x, y))
            if abs(c.red() - want.red()) + abs(c.green() - want.green()) + abs(c.blue() - want.blue()) < 60:
                pixels += 1
    return pixels, [e.message for e in job.errors()]
