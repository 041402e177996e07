"""What the OGC API routes (features, tiles, records, DCAT) answer alike: the JSON error document, the answers to a
source or database that cannot be read, and whether a request asks for HTML."""

from __future__ import annotations

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import Response

from apicommon.unavailable import client_fault, database_unavailable


def error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """An OGC API exception document (`code`, `description`)."""
    return Response(orjson.dumps({"code": code, "description": description}), status,
                    media_type="application/json", headers=headers)


def gone(reason: str) -> Response:
    """503 with Retry-After: a source that cannot be read now (the reason names the collection)."""
    response = error(503, "ServiceUnavailable", reason)
    response.headers["Retry-After"] = "5"
    return response


def unavailable(exc: DBAPIError) -> Response:
    """503 with Retry-After when the database cannot be reached, 400 when it cannot evaluate what the client
    sent (as the SensorThings API answers then); any other database error is raised on."""
    if (reason := client_fault(exc)) is not None:
        return error(400, "InvalidParameterValue", reason)
    if not database_unavailable(exc):
        raise exc
    return gone("the database is unavailable")


def wants_html(request: Request) -> bool:
    """`f=html`, or a browser's Accept without JSON in it."""
    f = request.query_params.get("f")
    if f is not None:
        return f == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept
