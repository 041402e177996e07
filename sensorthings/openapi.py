"""The OpenAPI 3.0 document of the SensorThings API, generated from the entity model (`sensorthings.model`).

Every entity set, single entity `({id})`, property, `$value`, navigation set and `$ref` the server answers is a
path; the query options are parameters with the server's limits; responses have schemas (an entity, a
collection, an error) that hold for every answer, whatever `$select` and `$expand` ask for: nothing in an
entity is required, since `$select` may leave anything out.
"""

from __future__ import annotations

from typing import Any

from sensorthings.model import ENTITY_TYPES, OBSERVATION, EntityType, Kind, Nav, NavKind, Prop, target_of

OPENAPI_VERSION = "3.0.3"
_ERROR = {"$ref": "#/components/schemas/Error"}
_ANY: dict[str, Any] = {}  # any JSON value, null included
_INSTANT = {"type": "string", "format": "date-time"}
_INTERVAL = {"type": "string", "description": "An ISO 8601 interval: start/end"}
_GEOJSON = {"type": "object", "description": "A GeoJSON geometry (or Feature)",
            "properties": {"type": {"type": "string"}}}
_PROPERTY_SCHEMAS: dict[Kind, dict[str, Any]] = {
    Kind.TEXT: {"type": "string"},
    Kind.JSON: _ANY,
    Kind.TIME: _INSTANT,
    Kind.INTERVAL: _INTERVAL,
    Kind.TIME_OR_INTERVAL: {"type": "string", "description": "An ISO 8601 instant or interval (start/end)"},
    Kind.GEOJSON: _GEOJSON,
    Kind.RESULT: _ANY,
}


def _prop_schema(prop: Prop, *, nullable: bool) -> dict[str, Any]:
    schema = dict(_PROPERTY_SCHEMAS[prop.kind])
    if schema and nullable:
        schema["nullable"] = True
    return schema


def _entity_schema(entity: EntityType) -> dict[str, Any]:
    """An entity as the server writes it: any subset of its properties, links and expanded navigation."""
    props: dict[str, Any] = {
        "@iot.id": {"type": "integer"},
        "@iot.selfLink": {"type": "string"},
    }
    for prop in entity.props:
        props[prop.name] = _prop_schema(prop, nullable=not prop.required or prop.read_only)
    for nav in entity.navs:
        target = {"$ref": f"#/components/schemas/{nav.target}"}
        props[f"{nav.name}@iot.navigationLink"] = {"type": "string"}
        if nav.many:
            props[nav.name] = {"type": "array", "items": target}
            props[f"{nav.name}@iot.count"] = {"type": "integer", "minimum": 0}
            props[f"{nav.name}@iot.nextLink"] = {"type": "string"}
        else:
            props[nav.name] = target  # an expanded to-one link that is not set is left out, never null
    return {"type": "object", "description": f"A {entity.name}; $select and $expand decide which members appear",
            "properties": props}


def _create_schema(entity: EntityType) -> dict[str, Any]:
    """What a POST creating the entity takes: its required properties, and links to existing entities
    (`{"@iot.id": n}`) or new ones created with it (deep insert)."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for prop in entity.props:
        if prop.read_only:
            continue
        props[prop.name] = _prop_schema(prop, nullable=False)
        if prop.required:
            required.append(prop.name)
    for nav in entity.navs:
        one = {"anyOf": [_ref("EntityRef"), _ref(f"{nav.target}Create")]}
        props[nav.name] = {"type": "array", "items": one} if nav.many else one
    return {"type": "object", "properties": props, **({"required": required} if required else {})}


def _patch_schema(entity: EntityType) -> dict[str, Any]:
    """A JSON merge patch: any writable property, and links to other entities."""
    props: dict[str, Any] = {p.name: _prop_schema(p, nullable=not p.required) for p in entity.props if not p.read_only}
    for nav in entity.navs:
        ref = {"$ref": "#/components/schemas/EntityRef"}
        props[nav.name] = {"type": "array", "items": ref} if nav.many else ref
    return {"type": "object", "properties": props}


def _collection_schema(entity: EntityType) -> dict[str, Any]:
    return {
        "type": "object", "required": ["value"],
        "properties": {
            "@iot.count": {"type": "integer", "minimum": 0},
            "@iot.nextLink": {"type": "string"},
            "value": {"type": "array", "items": {"$ref": f"#/components/schemas/{entity.name}"}},
        },
    }


def _components(max_top: int, default_top: int, max_expand_depth: int) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["code", "type", "message"],
            "properties": {
                "code": {"type": "integer"}, "type": {"type": "string", "enum": ["error"]},
                "message": {"type": "string"},
                "option": {"type": "string", "description": "The query option at fault"},
                "position": {"type": "integer", "description": "0-based offset into that option's text"},
            },
        },
        "EntityRef": {"type": "object", "required": ["@iot.id"], "properties": {"@iot.id": {"type": "integer"}},
                      "description": "An existing entity, by id"},
        "ServiceRoot": {
            "type": "object", "required": ["value"],
            "properties": {
                "value": {"type": "array", "items": {"type": "object", "required": ["name", "url"],
                                                     "properties": {"name": {"type": "string"},
                                                                    "url": {"type": "string"}}}},
                "serverSettings": {"type": "object", "properties": {
                    "conformance": {"type": "array", "items": {"type": "string"}}}},
            },
        },
        "SelfLinks": {"type": "object", "required": ["value"], "properties": {
            "@iot.count": {"type": "integer", "minimum": 0}, "@iot.nextLink": {"type": "string"},
            "value": {"type": "array", "items": {"$ref": "#/components/schemas/SelfLink"}}}},
        "SelfLink": {"type": "object", "required": ["@iot.selfLink"],
                     "properties": {"@iot.selfLink": {"type": "string"}}},
        "JsonPatch": {"type": "array", "items": {
            "type": "object", "required": ["op", "path"],
            "properties": {"op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                           "path": {"type": "string"}, "from": {"type": "string"}, "value": _ANY}}},
        "CreateObservations": {"type": "array", "items": {
            "type": "object", "required": ["components", "dataArray"],
            "properties": {
                "Datastream": {"$ref": "#/components/schemas/EntityRef"},
                "MultiDatastream": {"$ref": "#/components/schemas/EntityRef"},
                "components": {"type": "array", "items": {"type": "string"}},
                "dataArray": {"type": "array", "items": {"type": "array", "items": _ANY}}}}},
        "CreatedLinks": {"type": "array", "items": {"type": "string"},
                         "description": "The new Observations' selfLinks, or `error` for a row that failed"},
        "Batch": {"type": "object", "required": ["requests"], "properties": {"requests": {"type": "array", "items": {
            "type": "object", "required": ["id", "method", "url"],
            "properties": {"id": {"type": "string"}, "atomicityGroup": {"type": "string"},
                           "method": {"type": "string", "enum": ["get", "post", "patch", "put", "delete"]},
                           "url": {"type": "string"}, "headers": {"type": "object"}, "body": _ANY}}}}},
        "BatchResponse": {"type": "object", "required": ["responses"], "properties": {"responses": {
            "type": "array", "items": {"type": "object", "required": ["id", "status"], "properties": {
                "id": {"type": "string"}, "status": {"type": "integer"}, "headers": {"type": "object"},
                "body": _ANY}}}}},
    }
    for entity in ENTITY_TYPES:
        schemas[entity.name] = _entity_schema(entity)
        schemas[f"{entity.name}Create"] = _create_schema(entity)
        schemas[f"{entity.name}Patch"] = _patch_schema(entity)
        schemas[f"{entity.set_name}Collection"] = _collection_schema(entity)
    text = {"type": "string"}
    parameters = {
        "id": {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"},
               "description": "An entity's id"},
        "filter": {"name": "$filter", "in": "query", "schema": text,
                   "description": "A filter expression (OGC 18-088 section 9.3.3.5), e.g. `result gt 5`"},
        "expand": {"name": "$expand", "in": "query", "schema": text,
                   "description": f"Navigation properties to include, with nested options; at most "
                                  f"{max_expand_depth} levels deep (server.max_expand_depth)"},
        "select": {"name": "$select", "in": "query", "schema": text, "description": "The properties to return"},
        "orderby": {"name": "$orderby", "in": "query", "schema": text,
                    "description": "Sort keys, each optionally `asc` or `desc`"},
        "top": {"name": "$top", "in": "query",
                "schema": {"type": "integer", "minimum": 0, "maximum": max_top, "default": default_top},
                "description": f"The page size (default {default_top}, at most {max_top}: server.max_top)"},
        "skip": {"name": "$skip", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "How many entities to pass over"},
        "count": {"name": "$count", "in": "query", "schema": {"type": "boolean"},
                  "description": "Include `@iot.count`, the number of entities matched"},
        "resultFormat": {"name": "$resultFormat", "in": "query", "schema": {"type": "string", "enum": ["dataArray"]},
                         "description": "Observations as dataArrays grouped by Datastream"},
    }
    responses = {
        "BadRequest": {"description": "The request cannot be answered as it stands; the message says why",
                       "content": {"application/json": {"schema": _ERROR}}},
        "NotFound": {"description": "No such resource", "content": {"application/json": {"schema": _ERROR}}},
        "NotAllowed": {"description": "The method does not apply to this resource",
                       "content": {"application/json": {"schema": _ERROR}}},
        "TooLarge": {"description": "The request body is over server.max_body_mb",
                     "content": {"application/json": {"schema": _ERROR}}},
        "Unavailable": {"description": "The database is unavailable; try again after Retry-After",
                        "content": {"application/json": {"schema": _ERROR}}},
    }
    return {"schemas": schemas, "parameters": parameters, "responses": responses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    names = {"400": "BadRequest", "404": "NotFound", "405": "NotAllowed", "413": "TooLarge", "503": "Unavailable"}
    return {code: {"$ref": f"#/components/responses/{names[code]}"} for code in codes}


def _params(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


def _collection_params(entity: EntityType) -> list[dict[str, str]]:
    names = ["filter", "expand", "select", "orderby", "top", "skip", "count"]
    if entity is OBSERVATION:
        names.append("resultFormat")
    return _params(*names)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], description: str, patch: bool = False) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    if patch:
        content["application/json-patch+json"] = {"schema": _ref("JsonPatch")}
    return {"required": True, "description": description, "content": content}


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": [tag], **extra,
            "responses": {**responses, **_errors("400", "404", "503")}}


def _set_paths(entity: EntityType) -> dict[str, Any]:
    """An entity set, one entity of it, its properties and its navigation."""
    s, tag = entity.set_name, entity.set_name
    paths: dict[str, Any] = {
        f"/{s}": {
            "get": _op(f"list{s}", f"The {s}", tag, {"200": _json(_ref(f"{s}Collection"), f"A page of {s}")},
                       parameters=_collection_params(entity)),
            "post": _op(f"create{entity.name}", f"Create a {entity.name} (deep insert)", tag,
                        {"201": {**_json(_ref(entity.name), f"The new {entity.name}"),
                                 "headers": {"Location": {"schema": {"type": "string"}}}},
                         **_errors("413")},
                        requestBody=_body(_ref(f"{entity.name}Create"), f"The {entity.name} to create")),
        },
        f"/{s}/$ref": {"get": _op(f"list{s}Refs", f"The selfLinks of the {s}", tag,
                                  {"200": _json(_ref("SelfLinks"), "selfLinks")},
                                  parameters=_params("filter", "orderby", "top", "skip", "count"))},
        f"/{s}({{id}})": {
            "parameters": _params("id"),
            "get": _op(f"get{entity.name}", f"One {entity.name}", tag, {"200": _json(_ref(entity.name), entity.name)},
                       parameters=_params("expand", "select")),
            "patch": _op(f"update{entity.name}", f"Change a {entity.name} (JSON merge patch or JSON Patch)", tag,
                         {"200": _json(_ref(entity.name), f"The {entity.name} as changed"), **_errors("413")},
                         requestBody=_body(_ref(f"{entity.name}Patch"), "What changes", patch=True)),
            "put": _op(f"replace{entity.name}", f"Replace a {entity.name}", tag,
                       {"200": _json(_ref(entity.name), f"The {entity.name} as replaced"), **_errors("413")},
                       requestBody=_body(_ref(f"{entity.name}Patch"), f"The {entity.name}'s new properties")),
            "delete": _op(f"delete{entity.name}", f"Delete a {entity.name} and what depends on it", tag,
                          {"200": {"description": "Deleted"}}),
        },
    }
    for prop in entity.props:
        value = {"type": "object", "properties": {prop.name: _prop_schema(prop, nullable=False)}}
        paths[f"/{s}({{id}})/{prop.name}"] = {"parameters": _params("id"), "get": _op(
            f"get{entity.name}_{prop.name}", f"A {entity.name}'s {prop.name}", tag,
            {"200": _json(value, prop.name), "204": {"description": "The property is null"}})}
        paths[f"/{s}({{id}})/{prop.name}/$value"] = {"parameters": _params("id"), "get": _op(
            f"get{entity.name}_{prop.name}_value", f"A {entity.name}'s {prop.name}, bare", tag,
            {"200": {"description": "The value as text (JSON for structured values)",
                     "content": {"text/plain": {"schema": {"type": "string"}}}},
             "204": {"description": "The property is null"}})}
    for nav in entity.navs:
        paths.update(_nav_paths(entity, nav))
    return paths


def _nav_paths(entity: EntityType, nav: Nav) -> dict[str, Any]:
    target = target_of(nav)
    s, tag = entity.set_name, entity.set_name
    base = f"/{s}({{id}})/{nav.name}"
    op = f"{entity.name}_{nav.name}"
    if not nav.many:
        return {base: {"parameters": _params("id"), "get": _op(
            f"get{op}", f"A {entity.name}'s {nav.name}", tag, {"200": _json(_ref(target.name), target.name)},
            parameters=_params("expand", "select"))}}
    paths: dict[str, Any] = {base: {
        "parameters": _params("id"),
        "get": _op(f"list{op}", f"A {entity.name}'s {nav.name}", tag,
                   {"200": _json(_ref(f"{target.set_name}Collection"), f"A page of {nav.name}")},
                   parameters=_collection_params(target)),
    }, f"{base}/$ref": {"parameters": _params("id"), "get": _op(
        f"list{op}Refs", f"The selfLinks of a {entity.name}'s {nav.name}", tag,
        {"200": _json(_ref("SelfLinks"), "selfLinks")}, parameters=_params("filter", "orderby", "top", "skip"))}}
    if nav.kind is NavKind.REVERSE:
        paths[base]["post"] = _op(
            f"create{op}", f"Create a {target.name} linked to the {entity.name}", tag,
            {"201": _json(_ref(target.name), f"The new {target.name}"), **_errors("413")},
            requestBody=_body(_ref(f"{target.name}Create"), f"The {target.name} (its link to the {entity.name} "
                                                            "is implied)"))
    return paths


def openapi_document(base: str, *, max_top: int = 10_000, default_top: int = 100,
                     max_expand_depth: int = 5) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the SensorThings API served at `base` (…/v1.1), with its limits."""
    paths: dict[str, Any] = {
        "/": {"get": _op("serviceRoot", "The service root: entity sets and server settings", "Service",
                         {"200": _json(_ref("ServiceRoot"), "The service root")})},
    }
    for entity in ENTITY_TYPES:
        paths.update(_set_paths(entity))
    paths["/CreateObservations"] = {"post": _op(
        "createObservations", "Create many Observations from dataArrays", "Service",
        {"201": _json(_ref("CreatedLinks"), "One selfLink (or `error`) per row"), **_errors("413")},
        requestBody=_body(_ref("CreateObservations"), "dataArrays per Datastream or MultiDatastream"))}
    paths["/$batch"] = {"post": _op(
        "batch", "Many requests in one; those sharing an atomicityGroup all succeed or none does", "Service",
        {"200": {"description": "One response per request", "content": {
            "application/json": {"schema": _ref("BatchResponse")},
            "multipart/mixed": {"schema": {"type": "string"}}}}, **_errors("413")},
        requestBody={"required": True, "content": {"application/json": {"schema": _ref("Batch")},
                                                   "multipart/mixed": {"schema": {"type": "string"}}}})}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "OGC SensorThings API v1.1", "version": "1.1",
                 "description": "The SensorThings API of the urban data platform (OGC 18-088), with the MQTT, "
                                "dataArray, batch and MultiDatastream extensions. Limits: `$top` at most "
                                f"{max_top}, `$expand` at most {max_expand_depth} levels; bodies, query time and "
                                "MQTT payloads are limited too (errors name the `server.` setting)."},
        "servers": [{"url": base, "description": "this platform"}],
        "tags": [{"name": "Service"}] + [{"name": e.set_name} for e in ENTITY_TYPES],
        "paths": paths,
        "components": _components(max_top, default_top, max_expand_depth),
    }
