"""The routes /wms (WMS 1.3.0) and /wfs (WFS 2.0): each request gets the mapfile of the collections its
requester may see, as they are now, and MapServer's answer to it.

Who sees what is the OGC API's rule: public collections for everyone, `internal` ones with the read role. A
layer the requester may not see is not in the mapfile, so MapServer answers it as it answers any unknown layer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from apicommon.request import public_base, sees_internal
from features.shared_files import remove_unused, write_whole
from features.source import DatabaseTable, FeatureSource, SourceUnavailable
from features.styles import colours
from ows import mapserver
from ows.fastcgi import FastCgiError
from ows.mapfile import MapLayer, ServiceInfo, render
from ows.snapshot import KEEP_S, Snapshots
from ows.view import View, parse_view

log = logging.getLogger(__name__)
TABLE_RECHECK_S = 60.0  # how long a live table's place (its SELECT, geometry kind) is trusted
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
         "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")
MAX_BODY = 1024 * 1024  # a WFS request's XML


def ows_routes(sources: Mapping[str, FeatureSource], service: ServiceInfo, public_url: str | None,
               directory: Path) -> list[BaseRoute]:
    """/wms and /wfs over the collections of features in `sources`; files go to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    snapshots = Snapshots(directory / "snapshots")
    mapped = [s for s in sources.values() if s.item_type == "feature"]
    palette = colours(mapped)  # in config order, as the tiles' style
    tables: dict[str, tuple[str, float, DatabaseTable | None]] = {}
    fontset = _fontset(directory)
    server = mapserver.MapServer(directory)

    def placed(source: FeatureSource) -> MapLayer:
        version, now = source.etag(), time.monotonic()
        known = tables.get(source.id)
        if known is not None and (known[0] == version if version else now - known[1] < TABLE_RECHECK_S):
            table = known[2]
        else:
            table = source.database_table()
            tables[source.id] = (version, now, table)
        if table is None:
            snapshot = snapshots.current(source)
            return MapLayer(source, snapshot, palette[source.id], snapshot.overviews)
        return MapLayer(source, table, palette[source.id], snapshots.current(source, whole=False).overviews)

    def mapfile(base: str, internal: bool, view: View | None) -> Path:
        layers = []
        for source in mapped:
            if source.access == "internal" and not internal:
                continue
            try:
                layers.append(placed(source))
            except (SourceUnavailable, DBAPIError) as exc:  # the others still answer; this one is away for now
                log.warning("collection %s left out of WMS/WFS: %s", source.id, exc)
        text = render(service, base, layers, fontset, view)
        path = directory / f"{hashlib.sha1(text.encode()).hexdigest()[:20]}.map"
        if path.exists():
            os.utime(path)  # in use: the sweep keeps it
        else:
            write_whole(path, text)
            remove_unused(directory.glob("*.map"), lambda p: p == path, KEEP_S)
        return path

    async def answer(request: Request, service_name: str) -> Response:
        if mapserver.mapserv() is None:
            return _exception("NoApplicableCode", "this platform has no MapServer: WMS and WFS need the "
                              "cgi-mapserver package", 503)
        body = None
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY:
                return _exception("OperationProcessingFailed", f"a request body is at most {MAX_BODY} bytes", 413)
        internal = sees_internal(request.scope)
        query = mapserver.safe_query(request.url.query, service_name)
        view = parse_view(request.query_params)
        path = await run_in_threadpool(mapfile, public_base(request, public_url), internal, view)
        try:
            out = await server.run(path, query, body, request.headers.get("content-type"))
        except TimeoutError:
            return _exception("OperationProcessingFailed", f"the request took longer than {mapserver.TIMEOUT_S:g} s",
                              503)
        except (FastCgiError, OSError) as exc:  # MapServer died twice under this request
            log.warning("MapServer failed a request: %s", exc)
            return _exception("NoApplicableCode", "the map server failed this request; try again", 503)
        if service_name == "WMS" and b'code="InvalidSRS"' in out.body[:2000]:
            # WMS 1.3.0 names the code InvalidCRS (MapServer 8.0 keeps 1.1.1's name)
            out.body = out.body.replace(b'code="InvalidSRS"', b'code="InvalidCRS"', 1)
        headers = {k: v for k, v in out.headers.items() if k.lower() in {"content-type", "content-disposition"}}
        headers["Cache-Control"] = "private, no-cache" if internal else "no-cache"
        headers["Vary"] = "Authorization"
        return Response(out.body, status_code=out.status, headers=headers)

    async def wms(request: Request) -> Response:
        return await answer(request, "WMS")

    async def wfs(request: Request) -> Response:
        return await answer(request, "WFS")

    return [Route("/wms", wms, methods=["GET", "HEAD"]), Route("/wfs", wfs, methods=["GET", "HEAD", "POST"])]


def _exception(code: str, text: str, status: int) -> Response:
    """An OGC exception report of the platform's own (MapServer writes the others)."""
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<ServiceExceptionReport version="1.3.0" '
           'xmlns="http://www.opengis.net/ogc">\n'
           f'  <ServiceException code="{code}">{escape(text)}</ServiceException>\n</ServiceExceptionReport>\n')
    return Response(xml, status_code=status, media_type="text/xml",
                    headers={"Retry-After": "5"} if status == 503 else None)


def _fontset(directory: Path) -> str | None:
    """A MapServer font set naming one sans font of the machine (legend labels), None when there is none."""
    font = next((f for f in FONTS if os.path.exists(f)), None)
    if font is None:
        return None
    path = directory / "fonts.list"
    write_whole(path, f"sans {font}\n")
    return str(path)
