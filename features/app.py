"""OGC API Features at /ogcapi: the platform's items routes (GeoJSON, fast, every parameter honoured or
refused) in front of pygeoapi, which serves the landing page, conformance, collections, queryables,
the OpenAPI document and HTML, configured from config.yml at start-up."""

from __future__ import annotations

import atexit
import hashlib
import mimetypes
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apicommon.request import client_of, holds, public_base, refusal, sees_internal
from features import crs as crsmod
from features.dcat import dcat_routes
from features.pygeoapi_config import PLACEHOLDER, install
from features.record import Catalogue
from features.records_app import CONFORMANCE as RECORDS
from features.records_app import Indexes, RecordsSource, records_routes
from features.request import COMMON, MAX_LIMIT, ItemsQuery, ParamError, parse_item, parse_items
from features.responses import error as _error
from features.responses import gone, unavailable
from features.responses import wants_html as _wants_html
from features.source import SOURCES, Author, FeatureSource, Page, SourceUnavailable, WriteRejected
from features.tile_files import TileFiles
from features.tiles import CONFORMANCE as TILES
from features.tiles_app import tile_links, tiled, tiles_routes
from sensorthings.store.base import QueryTimeout

PREFIX = "/ogcapi"
GEOJSON = "application/geo+json"
# the vendored MapLibre is ES modules (.mjs), which browsers run only when served as JavaScript
mimetypes.add_type("text/javascript", ".mjs")
# what works, exactly: QGIS pushes CQL2 to the server only when the filter classes are all declared
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/arithmetic",
]


class _Rebased:
    """pygeoapi behind the platform: links carry the request's public base, JSON is the default format,
    unknown query parameters are refused, conformance lists what works."""

    def __init__(self, app: ASGIApp, public_url: str | None, internal: set[str], conformance: list[str],
                 has_tiles: Callable[[str], bool] = lambda cid: False) -> None:
        self.app = app
        self.has_tiles = has_tiles  # collection id → whether it has vector tiles (its documents link them)
        self.public_url = public_url
        self.internal = internal  # collections only the read role sees
        self.conformance = conformance

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        base = public_base(request, self.public_url) + PREFIX
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # QGIS asks for /collections/{id}/ too: the same resource
            path = path.rstrip("/")
            scope = {**scope, "path": root + path, "raw_path": (root + path).encode()}
        allowed = COMMON | ({"f", "lang", "limit", "offset", "bbox", "datetime", "q", "type", "sortby"}
                            if path.endswith("/collections") else set())
        unknown = [k for k in request.query_params if k not in allowed and not scope.get("udp.checked")]
        if unknown:
            await _error(400, "InvalidParameterValue", f"{unknown[0]}: unknown query parameter "
                                                       f"(parameters: {', '.join(sorted(allowed))})")(
                scope, receive, send)
            return
        hidden = self.internal if not sees_internal(scope) else set()
        parts = path.strip("/").split("/")
        if hidden and len(parts) >= 2 and parts[0] == "collections" and parts[1] in hidden:
            await _error(404, "NotFound", f"no collection {parts[1]!r}")(scope, receive, send)
            return
        if path.rstrip("/") == "/conformance" and not _wants_html(request):
            await Response(orjson.dumps({"conformsTo": self.conformance}), media_type="application/json")(
                scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = b"".join(chunks).replace(PLACEHOLDER.encode(), base.encode())
                    if body.startswith(b"{") and (parts in ([""], ["collections"]) or (
                            len(parts) == 2 and parts[0] == "collections")):
                        doc = orjson.loads(body)
                        if hidden and parts == ["collections"]:
                            doc["collections"] = [c for c in doc.get("collections", []) if c.get("id") not in hidden]
                        body = orjson.dumps(tile_links(doc, parts, base, self.has_tiles))
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def _etag(source: FeatureSource, request: Request) -> str:
    version = source.etag()
    if not version:
        return ""
    raw = f"{version}|{request.url.path}|{request.url.query}".encode()
    return '"' + hashlib.sha1(raw).hexdigest()[:20] + '"'


def _answer(request: Request, source: FeatureSource, body: bytes, etag: str, q: ItemsQuery, root: str,
            basis: tuple[bytes, ...] = ()) -> Response:
    """The GeoJSON response: links under the public base, an ETag (when the source cannot tell its version in
    advance, from `basis`: the body without what differs on every request, or else the body), 304 when the
    client has it."""
    if source.placeholder is not None:
        body = body.replace(source.placeholder, root.encode())
    if not etag:
        digest = hashlib.sha1()
        for part in basis or (body,):
            digest.update(part)
        etag = '"' + digest.hexdigest()[:20] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=_headers(source, etag, q))
    return Response(body, media_type=GEOJSON, headers=_headers(source, etag, q))


def _headers(source: FeatureSource, etag: str, q: ItemsQuery) -> dict[str, str]:
    # what a request is shown depends on who signs it: shared caches must tell requesters apart
    control = "private, no-cache" if source.access == "internal" else source.cache_control
    return {"ETag": etag, "Cache-Control": control, "Content-Crs": f"<{crsmod.uri(q.crs)}>",
            "Vary": "Accept, Authorization"}


def features_routes(sources: Mapping[str, FeatureSource], title: str, public_url: str | None,
                    max_limit: int = MAX_LIMIT, catalogue: Catalogue | None = None,
                    tile_dir: Path | None = None) -> list[BaseRoute]:
    """The /ogcapi routes serving `sources` (collection id → source, built by the shell), which become the
    registry pygeoapi's provider reads too; `limit` at most `max_limit` (server.max_top); with a `catalogue`, its
    records as one more collection (OGC API Records); `tile_dir`: where tiles are kept on disk."""
    SOURCES.clear()
    SOURCES.update(sources)
    indexes = Indexes(catalogue) if catalogue is not None else None
    if indexes is not None:
        SOURCES[indexes.catalogue.id] = RecordsSource(indexes)
    workdir = Path(tempfile.mkdtemp(prefix="udp-pygeoapi-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    install(title, SOURCES, workdir, max_limit, catalogue.metadata if catalogue is not None else None)
    import pygeoapi.api.itemtypes as itemtypes
    from pygeoapi.starlette_app import APP as PYGEOAPI  # configured by install() above

    itemtypes.CONFORMANCE_CLASSES_FEATURES[:] = [c for c in CONFORMANCE if "ogcapi-common" not in c]
    itemtypes.CONFORMANCE_CLASSES_RECORDS[:] = RECORDS
    rebased = _Rebased(PYGEOAPI, public_url, {cid for cid, src in SOURCES.items() if src.access == "internal"},
                       CONFORMANCE + TILES + (RECORDS if indexes is not None else []),
                       lambda cid: cid in SOURCES and tiled(SOURCES[cid]))

    def source_of(request: Request) -> FeatureSource | None:
        found = SOURCES.get(request.path_params["cid"])
        if found is not None and found.access == "internal" and not sees_internal(request.scope):
            return None  # as if it did not exist
        return found

    def prepared(request: Request, parse: Callable[[FeatureSource, dict[str, str]], ItemsQuery]
                 ) -> tuple[FeatureSource, ItemsQuery, str | None] | Response:
        """The stages both routes run first: the collection (404), the parsed query (400), HTML handed to
        pygeoapi, who may see internal data, and a 304 for a current ETag; or the response that ends there."""
        source = source_of(request)
        if source is None:
            return _error(404, "NotFound", f"no collection {request.path_params['cid']!r}")
        try:
            q = parse(source, dict(request.query_params))
        except ParamError as exc:
            return _error(400, "InvalidParameterValue", str(exc))
        if _wants_html(request):
            return _Delegate(rebased)
        q = replace(q, sees_internal=sees_internal(request.scope), moderator=holds(request.scope, "moderate"))
        etag = _etag(source, request)
        if etag and request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=_headers(source, etag, q))
        return source, q, etag

    def parse_page(source: FeatureSource, params: dict[str, str]) -> ItemsQuery:
        q = parse_items(params, source.fields, source.offered_crs(), source.time_column is not None, max_limit)
        if q.format not in (None, "json", "geojson", "html"):
            raise ParamError(f"f: {q.format!r} is not offered here (json, html)")
        return q

    async def items(request: Request) -> Response:
        ready = prepared(request, parse_page)
        if isinstance(ready, Response):
            return ready
        source, q, etag = ready
        if q.after is not None and not source.pages_by_key:
            return _error(400, "InvalidParameterValue", f"cursor: collection {source.id!r} pages by offset")
        try:
            page: Page = await run_in_threadpool(source.search, q)
        except (ParamError, QueryTimeout) as exc:  # a filter too costly for the store is the client's to narrow
            return _error(400, "InvalidParameterValue", str(exc))
        except SourceUnavailable as exc:
            return gone(str(exc))
        except DBAPIError as exc:
            return unavailable(exc)
        root = public_base(request, public_url)
        base = root + PREFIX
        url = f"{base}/collections/{source.id}/items"
        keep = [(k, v) for k, v in request.query_params.multi_items() if k not in ("offset", "f")]
        links = [
            {"href": f"{url}?{urlencode([*keep, ('f', 'json')] + [('offset', str(q.offset))] * bool(q.offset))}",
             "rel": "self", "type": GEOJSON, "title": "this document"},
            {"href": f"{url}?{urlencode([*keep, ('f', 'html')])}", "rel": "alternate", "type": "text/html",
             "title": "this document as HTML"},
            {"href": f"{base}/collections/{source.id}", "rel": "collection", "type": "application/json",
             "title": source.title},
        ]
        if source.pages_by_key and not q.offset:  # keyset paging: the next page starts after this one's last row
            after = [(k, v) for k, v in keep if k != "cursor"]
            nxt = urlencode([*after, ("cursor", page.next_cursor)]) if page.next_cursor else None
        else:
            more = q.offset + q.limit < page.number_matched if page.exact else len(page.features) == q.limit
            nxt = urlencode([*keep, ("offset", str(q.offset + q.limit))]) if more else None
        if not q.hits and nxt:
            links.append({"href": f"{url}?{nxt}", "rel": "next", "type": GEOJSON, "title": "next page"})
        if q.offset > 0 and not q.hits:
            links.append({"href": f"{url}?{urlencode([*keep, ('offset', str(max(0, q.offset - q.limit)))])}",
                          "rel": "prev", "type": GEOJSON, "title": "previous page"})
        # an estimated count is no numberMatched (optional in OGC API Features): a member of its own says it
        counted = {"numberMatched": page.number_matched} if page.exact else {
            "numberMatchedEstimate": page.number_matched}
        counts = {"type": "FeatureCollection", **counted, "numberReturned": len(page.features)}
        head = orjson.dumps({**counts, "timeStamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "links": links})
        features = b",".join(page.features)
        body = head[:-1] + b',"features":[' + features + b"]}"
        # the timeStamp changes every second: an ETag taken from it told a client its unchanged copy was stale
        # (the links carry the public base, which the features' placeholder stands for)
        return _answer(request, source, body, etag, q, root, (orjson.dumps({**counts, "links": links}), features))

    async def item(request: Request) -> Response:
        ready = prepared(request, lambda source, params: parse_item(params, source.fields, source.offered_crs()))
        if isinstance(ready, Response):
            return ready
        source, q, etag = ready
        try:
            found = await run_in_threadpool(source.feature, request.path_params["fid"], q)
        except SourceUnavailable as exc:
            return gone(str(exc))
        except DBAPIError as exc:
            return unavailable(exc)
        if found is None:
            return _error(404, "NotFound", f"no feature {request.path_params['fid']!r} in {source.id!r}")
        root = public_base(request, public_url)
        base = root + PREFIX
        links = orjson.dumps([
            {"href": f"{base}/collections/{source.id}/items/{request.path_params['fid']}", "rel": "self",
             "type": GEOJSON, "title": "this document"},
            {"href": f"{base}/collections/{source.id}", "rel": "collection", "type": "application/json",
             "title": source.title}])
        return _answer(request, source, found[:-1] + b',"links":' + links + b"}", etag, q, root)

    def allowed(source: FeatureSource | None, one: bool) -> str:
        """The methods of the items (`one`: an item) of a collection."""
        ways = ["GET", "HEAD"]
        if source is not None:
            ways += [m for m in (("PUT", "PATCH", "DELETE") if one else ("POST",)) if m in source.write_roles]
        return ", ".join([*ways, "OPTIONS"])

    async def options(request: Request) -> Response:
        source = source_of(request)
        return Response(status_code=204, headers={"Allow": allowed(source, "fid" in request.path_params)})

    async def write(request: Request) -> Response:
        """OGC API Features Part 4: POST a new item, PUT or PATCH one, DELETE one; each with the role the
        collection asks for it."""
        source = source_of(request)
        if source is None:
            return _error(404, "NotFound", f"no collection {request.path_params['cid']!r}")
        method = request.method
        one = "fid" in request.path_params
        if method not in source.write_roles:
            return _error(405, "MethodNotAllowed", f"{method} is not taken here ({allowed(source, one)})",
                          {"Allow": allowed(source, one)})
        refused = refusal(request.scope, source.write_roles[method])
        if refused is not None:
            role = source.write_roles[method]
            return _error(refused, "Unauthorized" if refused == 401 else "Forbidden",
                          f"{method} on {source.id!r} takes the {role} role" + (": sign in" if refused == 401 else ""))
        body = await request.body()
        principal = request.scope.get("udp.principal")
        author = Author(client_of(request.scope), bool(principal is not None and principal.roles),
                        getattr(principal, "name", None))
        base = public_base(request, public_url) + PREFIX + f"/collections/{source.id}/items"
        try:
            if method == "POST":
                fid, stored = await run_in_threadpool(source.create, body, author)
                return Response(stored, status_code=201, media_type=GEOJSON,
                                headers={"Location": f"{base}/{fid}", "Cache-Control": "no-store"})
            fid = request.path_params["fid"]
            if method == "DELETE":
                await run_in_threadpool(source.delete, fid, author)
                return Response(status_code=204)
            stored = await run_in_threadpool(source.update, fid, body, method == "PUT", author)
            return Response(stored, media_type=GEOJSON, headers={"Cache-Control": "no-store"})
        except WriteRejected as exc:
            kind = {400: "InvalidParameterValue", 404: "NotFound", 409: "Conflict", 429: "TooManyRequests"}
            return _error(exc.status, kind.get(exc.status, "Refused"), exc.message, exc.headers)
        except SourceUnavailable as exc:
            return gone(str(exc))
        except DBAPIError as exc:
            return unavailable(exc)

    records = [*records_routes(indexes, public_url, lambda: _Delegate(rebased), max_limit),
               *dcat_routes(indexes, public_url)] if indexes else []
    return [
        *records,
        *tiles_routes(SOURCES, source_of, public_url, TileFiles(tile_dir) if tile_dir is not None else None),
        Route(PREFIX + "/collections/{cid}/items", items, methods=["GET", "HEAD"]),
        Route(PREFIX + "/collections/{cid}/items/", items, methods=["GET", "HEAD"]),
        Route(PREFIX + "/collections/{cid}/items/{fid}", item, methods=["GET", "HEAD"]),
        Route(PREFIX + "/collections/{cid}/items", write, methods=["POST"]),
        Route(PREFIX + "/collections/{cid}/items/{fid}", write, methods=["PUT", "PATCH", "DELETE"]),
        Route(PREFIX + "/collections/{cid}/items", options, methods=["OPTIONS"]),
        Route(PREFIX + "/collections/{cid}/items/{fid}", options, methods=["OPTIONS"]),
        Mount(PREFIX, app=rebased),
    ]


class _Delegate(Response):
    """A response that hands the request on to pygeoapi (its HTML pages)."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__()
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        inner = {**scope, "root_path": root + PREFIX, "path": scope["path"], "udp.checked": True,
                 "query_string": _without_blank_sort_keys(scope.get("query_string", b""))}
        await self.app(inner, receive, send)


def _without_blank_sort_keys(query: bytes) -> bytes:
    """The query with blank `sortby` keys left out: they sort by nothing here, pygeoapi 0.21 fails on them (500)."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    if not any(k == "sortby" for k, _ in pairs):
        return query
    kept = [(k, ",".join(key for key in v.split(",") if key.strip()) if k == "sortby" else v) for k, v in pairs]
    return urlencode([(k, v) for k, v in kept if k != "sortby" or v], encoding="latin-1").encode("latin-1")
