"""Load an OGC API Features collection into headless QGIS (PyQGIS, Debian's /usr/bin/python3) and print what it got.

Run: QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_load_layer.py --url http://127.0.0.1:PORT/ogcapi \
--collection bikes [--filter EXPR] [--subset EXPR] [--show 3]

`--filter` goes into the provider URI's `filter` key, `--subset` through `layer.setSubsetString`. Prints one JSON
object (`valid`, `featureCount`, `iterated`, `features`, `requests` QGIS sent, `messages` from QgsMessageLog) and
exits 1 when the layer is invalid, a request failed, or QGIS logged a critical message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402  (the environment above must be set before Qt loads)
    Qgis,
    QgsApplication,
    QgsFeatureRequest,
    QgsNetworkAccessManager,
    QgsVectorLayer,
)
from qgis.PyQt.QtNetwork import QNetworkRequest  # noqa: E402


def uri_for(url: str, collection: str, expression: str | None) -> str:
    """The OAPIF provider URI for one collection, with an optional `filter` expression."""
    parts = [f"url='{url}'", f"typename='{collection}'", "restrictToRequestBBOX='0'"]
    if expression:
        parts.append("filter='" + expression.replace("\\", "\\\\").replace("'", "\\'") + "'")
    return " ".join(parts)


def plain(value: Any) -> Any:
    """A QVariant-ish attribute value as something json.dumps accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "isNull") and value.isNull():
        return None
    if hasattr(value, "toString"):
        try:
            return value.toString(1)  # Qt.ISODate for QDate/QDateTime
        except TypeError:
            return value.toString()
    return str(value)


def main() -> int:
    """Load the layer, print the JSON report, and return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="the OGC API landing page, e.g. http://127.0.0.1:8000/ogcapi")
    ap.add_argument("--collection", required=True)
    ap.add_argument("--filter", help="a QGIS expression for the provider URI's filter key")
    ap.add_argument("--subset", help="a QGIS expression set with layer.setSubsetString")
    ap.add_argument("--show", type=int, default=3, help="how many features' attributes to print")
    args = ap.parse_args()

    app = QgsApplication([], False)
    app.setPrefixPath("/usr", True)
    app.initQgis()
    messages: list[dict[str, Any]] = []
    QgsApplication.messageLog().messageReceived.connect(
        lambda msg, tag, level: messages.append({"tag": tag, "level": int(level), "message": msg}))
    requests: list[dict[str, Any]] = []
    QgsNetworkAccessManager.instance().finished.connect(lambda reply: requests.append({
        "url": reply.request().url().toString(), "error": int(reply.error()),
        "status": plain(reply.attribute(QNetworkRequest.HttpStatusCodeAttribute))}))

    uri = uri_for(args.url, args.collection, args.filter)
    layer = QgsVectorLayer(uri, "layer", "OAPIF")
    out: dict[str, Any] = {"qgis": Qgis.version(), "uri": uri, "valid": layer.isValid()}
    if layer.isValid() and args.subset is not None:
        out["subsetAccepted"] = layer.setSubsetString(args.subset)
    if layer.isValid():
        out["subsetString"] = layer.subsetString()
        out["fields"] = [f.name() for f in layer.fields()]
        out["fieldTypes"] = {f.name(): f.typeName() for f in layer.fields()}
        out["featureCount"] = layer.featureCount()
        features = []
        iterated = 0
        for feature in layer.getFeatures(QgsFeatureRequest()):
            iterated += 1
            if len(features) < args.show:
                features.append({name: plain(feature[name]) for name in out["fields"]}
                                | {"geometry": feature.geometry().asWkt(6)})
        out["iterated"] = iterated
        out["features"] = features
        out["extent"] = layer.extent().toString(6)
    else:
        out["error"] = layer.error().summary()
    app.processEvents()  # deliver the queued request signals from the download threads
    out["requests"] = requests
    out["messages"] = messages
    print(json.dumps(out, ensure_ascii=False, indent=1))
    failed = (not layer.isValid() or any(m["level"] >= int(Qgis.Critical) for m in messages)
              or any(r["error"] != 0 or (r["status"] or 0) >= 400 for r in requests))
    del layer  # before exitQgis, or the provider's teardown crashes
    app.exitQgis()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
