"""What the OGC API routes (features, records, DCAT) answer alike: the JSON error document, and whether a request
asks for HTML."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response


def error(status: int, code: str, description: str) -> Response:
    """An OGC API exception document (`code`, `description`)."""
    return Response(orjson.dumps({"code": code, "description": description}), status,
                    media_type="application/json")


def wants_html(request: Request) -> bool:
    """`f=html`, or a browser's Accept without JSON in it."""
    f = request.query_params.get("f")
    if f is not None:
        return f == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept
