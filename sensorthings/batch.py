"""JSON `$batch` (OData JSON batch format): many requests in one, changesets all-or-nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from sensorthings.service import ApiRequest, ApiResponse, Tx, error, relative_path

if TYPE_CHECKING:
    from sensorthings.service import Service

MAX_REQUESTS = 1000


class _Rollback(Exception):
    """Raised inside a changeset's transaction to undo it."""


def run_batch(service: Service, req: ApiRequest) -> ApiResponse:
    """Run a JSON batch: requests in order; those sharing an atomicityGroup in one transaction."""
    try:
        doc = orjson.loads(req.body or b"")
    except orjson.JSONDecodeError as exc:
        return error(400, f"the batch body is not JSON: {exc}")
    requests = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        return error(400, 'a JSON batch is {"requests": [{"id", "method", "url", "body"?}, ...]}')
    if len(requests) > MAX_REQUESTS:
        return error(400, f"a batch holds at most {MAX_REQUESTS} requests")
    locations: dict[str, str] = {}
    responses: list[dict[str, Any]] = []
    i = 0
    while i < len(requests):
        group = requests[i].get("atomicityGroup")
        if group is None:
            responses.append(_one(service, req, requests[i], locations, None))
            i += 1
            continue
        j = i
        while j < len(requests) and requests[j].get("atomicityGroup") == group:
            j += 1
        responses.extend(_changeset(service, req, requests[i:j], locations))
        i = j
    return ApiResponse(200, {"responses": responses})


def _changeset(service: Service, req: ApiRequest, items: list[dict[str, Any]],
               locations: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    saved = dict(locations)
    try:
        with service.store.write() as (conn, changes):
            tx = Tx(conn, changes)
            for item in items:
                res = _one(service, req, item, locations, tx)
                out.append(res)
                if res["status"] >= 400:
                    raise _Rollback
    except _Rollback:
        locations.clear()
        locations.update(saved)
        failed = out[-1]
        return [failed if r is failed else {"id": r["id"], "status": 424,
                                            "body": {"code": 424, "type": "error",
                                                     "message": "not applied: another request of the "
                                                                "changeset failed"}}
                for r in out] + [{"id": it.get("id"), "status": 424} for it in items[len(out):]]
    return out


def _one(service: Service, req: ApiRequest, item: dict[str, Any], locations: dict[str, str],
         tx: Tx | None) -> dict[str, Any]:
    rid = item.get("id")
    method = str(item.get("method", "")).upper()
    url = item.get("url")
    if not isinstance(url, str) or method not in ("GET", "POST", "PATCH", "PUT", "DELETE"):
        return {"id": rid, "status": 400, "body": {"code": 400, "type": "error",
                                                  "message": "each request needs a method and a url"}}
    if url.startswith("$"):
        ref, _, rest = url[1:].partition("/")
        if ref not in locations:
            return {"id": rid, "status": 400, "body": {"code": 400, "type": "error",
                                                      "message": f"unknown request reference ${ref}"}}
        url = locations[ref] + ("/" + rest if rest else "")
    rel = relative_path(url, req.base)
    path, _, query = rel.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    body = item.get("body")
    headers = item.get("headers") or {}
    sub = ApiRequest(method, path, params, orjson.dumps(body) if body is not None else None, req.base,
                     str(headers.get("content-type", headers.get("Content-Type", ""))), query)
    res = service.handle(sub, tx)
    out: dict[str, Any] = {"id": rid, "status": res.status}
    if res.headers:
        out["headers"] = {k.lower(): v for k, v in res.headers.items()}
    if res.body is not None:
        out["body"] = res.body
    elif res.text is not None:
        out["body"] = res.text
    if "Location" in res.headers and rid is not None:
        locations[str(rid)] = res.headers["Location"]
    return out
