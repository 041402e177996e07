"""pygeoapi's configuration and OpenAPI document, generated from the platform's sources at start-up.

Nothing is kept by hand and nothing is fetched: the OpenAPI document pygeoapi generates points at
schemas.opengis.net; every such remote `$ref` is replaced by a local component here.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from features import crs as crsmod
from features.metadata import CatalogueMetadata
from features.request import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET
from features.source import FeatureSource

HERE = Path(__file__).parent  # templates/ and static/: the platform's HTML pages and their assets
# every link pygeoapi writes starts with this; the platform's ASGI wrapper puts the request's own base in
PLACEHOLDER = "http://udp-public-base.invalid/ogcapi"


def pygeoapi_config(title: str, sources: dict[str, FeatureSource], max_limit: int = MAX_LIMIT,
                    metadata: CatalogueMetadata | None = None) -> dict[str, Any]:
    """The pygeoapi configuration serving `sources` through the platform provider, its HTML pages from the
    platform's own templates and assets, the publisher and contact from config.yml (`metadata`)."""
    meta = metadata or CatalogueMetadata()
    publisher, contact = meta.publisher, meta.contact
    resources: dict[str, Any] = {}
    for cid, src in sources.items():
        bbox = list(src.bbox) if src.bbox else [-180, -90, 180, 90]
        resources[cid] = {
            "type": "collection", "title": src.title, "description": src.description or src.title,
            "keywords": list(src.keywords) or [cid], "links": [],
            "extents": {"spatial": {"bbox": bbox, "crs": crsmod.CRS84}},
            "providers": [{
                "type": src.item_type, "name": "features.source.PlatformProvider", "data": cid, "id_field": "id",
                "crs": [crsmod.uri(c) for c in src.offered_crs()],
                "storage_crs": crsmod.uri(src.storage_crs),
                **({"time_field": src.time_column} if src.time_column else {}),
            }],
        }
    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": 0}, "url": PLACEHOLDER, "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8", "languages": ["en-US"], "pretty_print": False,
            "limits": {"default_items": DEFAULT_LIMIT, "max_items": max_limit, "on_exceed": "error"},
            # pygeoapi's own basemap setting: the platform's templates draw its own tiles, and none from here
            "map": {"url": "", "attribution": ""},
            "templates": {"path": str(HERE / "templates"), "static": str(HERE / "static")},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {"title": title, "description": f"{title}: the city's datasets as OGC API Features",
                               "keywords": ["urban data platform", "OGC API Features"], "keywords_type": "theme",
                               "terms_of_service": "", "url": "https://www.ogc.org/standards/ogcapi-features"},
            "license": {"name": "Open data: see each collection", "url": ""},
            "provider": {"name": publisher.name if publisher else title,
                         "url": (publisher.url or "") if publisher else ""},
            "contact": {"name": contact.name if contact else title, "position": "", "address": "", "city": "",
                        "stateorprovince": "", "postalcode": "", "country": "", "phone": "", "fax": "",
                        "email": (contact.email or "") if contact else "",
                        "url": (contact.url or "") if contact else "", "hours": "", "instructions": "",
                        "role": "pointOfContact"},
        },
        "resources": resources,
    }


# -- OpenAPI ---------------------------------------------------------------------------------------
_OBJECT = {"type": "object"}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "bbox": {"name": "bbox", "in": "query", "required": False, "style": "form", "explode": False,
             "description": "Only features whose geometry intersects the box (CRS84, or bbox-crs)",
             "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}},
    "datetime": {"name": "datetime", "in": "query", "required": False, "style": "form", "explode": False,
                 "description": "An instant or an interval (`..` for an open end)", "schema": {"type": "string"}},
    "featureId": {"name": "featureId", "in": "path", "required": True, "description": "A feature's id",
                  "schema": {"type": "string"}},
    "crs": {"name": "crs", "in": "query", "required": False, "description": "The CRS of the response's geometries",
            "schema": {"type": "string", "format": "uri"}},
    "bbox-crs": {"name": "bbox-crs", "in": "query", "required": False, "description": "The CRS of `bbox`",
                 "schema": {"type": "string", "format": "uri"}},
    "collectionId": {"name": "collectionId", "in": "path", "required": True, "schema": {"type": "string"}},
}
_TEXT = {"type": "string"}
_ITEMS_PARAMETERS: dict[str, dict[str, Any]] = {
    "fItems": {"name": "f", "in": "query", "required": False, "description": "The format: GeoJSON or HTML",
               "schema": {"type": "string", "enum": ["json", "html"], "default": "json"}},
    "filter": {"name": "filter", "in": "query", "required": False, "schema": _TEXT,
               "description": "A CQL2 filter (text or JSON, see filter-lang)"},
    "filter-lang": {"name": "filter-lang", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": ["cql2-text", "cql2-json"], "default": "cql2-text"}},
    "filter-crs": {"name": "filter-crs", "in": "query", "required": False,
                   "schema": {"type": "string", "format": "uri"}, "description": "The CRS of the filter's geometries"},
    "sortby": {"name": "sortby", "in": "query", "required": False, "style": "form", "explode": False,
               "schema": {"type": "array", "items": {"type": "string", "pattern": "^[+-]?.+$"}},
               "description": "Properties to sort by, `-` for descending"},
    "properties": {"name": "properties", "in": "query", "required": False, "style": "form", "explode": False,
                   "schema": {"type": "array", "items": _TEXT}, "description": "The properties to return"},
    "skipGeometry": {"name": "skipGeometry", "in": "query", "required": False,
                     "schema": {"type": "boolean", "default": False}},
    "offset": {"name": "offset", "in": "query", "required": False,
               "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
    "cursor": {"name": "cursor", "in": "query", "required": False, "schema": _TEXT,
               "description": "Where a `next` link's page starts (opaque; collections paging by key)"},
    "resulttype": {"name": "resulttype", "in": "query", "required": False,
                   "schema": {"type": "string", "enum": ["results", "hits"], "default": "results"}},
}
# OGC API Records' search parameters, for a collection of records (the catalogue)
_RECORDS_PARAMETERS: dict[str, dict[str, Any]] = {
    "q": {"name": "q", "in": "query", "required": False, "style": "form", "explode": False,
          "schema": {"type": "array", "items": _TEXT},
          "description": "Search terms, comma-separated: records matching any of them (a term of several words is a "
                         "phrase), best first"},
    "ids": {"name": "ids", "in": "query", "required": False, "style": "form", "explode": False,
            "schema": {"type": "array", "items": _TEXT}, "description": "Only the records with these ids"},
    "externalIds": {"name": "externalIds", "in": "query", "required": False, "style": "form", "explode": False,
                    "schema": {"type": "array", "items": _TEXT}, "description": "Only the records with these ids"},
}
_ITEMS_ORDER = ("fItems", "lang", "bbox", "bbox-crs", "crs", "datetime", "limit", "offset", "cursor", "filter",
                "filter-lang", "filter-crs", "sortby", "properties", "skipGeometry", "resulttype")
_RESPONSE_TYPES = {"Features": "application/geo+json", "Feature": "application/geo+json"}


def _local(kind: str, name: str) -> dict[str, Any]:
    if kind == "parameters":
        return copy.deepcopy(_PARAMETERS.get(name, {"name": name, "in": "query", "required": False,
                                                    "schema": {"type": "string"}}))
    if kind == "responses":
        media = _RESPONSE_TYPES.get(name, "application/json")
        return {"description": name, "content": {media: {"schema": _OBJECT}}}
    return dict(_OBJECT)


def localize_refs(doc: dict[str, Any]) -> dict[str, Any]:
    """Every remote `$ref` replaced by a local component of the same kind and name."""
    added: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                _, _, fragment = ref.partition("#")
                parts = [p for p in fragment.split("/") if p]
                if len(parts) >= 3 and parts[0] == "components":
                    kind, name = parts[1], parts[-1]
                else:  # a whole remote file: name it after the file
                    kind, name = "schemas", Path(ref.split("#")[0]).stem.replace(".", "-") or "external"
                added.setdefault(kind, {}).setdefault(name, _local(kind, name))
                return {"$ref": f"#/components/{kind}/{name}"}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(doc)
    components = out.setdefault("components", {})
    for kind, entries in added.items():
        for name, value in entries.items():
            components.setdefault(kind, {}).setdefault(name, value)
    return out


def openapi_document(config: dict[str, Any]) -> dict[str, Any]:
    """pygeoapi's OpenAPI document for `config`, self-contained, with the limits clients read."""
    from pygeoapi.openapi import get_oas

    doc = localize_refs(get_oas(config, fail_on_invalid_collection=True))
    params = doc.setdefault("components", {}).setdefault("parameters", {})
    max_limit = config["server"]["limits"]["max_items"]
    params["limit"] = {
        "name": "limit", "in": "query", "required": False, "style": "form", "explode": False,
        "description": f"The number of features in a page (default {DEFAULT_LIMIT}, at most {max_limit})",
        "schema": {"type": "integer", "minimum": 1, "maximum": max_limit, "default": DEFAULT_LIMIT},
    }
    params.update(_ITEMS_PARAMETERS)
    params.update(_RECORDS_PARAMETERS)
    for path, ops in doc.get("paths", {}).items():
        get = ops.get("get") if path.endswith("/items") else None
        if get is None:
            continue
        # exactly what the platform's items route accepts (pygeoapi lists a free-form vendor parameter
        # and a schema where a parameter belongs)
        own = [p for p in get.get("parameters", []) if "$ref" not in p and p.get("name") not in ("limit", "properties")]
        cid = path.split("/")[-2]
        providers = config["resources"].get(cid, {}).get("providers", [])
        records = any(prov["type"] == "record" for prov in providers)
        timed = records or any("time_field" in prov for prov in providers)
        order = (*_ITEMS_ORDER, *_RECORDS_PARAMETERS) if records else _ITEMS_ORDER
        get["parameters"] = [{"$ref": f"#/components/parameters/{name}"} for name in order
                             if (name != "datetime" or timed) and (name != "cursor" or not records)] + own
    doc["servers"] = [{"url": PLACEHOLDER, "description": "this platform"}]
    return doc


def install(title: str, sources: dict[str, FeatureSource], workdir: Path, max_limit: int = MAX_LIMIT,
            metadata: CatalogueMetadata | None = None) -> None:
    """Write the generated configuration and OpenAPI document and point pygeoapi at them
    (pygeoapi reads both when its app module is first imported)."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    config = pygeoapi_config(title, sources, max_limit, metadata)
    cfg_path = workdir / "pygeoapi-config.yml"
    cfg_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    oas_path = workdir / "pygeoapi-openapi.json"
    oas_path.write_text(json.dumps(openapi_document(config), ensure_ascii=False), encoding="utf-8")
    os.environ["PYGEOAPI_CONFIG"] = str(cfg_path)
    os.environ["PYGEOAPI_OPENAPI"] = str(oas_path)
