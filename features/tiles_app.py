"""OGC API Tiles at /ogcapi: vector tilesets for every feature collection and for the dataset (several collections
as layers of one tile), the tile matrix sets, and the links the landing page and collections get to them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from apicommon.lru import SizedLRU
from apicommon.request import public_base, sees_internal
from features.responses import error, gone, unavailable
from features.source import FeatureSource, SourceUnavailable
from features.styles import maplibre_style, tile_fields, tilejson
from features.tile_files import TileFiles, tile_version
from features.tiles import (
    MVT,
    TMS_IDS,
    TileNotFound,
    TileRequest,
    make_tile,
    matrix_set,
    parse_tile,
)

PREFIX = "/ogcapi"
JSON = "application/json"
STYLE = "application/vnd.mapbox.style+json"  # a MapLibre (Mapbox GL) style document
REL_TILESETS = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"
REL_SCHEMES = "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"
REL_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/"
TEMPLATE = "{tileMatrix}/{tileRow}/{tileCol}"

# encoded tiles by (collection, its data version, tile): a change of the data is a new key
_cache: SizedLRU[bytes] = SizedLRU(64 * 1024 * 1024, len)


def tiled(source: FeatureSource) -> bool:
    """Whether a collection has tiles: every collection of features (not the catalogue's records)."""
    return source.item_type == "feature"


def tile_links(doc: dict[str, Any], parts: list[str], base: str, visible: Callable[[str], bool]) -> dict[str, Any]:
    """pygeoapi's landing page and collection documents with their links to the tiles."""
    def links_for(cid: str) -> list[dict[str, str]]:
        return [{"href": f"{base}/collections/{cid}/tiles", "rel": REL_TILESETS, "type": JSON,
                 "title": "vector tilesets (MVT)"}]

    if not parts or parts == [""]:
        doc.setdefault("links", []).extend([
            {"href": f"{base}/tileMatrixSets", "rel": REL_SCHEMES, "type": JSON, "title": "tile matrix sets"},
            {"href": f"{base}/tiles", "rel": REL_TILESETS, "type": JSON,
             "title": "vector tilesets of the collections together"}])
    elif parts == ["collections"]:
        for c in doc.get("collections", []):
            if visible(c.get("id", "")):
                c.setdefault("links", []).extend(links_for(c["id"]))
    elif len(parts) == 2 and parts[0] == "collections" and visible(parts[1]):
        doc.setdefault("links", []).extend(links_for(parts[1]))
    return doc


def tiles_routes(sources: Mapping[str, FeatureSource], source_of: Callable[[Request], FeatureSource | None],
                 public_url: str | None, files: TileFiles | None = None) -> list[BaseRoute]:
    """The /ogcapi tiles routes over `sources` (the OGC API's registry); `source_of` finds a request's collection
    as the items routes do (internal ones only for the read role); `files`: tiles kept on disk."""

    def tileset_links(base: str, path: str, tms_id: str) -> list[dict[str, Any]]:
        """A tileset's own link, its tiling scheme's and its tiles' template."""
        return [{"href": f"{base}{path}/{tms_id}", "rel": "self", "type": JSON, "title": "the tileset"},
                {"href": f"{base}/tileMatrixSets/{tms_id}", "rel": REL_SCHEME, "type": JSON, "title": tms_id},
                {"href": f"{base}{path}/{tms_id}/{TEMPLATE}", "rel": "item", "type": MVT, "templated": True,
                 "title": "a tile"}]

    def tilesets(base: str, path: str, title: str) -> dict[str, Any]:
        return {"tilesets": [{
            "title": f"{title} ({tms_id})", "dataType": "vector", "crs": matrix_set(tms_id).crs.srs,
            "tileMatrixSetURI": TMS_URI + tms_id, "links": tileset_links(base, path, tms_id)} for tms_id in TMS_IDS],
            "links": [{"href": f"{base}{path}", "rel": "self", "type": JSON, "title": "these tilesets"}]}

    def tileset(base: str, path: str, tms_id: str, layers: list[FeatureSource]) -> dict[str, Any]:
        tms = matrix_set(tms_id)
        boxes = [s.bbox for s in layers if s.bbox is not None]
        doc: dict[str, Any] = {
            "title": ", ".join(s.title for s in layers), "dataType": "vector", "crs": tms.crs.srs,
            "tileMatrixSetURI": TMS_URI + tms_id,
            "layers": [{"id": s.id, "title": s.title, "dataType": "vector",
                        "propertiesSchema": {"type": "object", "properties": tile_fields(s)}} for s in layers],
            "links": tileset_links(base, path, tms_id)}
        if boxes:
            doc["boundingBox"] = {"lowerLeft": [min(b[0] for b in boxes), min(b[1] for b in boxes)],
                                  "upperRight": [max(b[2] for b in boxes), max(b[3] for b in boxes)],
                                  "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
        return doc

    def layer(source: FeatureSource, version: tuple[str, str], req: TileRequest) -> bytes:
        key = (source.id, version, req) if version[0] else None
        found = _cache.get(key) if key else None
        if found is None:
            found = files.tile(source, version, req) if files is not None else make_tile(source, req)
            if key:
                _cache.put(key, found)
        return found

    def made(layers: list[FeatureSource], req: TileRequest, known: str | None) -> tuple[str, bytes | None]:
        """The tile's ETag ("" when only the body can tell) and body (None: the client's `known` ETag is it)."""
        versions = [tile_version(s, req) for s in layers]
        etag = ""
        if all(v[0] for v in versions):
            raw = orjson.dumps([[s.id for s in layers], versions, [req.tms_id, req.z, req.row, req.col]])
            etag = '"' + hashlib.sha1(raw).hexdigest()[:20] + '"'
            if known == etag:
                return etag, None
        # a tile of several layers is the layers' tiles one after the other (MVT's layers are a repeated field)
        return etag, b"".join([layer(s, v, req) for s, v in zip(layers, versions, strict=True)])

    async def answer(request: Request, layers: list[FeatureSource], req: TileRequest) -> Response:
        internal = any(s.access == "internal" for s in layers)
        headers = {"Cache-Control": "private, no-cache" if internal else layers[0].cache_control,
                   "Vary": "Accept, Authorization"}
        known = request.headers.get("if-none-match")
        try:
            etag, body = await run_in_threadpool(made, layers, req, known)
        except SourceUnavailable as exc:
            return gone(str(exc))
        except DBAPIError as exc:
            return unavailable(exc)
        headers["ETag"] = etag or '"' + hashlib.sha1(body or b"").hexdigest()[:20] + '"'
        if body is None or known == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(body, status_code=200 if body else 204, media_type=MVT, headers=headers)

    def collection(request: Request) -> FeatureSource | Response:
        source = source_of(request)
        if source is None or not tiled(source):
            return error(404, "NotFound", f"no collection {request.path_params['cid']!r} with tiles")
        return source

    def chosen(request: Request) -> list[FeatureSource] | Response:
        """The dataset tiles' layers: `collections=a,b` or every collection the requester sees."""
        visible = {cid: s for cid, s in sources.items()
                   if tiled(s) and (s.access != "internal" or sees_internal(request.scope))}
        names = request.query_params.get("collections")
        if not names:
            return list(visible.values())
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        missing = [n for n in wanted if n not in visible]
        if missing:
            return error(400, "InvalidParameterValue", f"collections: no collection {missing[0]!r} with tiles")
        return [visible[n] for n in wanted]

    def root(request: Request) -> str:
        return public_base(request, public_url) + PREFIX

    async def matrix_sets(request: Request) -> Response:
        base = root(request)
        return Response(orjson.dumps({"tileMatrixSets": [
            {"id": t, "title": matrix_set(t).title, "uri": TMS_URI + t,
             "links": [{"href": f"{base}/tileMatrixSets/{t}", "rel": "self", "type": JSON, "title": t}]}
            for t in TMS_IDS]}), media_type=JSON)

    async def matrix_set_doc(request: Request) -> Response:
        try:
            tms = matrix_set(request.path_params["tms"])
        except TileNotFound as exc:
            return error(404, "NotFound", str(exc))
        return Response(tms.model_dump_json(exclude_none=True, by_alias=True), media_type=JSON)

    async def collection_tilesets(request: Request) -> Response:
        found = collection(request)
        if isinstance(found, Response):
            return found
        return Response(orjson.dumps(tilesets(root(request), f"/collections/{found.id}/tiles", found.title)),
                        media_type=JSON)

    def layers_of(request: Request) -> list[FeatureSource] | Response:
        """A collection's tiles have its layer; the dataset's those `chosen`."""
        if "cid" not in request.path_params:
            return chosen(request)
        found = collection(request)
        return found if isinstance(found, Response) else [found]

    async def tileset_doc(request: Request) -> Response:
        layers = layers_of(request)
        if isinstance(layers, Response):
            return layers
        path = f"/collections/{layers[0].id}/tiles" if "cid" in request.path_params else "/tiles"
        try:
            doc = tileset(root(request), path, request.path_params["tms"], layers)
        except TileNotFound as exc:
            return error(404, "NotFound", str(exc))
        return Response(orjson.dumps(doc), media_type=JSON)

    async def tile(request: Request) -> Response:
        layers = layers_of(request)
        if isinstance(layers, Response):
            return layers
        p = request.path_params
        try:
            req = parse_tile(p["tms"], p["z"], p["row"], p["col"])
        except TileNotFound as exc:
            return error(404, "NotFound", str(exc))
        if not layers:
            return Response(b"", status_code=204, media_type=MVT)
        return await answer(request, layers, req)

    async def dataset_tilesets(request: Request) -> Response:
        return Response(orjson.dumps(tilesets(root(request), "/tiles", "The city's collections")), media_type=JSON)

    async def tilejson_doc(request: Request) -> Response:
        layers = layers_of(request)
        if isinstance(layers, Response):
            return layers
        if request.path_params["tms"] != "WebMercatorQuad":
            return error(404, "NotFound", "TileJSON describes WebMercatorQuad tiles only")
        if "cid" in request.path_params:
            url, query, name = f"{root(request)}/collections/{layers[0].id}/tiles/WebMercatorQuad", "", layers[0].title
        else:
            (url, query), name = dataset_url(request, layers), "The city's collections"
        return Response(orjson.dumps(tilejson(layers, url, name, query)), media_type=JSON)

    async def style(request: Request) -> Response:
        if request.path_params["style"] != "default":
            return error(404, "NotFound", f"no style {request.path_params['style']!r} (offered: default)")
        layers = chosen(request)
        if isinstance(layers, Response):
            return layers
        url, query = dataset_url(request, layers)
        doc = maplibre_style(layers, url, "The city's collections", query)
        return Response(orjson.dumps(doc), media_type=STYLE)

    async def styles(request: Request) -> Response:
        url = f"{root(request)}/styles/default"
        return Response(orjson.dumps({"styles": [{"id": "default", "title": "Every collection in its colour",
                                                  "links": [{"href": url, "rel": "stylesheet", "type": STYLE,
                                                             "title": "MapLibre style"}]}]}), media_type=JSON)

    def dataset_url(request: Request, layers: list[FeatureSource]) -> tuple[str, str]:
        """The dataset tiles' URL and the query keeping a `collections=` choice."""
        chosen_ids = request.query_params.get("collections")
        return f"{root(request)}/tiles/WebMercatorQuad", (
            f"?collections={','.join(s.id for s in layers)}" if chosen_ids else "")

    tile_path = "/{tms}/{z}/{row}/{col}"
    get = ["GET", "HEAD"]
    return [
        Route(PREFIX + "/tileMatrixSets", matrix_sets, methods=get),
        Route(PREFIX + "/tileMatrixSets/{tms}", matrix_set_doc, methods=get),
        Route(PREFIX + "/collections/{cid}/tiles", collection_tilesets, methods=get),
        Route(PREFIX + "/collections/{cid}/tiles/{tms}", tileset_doc, methods=get),
        Route(PREFIX + "/collections/{cid}/tiles" + tile_path, tile, methods=get),
        Route(PREFIX + "/tiles", dataset_tilesets, methods=get),
        Route(PREFIX + "/tiles/{tms}", tileset_doc, methods=get),
        Route(PREFIX + "/tiles" + tile_path, tile, methods=get),
        Route(PREFIX + "/collections/{cid}/tiles/{tms}/tilejson.json", tilejson_doc, methods=get),
        Route(PREFIX + "/tiles/{tms}/tilejson.json", tilejson_doc, methods=get),
        Route(PREFIX + "/styles", styles, methods=get),
        Route(PREFIX + "/styles/{style}", style, methods=get),
    ]
