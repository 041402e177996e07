"""What the headless QGIS scripts share (run under Debian's /usr/bin/python3 with PyQGIS): QGIS started without a
screen, and a map of layers drawn and its pixels of one colour counted."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402  (the environment above must be set before Qt loads)
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsMapRendererParallelJob,
    QgsMapSettings,
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
