"""`$batch`: many requests in one, in the OData JSON batch format or as multipart/mixed (the
format OGC 18-088 section 11.2 describes); changesets are all-or-nothing either way.

Both formats are parsed into the same list of requests and run by the same code.
"""

from __future__ import annotations

import uuid
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
    """Run a batch: requests in order; those sharing a changeset (atomicityGroup) in one transaction."""
    multipart = req.content_type.lower().startswith("multipart/mixed")
    try:
        requests = parse_multipart(req.body or b"", req.content_type) if multipart else parse_json(req.body)
    except ValueError as exc:
        return error(400, str(exc))
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
        for res in _changeset(service, req, requests[i:j], locations):
            res["atomicityGroup"] = group
            responses.append(res)
        i = j
    if multipart:
        return render_multipart(responses)
    for res in responses:
        res.pop("atomicityGroup", None)
    return ApiResponse(200, {"responses": responses})


def parse_json(body: bytes | None) -> list[dict[str, Any]]:
    """The requests of an OData JSON batch."""
    try:
        doc = orjson.loads(body or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the batch body is not JSON: {exc}") from None
    requests = doc.get("requests") if isinstance(doc, dict) else None
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise ValueError('a JSON batch is {"requests": [{"id", "method", "url", "body"?}, ...]}')
    for r in requests:
        if r.get("body") is not None:
            r["raw"] = orjson.dumps(r["body"])
    return requests


def _boundary(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "boundary" and value:
            return value.strip().strip('"')
    raise ValueError("a multipart batch needs a boundary in its Content-Type")


def _parts(body: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        raise ValueError(f"no part delimited by --{boundary}")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.lstrip(b" \t").removeprefix(b"\r\n").removeprefix(b"\n"))
    return parts


def _head(block: bytes) -> tuple[list[str], bytes]:
    """A block's header lines and what follows the blank line."""
    text = block.replace(b"\r\n", b"\n")
    head, sep, rest = text.partition(b"\n\n")
    if not sep:
        head, rest = text, b""
    return [ln.strip() for ln in head.decode("utf-8", "replace").split("\n") if ln.strip()], rest


def _headers(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _http_request(block: bytes, where: str) -> dict[str, Any]:
    mime_lines, inner = _head(block)
    mime = _headers(mime_lines)
    lines, body = _head(inner)
    if not lines:
        raise ValueError(f"{where}: no request line")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise ValueError(f"{where}: bad request line {lines[0]!r}")
    headers = _headers(lines[1:])
    body = body.rstrip(b"\r\n")
    item: dict[str, Any] = {"method": request_line[0], "url": request_line[1], "headers": headers}
    if mime.get("content-id"):
        item["id"] = mime["content-id"]
    if body.strip():
        item["raw"] = body
    return item


def parse_multipart(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The requests of a multipart/mixed batch; a nested multipart part is a changeset."""
    out: list[dict[str, Any]] = []
    for n, part in enumerate(_parts(body, _boundary(content_type)), 1):
        lines, rest = _head(part)
        ctype = _headers(lines).get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            group = f"changeset{n}"
            for m, inner in enumerate(_parts(rest, _boundary(ctype)), 1):
                item = _http_request(inner, f"changeset part {m}")
                item.setdefault("id", f"{n}.{m}")
                item["atomicityGroup"] = group
                out.append(item)
        else:
            item = _http_request(part, f"part {n}")
            item.setdefault("id", str(n))
            out.append(item)
    return out


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 424: "Failed Dependency", 503: "Service Unavailable"}


def _http_response(res: dict[str, Any], content_id: str | None) -> bytes:
    status = res["status"]
    body = res.get("body")
    data = b"" if body is None else (body.encode() if isinstance(body, str) else orjson.dumps(body))
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"HTTP/1.1 {status} {_REASONS.get(status, '')}".rstrip()]
    for key, value in (res.get("headers") or {}).items():
        lines.append(f"{key}: {value}")
    if data:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data + b"\r\n"


def render_multipart(responses: list[dict[str, Any]]) -> ApiResponse:
    """The responses as multipart/mixed, a changeset's responses nested in one part."""
    outer = f"batchresponse_{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    i = 0
    while i < len(responses):
        group = responses[i].get("atomicityGroup")
        if group is None:
            chunks.append(f"--{outer}\r\n".encode() + _http_response(responses[i], None))
            i += 1
            continue
        inner = f"changesetresponse_{uuid.uuid4().hex}"
        chunks.append(f"--{outer}\r\nContent-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode())
        while i < len(responses) and responses[i].get("atomicityGroup") == group:
            chunks.append(f"--{inner}\r\n".encode() + _http_response(responses[i], responses[i].get("id")))
            i += 1
        chunks.append(f"--{inner}--\r\n".encode())
    chunks.append(f"--{outer}--\r\n".encode())
    return ApiResponse(200, raw=b"".join(chunks), headers={"Content-Type": f"multipart/mixed; boundary={outer}"})


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
    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
    sub = ApiRequest(method, path, params, item.get("raw"), req.base, headers.get("content-type", ""), query,
                     sees_internal=req.sees_internal)
    res = service.handle(sub, tx)
    out: dict[str, Any] = {"id": rid, "status": res.status}
    if res.headers:
        out["headers"] = {k.lower(): v for k, v in res.headers.items()}
    if res.body is not None:
        out["body"] = res.body
    elif res.text is not None:
        out["body"] = res.text
    elif res.raw is not None:  # an answer from the response cache comes encoded
        out["body"] = orjson.loads(res.raw)
    if "Location" in res.headers and rid is not None:
        locations[str(rid)] = res.headers["Location"]
    return out
