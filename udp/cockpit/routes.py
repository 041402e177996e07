"""Routes serving the cockpit at /cockpit/: index.html, its scripts and styles, and the vendored libraries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"

# everything the page loads comes from the platform itself; MQTT over WebSockets may be on another port
# (MQTT.js runs its keep-alive timer in a worker made from a blob); the city's OpenID Connect issuer, when the
# cockpit signs in there, is asked for its endpoints and the token
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:{issuer}; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
       "frame-ancestors 'self'")


class CockpitFiles(StaticFiles):
    """Static files with caching headers: libraries under vendor/ carry their version in the path and are
    kept for a week; the application's own files are revalidated (ETag) on every load."""

    def __init__(self, *args: Any, issuer: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        origin = "" if issuer is None else "://".join(urlsplit(issuer)[:2])
        self.csp = CSP.format(issuer=f" {origin}" if origin else "")

    def file_response(self, full_path: os.PathLike | str, stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        """The file, or 304, with Cache-Control and the security headers."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        vendored = Path(full_path).resolve().is_relative_to(STATIC / "vendor")
        response.headers["Cache-Control"] = "public, max-age=604800, immutable" if vendored else "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if str(full_path).endswith(".html"):
            response.headers["Content-Security-Policy"] = self.csp
            response.headers["Referrer-Policy"] = "same-origin"
        return response


def cockpit_routes(issuer: str | None = None) -> list[BaseRoute]:
    """/cockpit redirects to /cockpit/, which serves index.html; /cockpit/... serves the static files."""

    async def redirect(request: Request) -> Response:
        # relative, so that it holds behind a reverse proxy that adds a path prefix
        query = request.url.query
        return RedirectResponse("cockpit/" + (f"?{query}" if query else ""), status_code=308)

    files = CockpitFiles(directory=STATIC, html=True, follow_symlink=False, issuer=issuer)
    return [
        Route("/cockpit", redirect, methods=["GET", "HEAD"]),
        Mount("/cockpit", app=GZipMiddleware(files, minimum_size=1024), name="cockpit"),
    ]
