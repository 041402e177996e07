"""Starlette routes for the SensorThings API under `/v1.1`."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sensorthings.service import ApiRequest, Service

MAX_BODY = 64 * 1024 * 1024
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


def public_base(request: Request, public_url: str | None) -> str:
    """The URL clients reach the platform at: the configured public URL, or what the request says
    (honouring X-Forwarded-Proto/Host from a reverse proxy)."""
    if public_url:
        return public_url.rstrip("/")
    headers = request.headers
    proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host", headers.get("host", request.url.netloc)).split(",")[0].strip()
    prefix = headers.get("x-forwarded-prefix", "").rstrip("/")
    return f"{proto}://{host}{prefix}"


def sensorthings_routes(service: Service, public_url: str | None = None, prefix: str = "/v1.1") -> list[Route]:
    """The routes serving the SensorThings API under `prefix` (the service root at `prefix` itself,
    with or without a trailing slash)."""

    async def endpoint(request: Request) -> Response:
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return Response(b'{"code":413,"type":"error","message":"request body over the limit of 64 MiB"}',
                            413, media_type="application/json")
        body = await request.body() if request.method in ("POST", "PATCH", "PUT") else None
        if body is not None and len(body) > MAX_BODY:
            return Response(b'{"code":413,"type":"error","message":"request body over the limit of 64 MiB"}',
                            413, media_type="application/json")
        req = ApiRequest(
            method=request.method,
            path=request.path_params.get("path", ""),
            params=dict(request.query_params),
            body=body,
            base=f"{public_base(request, public_url)}{prefix}",
            content_type=request.headers.get("content-type", ""),
            query_string=request.url.query,
            if_none_match=request.headers.get("if-none-match", ""),
        )
        res = await run_in_threadpool(service.handle, req)
        media = res.headers.pop("Content-Type", "application/json")
        if res.status in (204, 304):
            return Response(status_code=res.status, headers=res.headers)
        return Response(res.content(), res.status, headers=res.headers, media_type=media)

    return [Route(prefix, endpoint, methods=METHODS), Route(prefix + "/{path:path}", endpoint, methods=METHODS)]
