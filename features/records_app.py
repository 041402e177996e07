"""OGC API Records Part 1 at /ogcapi/collections/{catalogue}: the catalogue as a collection whose itemType is
`record`, searched with `q`, `bbox`, `datetime`, `type`, `ids`, `sortby` and CQL2 `filter`; pygeoapi lists it and
serves its collection document and HTML pages through `RecordsSource`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from apicommon.request import public_base, sees_internal
from features.record import Catalogue, Record, record_document
from features.record_index import RecordIndex
from features.records_query import FIELDS, RecordsQuery, parse_records
from features.request import MAX_LIMIT, ItemsQuery, ParamError
from features.responses import error as _error
from features.responses import wants_html as _wants_html
from features.source import FeatureSource, Page

PREFIX = "/ogcapi"
GEOJSON = "application/geo+json"
_PUBLIC_BASE = "http://udp-public-base.invalid"  # pygeoapi's pages: the platform's wrapper writes the real base
_RECORDS = "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/"
CONFORMANCE = [_RECORDS + c for c in ("core", "record-core", "record-collection", "record-api", "searchable-catalog",
                                      "sorting", "filtering", "json", "oas30")]
REFRESH_S = 5.0  # how old a catalogue snapshot may get: extents follow the data within this


class Indexes:
    """The catalogue's searchable snapshots (public, and full for the read role), rebuilt when the records
    change and at most every REFRESH_S seconds."""

    def __init__(self, catalogue: Catalogue, refresh_s: float = REFRESH_S) -> None:
        self.catalogue = catalogue
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._known: dict[bool, tuple[float, RecordIndex]] = {}

    def get(self, full: bool) -> RecordIndex:
        """The current snapshot for a requester with (full) or without the read role."""
        with self._lock:
            known = self._known.get(full)
            if known is not None and time.monotonic() - known[0] < self.refresh_s:
                return known[1]
            version, records = self.catalogue.records(full)
            index = known[1] if known is not None and known[1].version == version else RecordIndex(records, version)
            self._known[full] = (time.monotonic(), index)
            return index


class RecordsSource(FeatureSource):
    """The catalogue as pygeoapi sees it: a collection of records (its collection document, HTML pages)."""

    item_type = "record"
    cache_control = "no-cache"
    placeholder = _PUBLIC_BASE.encode()

    def __init__(self, indexes: Indexes) -> None:
        self.indexes = indexes
        cat = indexes.catalogue
        self.id, self.title, self.description = cat.id, cat.title, cat.description
        self.keywords = ("catalogue", "metadata", "records")

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """The records' queryables."""
        return {k: {"type": v["type"]} | ({"format": v["format"]} if "format" in v else {}) for k, v in
                FIELDS.items()}

    @property
    def storage_crs(self) -> int | None:
        """Extents are CRS84."""
        return None

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The whole world: records come and go."""
        return None

    def search(self, q: ItemsQuery) -> Page:
        """The records an items query selects, encoded."""
        index = self.indexes.get(q.sees_internal)
        matched, page = index.search(RecordsQuery(q))
        return Page(matched, [self._encode(r) for r in page])

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One record."""
        index = self.indexes.get(q.sees_internal)
        row = index.by_id.get(fid)
        return None if row is None else self._encode(index.records[row])

    def _encode(self, record: Record) -> bytes:
        url = f"{_PUBLIC_BASE}{PREFIX}/collections/{self.id}"
        return orjson.dumps(record_document(record, _PUBLIC_BASE, url, self.indexes.catalogue.metadata.language))

    def etag(self) -> str:
        """From the body."""
        return ""


def records_routes(indexes: Indexes, public_url: str | None, html: Callable[[], Response],
                   max_limit: int = MAX_LIMIT) -> list[BaseRoute]:
    """The catalogue's items routes (JSON; `html()` answers for HTML: pygeoapi's pages), before the generic ones."""
    cid = indexes.catalogue.id
    language = indexes.catalogue.metadata.language

    def answer(request: Request, body: bytes) -> Response:
        etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept, Authorization"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=GEOJSON, headers=headers)

    async def items(request: Request) -> Response:
        if _wants_html(request):
            return html()
        params = dict(request.query_params)
        try:
            if params.get("f") not in (None, "json", "geojson"):
                raise ParamError(f"f: {params['f']!r} is not offered here (json, html)")
            q = parse_records(params, max_limit)
        except ParamError as exc:
            return _error(400, "InvalidParameterValue", str(exc))
        full = sees_internal(request.scope)
        try:
            index = await run_in_threadpool(indexes.get, full)
            matched, page = await run_in_threadpool(index.search, q)
        except ParamError as exc:
            return _error(400, "InvalidParameterValue", str(exc))
        base = public_base(request, public_url)
        url = f"{base}{PREFIX}/collections/{cid}"
        keep = [(k, v) for k, v in request.query_params.multi_items() if k not in ("offset", "f")]
        items_q = q.items

        def link(extra: list[tuple[str, str]], rel: str, kind: str, title: str) -> dict[str, str]:
            return {"href": f"{url}/items?{urlencode([*keep, *extra])}", "rel": rel, "type": kind, "title": title}

        links = [link([("f", "json")] + [("offset", str(items_q.offset))] * bool(items_q.offset), "self", GEOJSON,
                      "this document"),
                 link([("f", "html")], "alternate", "text/html", "this document as HTML"),
                 {"href": url, "rel": "collection", "type": "application/json", "title": indexes.catalogue.title}]
        if not items_q.hits and items_q.offset + items_q.limit < matched:
            links.append(link([("offset", str(items_q.offset + items_q.limit))], "next", GEOJSON, "next page"))
        if items_q.offset > 0 and not items_q.hits:
            links.append(link([("offset", str(max(0, items_q.offset - items_q.limit)))], "prev", GEOJSON,
                              "previous page"))
        features = [record_document(r, base, url, language) for r in page]
        if items_q.properties is not None:
            for f in features:
                f["properties"] = {k: v for k, v in f["properties"].items() if k in items_q.properties}
        if items_q.skip_geometry:
            for f in features:
                f["geometry"] = None
        body = orjson.dumps({"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(features),
                             "timeStamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "links": links,
                             "features": features})
        return answer(request, body)

    async def item(request: Request) -> Response:
        if _wants_html(request):
            return html()
        unknown = [k for k in request.query_params if k != "f"]
        if unknown:
            return _error(400, "InvalidParameterValue", f"{unknown[0]}: unknown query parameter (parameters: f)")
        index = await run_in_threadpool(indexes.get, sees_internal(request.scope))
        rid = request.path_params["rid"]
        row = index.by_id.get(rid)
        if row is None:
            return _error(404, "NotFound", f"no record {rid!r} in {cid!r}")
        base = public_base(request, public_url)
        return answer(request, orjson.dumps(record_document(index.records[row], base,
                                                            f"{base}{PREFIX}/collections/{cid}", language)))

    return [Route(f"{PREFIX}/collections/{cid}/items", items, methods=["GET", "HEAD"]),
            Route(f"{PREFIX}/collections/{cid}/items/{{rid}}", item, methods=["GET", "HEAD"])]

