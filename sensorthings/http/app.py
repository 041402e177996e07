"""Starlette routes for the SensorThings API under `/v1.1`."""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from urllib.parse import urlsplit

import anyio.to_thread
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apicommon.request import max_stale, public_base, sees_internal
from sensorthings.http.read_waits import ReadWaits
from sensorthings.openapi import openapi_document
from sensorthings.pending import Pending
from sensorthings.service import ApiRequest, ApiResponse, CachePlan, Service
from sensorthings.store.group_commit import YIELD_S
from sensorthings.store.version_watch import VersionWatch

log = logging.getLogger("udp.sensorthings.http")

MAX_BODY_MB = 64  # server.max_body_mb unless the platform says otherwise
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
WRITE_THREADS = 16  # per worker, besides the threads that serve reads (server.threads)
# the longest a GET waits, its versions read, for the POSTed Observations its worker had in flight when it came.
# Under reads that keep the event loop busy a POST waits for its turns there (its answer back from the writer took
# 7.5 of 10 ms at p50 under the expanded Things on SQLite, the writer's own part 2.5): devices were held to 192-287 of
# 300 POSTs/s (SQLite, the four live reads). Waiting with the versions read before, a read the cache answers at them
# stays a hit: 300/s under each read, the Things 0.53-0.62x -> 0.63-0.71x quiet; reads computed after each write
# (the expanded Things) lose what the writes keep (0.40-0.57x -> 0.33-0.36x)
POSTS_FIRST_S = 0.005


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it grows past `limit` bytes (read no further: it may never end)."""
    try:
        if int(request.headers.get("content-length") or 0) > limit:
            return None
    except ValueError:
        pass  # not a number: the server reads what comes, within the limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _query(request: Request) -> str:
    """The request's query string as `request.url.query` gives it, without building the URL (7 us a request)."""
    return urlsplit("?" + request.scope.get("query_string", b"").decode()).query


def _settle(back: asyncio.Future[ApiResponse], done: Pending[ApiResponse]) -> None:
    """Resolve `back` as `done` was, unless its request is gone (cancelled: the write went on without it)."""
    if back.done():
        return
    exc = done.exception()
    if exc is not None:
        back.set_exception(exc)
    else:
        back.set_result(done.result())


def _settle_idle(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def sensorthings_routes(service: Service, public_url: str | None = None, prefix: str = "/v1.1",
                        max_body_mb: int = MAX_BODY_MB, versions: VersionWatch | None = None,
                        waits: ReadWaits | None = None) -> list[Route]:
    """The routes serving the SensorThings API under `prefix` (the service root at `prefix` itself,
    with or without a trailing slash) and its OpenAPI document at `prefix/openapi.json`.

    With `versions`, a GET whose answer is in the response cache is served on the event loop, and a POSTed
    Observation goes from it to the group-commit writer: neither waits for a thread (nor, under load, for
    its turn at the GIL there), so reads and device writes both keep their pace while the other is busy.
    `waits`: where the GETs' time goes is added up there (`/health` shows it); one of the routes' own otherwise."""
    too_large = orjson.dumps({"code": 413, "type": "error", "message": f"the request body is over the limit of "
                                                                       f"{max_body_mb} MiB (server.max_body_mb)"})
    documents: dict[str, bytes] = {}
    write_threads: list[anyio.CapacityLimiter] = []  # made in the event loop, on the first write
    posts: set[asyncio.Future[ApiResponse]] = set()  # the answers of the POSTs handed to the writer, until back
    idle_wait: list[asyncio.Future[None]] = []  # what reads waiting for the writer share (`_writer_idle`)
    spent = ReadWaits() if waits is None else waits

    async def endpoint(request: Request) -> Response:
        body = None
        if request.method in ("POST", "PATCH", "PUT"):
            body = await read_body(request, max_body_mb * 1024 * 1024)
            if body is None:
                return Response(too_large, 413, media_type="application/json")
        req = ApiRequest(
            method=request.method,
            path=request.path_params.get("path", ""),
            params=dict(request.query_params),
            body=body,
            base=f"{public_base(request, public_url)}{prefix}",
            content_type=request.headers.get("content-type", ""),
            query_string=_query(request),
            if_none_match=request.headers.get("if-none-match", ""),
            sees_internal=sees_internal(request.scope),
            exact_count="count=exact" in request.headers.get("prefer", "").replace(" ", ""),
            max_stale=max_stale(request.headers.get("cache-control", "")),
        )
        if request.method == "GET":
            spent.gets += 1
            res, now = await _from_cache(req)
            if res is None:
                began = perf_counter()
                res = await run_in_threadpool(service.handle, req, None, now)
                spent.add("thread", began)
        elif (submitted := service.submit(req)) is not None:
            # a client gone before the commit leaves the write to finish unbothered: the writer holds it
            res = await _handed_back(submitted)
        else:
            # writes mostly wait for the group commit: threads of their own, so that reads filling every
            # thread of the pool never hold a device's write back
            if not write_threads:
                write_threads.append(anyio.CapacityLimiter(WRITE_THREADS))
            res = await anyio.to_thread.run_sync(service.handle, req, limiter=write_threads[0])
        # internal entities are shown by who signs the request: shared caches must tell requesters apart
        res.headers.setdefault("Vary", "Authorization")
        media = res.headers.pop("Content-Type", "application/json")
        if res.status in (204, 304):
            return Response(status_code=res.status, headers=res.headers)
        return Response(res.content(), res.status, headers=res.headers, media_type=media)

    async def _handed_back(written: Pending[ApiResponse]) -> ApiResponse:
        """The answer of a write handed to the group-commit writer, back on the event loop in one turn of it:
        `shield(wrap_future(…))` took three, each a whole turn behind the requests ready then (under cheap reads
        3.6 ms of a POST's 10, not 5.6)."""
        loop = asyncio.get_running_loop()
        back: asyncio.Future[ApiResponse] = loop.create_future()

        def hand_back(done: Pending[ApiResponse]) -> None:
            if not loop.is_closed():  # shutting down: nobody waits
                loop.call_soon_threadsafe(_settle, back, done)

        written.add_done_callback(hand_back)
        posts.add(back)
        try:
            return await back
        finally:
            posts.discard(back)

    async def _from_cache(req: ApiRequest) -> tuple[ApiResponse | None, dict[str, int] | None]:
        plan = service.cache_plan(req) if versions is not None else None
        if plan is None:
            return None, None
        # a client taking an answer behind the data (a dashboard polling every few seconds) spares the versions'
        # round trip and, while devices write, the computations every write would otherwise ask for
        if (res := service.stale_enough(req, plan)) is not None:
            return res, None
        began = perf_counter()
        if (now := await _versions_now(plan)) is None:
            return None, None
        began = spent.add("versions", began)
        if posts:  # devices' writes before reads: see POSTS_FIRST_S
            await asyncio.wait(list(posts), timeout=POSTS_FIRST_S)
            spent.add("posts", began)
        res = await _taken(req, plan, now)
        if res is None and service.computes_inline(plan):
            if not service.store.writer.idle.is_set():
                # devices' writes first, as a thread computing it would (`yield_to`); then the versions again
                began = perf_counter()
                await _writer_idle()
                began = spent.add("writer", began)
                if (now := await _versions_now(plan)) is None:
                    return None, None
                spent.add("versions", began)
                res = await _taken(req, plan, now)
            # others ran meanwhile: still nothing under way to wait for (the event loop must not block on one)
            if res is None and service.computes_inline(plan):
                began = perf_counter()
                res = service.handle(req, None, now, inline=True)
                spent.add("inline", began)
        return res, now

    async def _versions_now(plan: CachePlan) -> dict[str, int] | None:
        """The versions `plan` reads at, read on the event loop; None when they could not be read here."""
        assert versions is not None
        try:
            return await versions.current(plan.rows)
        except Exception as exc:  # noqa: BLE001 - the thread reads them again and answers a 503 if it must
            log.debug("versions not read on the event loop: %s", exc)
            return None

    async def _taken(req: ApiRequest, plan: CachePlan, now: dict[str, int]) -> ApiResponse | None:
        """The answer from the cache or from a computation under way that is fresh at `now`; None: neither."""
        res = service.cached(req, plan, now)
        if res is None and (joined := service.joined(req, plan, now)) is not None:
            began = perf_counter()
            res = await asyncio.wrap_future(joined)
            spent.add("joined", began)
        return res

    async def _writer_idle() -> None:
        """Wait, at most as long as `yield_to` does, while this process's writer has Observations to write. The
        reads waiting share one future, settled from the writer's thread once it is idle (`when_idle`): one callback
        at the writer however long it stays busy (a database away for an hour), where each read polling every half
        millisecond took a tenth of a worker's time under writes."""
        writer = service.store.writer
        if writer.idle.is_set():
            return
        if not idle_wait or idle_wait[0].done():
            loop = asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()
            idle_wait[:] = [woken]
            writer.when_idle(lambda: loop.is_closed() or loop.call_soon_threadsafe(_settle_idle, woken))
        try:
            await asyncio.wait_for(asyncio.shield(idle_wait[0]), YIELD_S)
        except TimeoutError:
            pass  # still busy: the read goes on, the future waits for the next

    async def openapi(request: Request) -> Response:
        base = f"{public_base(request, public_url)}{prefix}"
        if base not in documents:
            limits = service.limits
            doc = openapi_document(base, max_top=limits.max_top, default_top=limits.default_top,
                                   max_expand_depth=limits.max_expand_depth)
            documents.clear()  # one base in practice; a client spoofing Host must not grow this
            documents[base] = orjson.dumps(doc)
        return Response(documents[base], media_type="application/vnd.oai.openapi+json;version=3.0")

    # before the catch-all, which would read `openapi.json` as an entity set
    return [Route(prefix, endpoint, methods=METHODS), Route(prefix + "/openapi.json", openapi, methods=["GET"]),
            Route(prefix + "/{path:path}", endpoint, methods=METHODS)]
