"""What a request tells both APIs: the base URL its links are written under, and whether it sees internal data."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request


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


def sees_internal(scope: Any) -> bool:
    """Whether the request's principal (set by the platform's access control) holds the read role."""
    principal = scope.get("udp.principal")
    return bool(principal is not None and principal.can("read"))
