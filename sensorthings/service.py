"""The SensorThings API's request handling, independent of HTTP: plain requests in, responses out.

The Starlette routes and `$batch` sub-requests come through `Service.handle`, MQTT-created Observations
through `Service.create_observation` (the same POST, answered by a future), so every way in behaves the
same; single Observations and CreateObservations are written by the store's group-commit writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jsonpatch
import orjson
from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from apicommon.unavailable import client_fault, database_unavailable
from sensorthings.body import BodyError, Draft, Ref, parse_entity, parse_id
from sensorthings.cache import Entry, ResponseCache, newest
from sensorthings.conformance import conformance
from sensorthings.dataarray import create_observations
from sensorthings.model import (
    DATASTREAM,
    ENTITY_TYPES,
    MULTI_DATASTREAM,
    OBSERVATION,
    EntityType,
    NavKind,
    reverse_nav,
    target_of,
)
from sensorthings.pending import Pending
from sensorthings.query.limits import Limits
from sensorthings.query.options import query_options
from sensorthings.query.tree import QueryError, QueryOptions
from sensorthings.query.unparse import next_link
from sensorthings.read import Reader, count_annotations, decode_token, serializer
from sensorthings.resource import PathError, Resource, condition, parse_path
from sensorthings.store.base import Change, NotFound, QueryTimeout, Store, StoreError
from sensorthings.store.group_commit import Written
from sensorthings.store.observations import ObservationRow
from sensorthings.store.schema import TABLES
from sensorthings.store.versions import NOW_KEY, confined, noting_reads, stamp

log = logging.getLogger("udp.sensorthings")

CONFORMANCE = conformance()
# answers computed in less CPU than this are computed on the event loop (`computes_inline`), which they hold that long
# at most: the hop to a thread and back and the thread's turns at the interpreter lock beside the loop cost more than
# such an answer (the expanded Things after a write, ~1-3 ms: under 300 POSTs/s 4,293-4,482 req/s on SQLite against
# 2,227 in threads, 2,326 on PostgreSQL against 1,140; writes kept at 297-300/s)
INLINE_CPU_S = 0.005
DATA_ARRAY_COMPONENTS = ("id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime", "parameters")


@dataclass
class ApiRequest:
    """One SensorThings request: method, path after `/v1.1/`, decoded query options and body."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    base: str = ""  # absolute URL of the service root, e.g. http://host:8080/v1.1
    content_type: str = ""
    query_string: str = ""
    if_none_match: str = ""
    sees_internal: bool = True  # False for a reader without the read role (sensorthings.access)
    exact_count: bool = False  # `Prefer: count=exact`: `$count` counted even on a huge set
    # `Cache-Control: max-stale`: the seconds an answer may be behind the data for this client (None: current only)
    max_stale: float | None = None


@dataclass
class ApiResponse:
    """What to send back: status, a JSON-able body (or text), extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    raw: bytes | None = None  # an already-encoded JSON body (from the response cache)

    def content(self) -> bytes:
        """The body as bytes."""
        if self.raw is not None:
            return self.raw
        if self.text is not None:
            return self.text.encode()
        if self.body is None:
            return b""
        return orjson.dumps(self.body)


def error(status: int, message: str, **extra: Any) -> ApiResponse:
    """A JSON error response."""
    return ApiResponse(status, {"code": status, "type": "error", "message": message, **extra})


@dataclass
class Tx:
    """An open write transaction shared by the requests of a `$batch` changeset."""

    conn: Connection
    changes: list[Change]


class Service:
    """Handles SensorThings requests against one store."""

    def __init__(self, store: Store, *, limits: Limits = Limits(), extensions: list[str] | None = None,
                 settings: dict[str, Any] | None = None, cache: ResponseCache | None = None) -> None:
        self.store = store
        self.cache = cache
        self.limits = limits
        self.extra_conformance = list(extensions or [])
        self.extra_settings = dict(settings or {})

    # -- entry point ----------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        """An in-process request by the platform itself (provisioning, indicators, the demo): the answer's
        JSON, RuntimeError with the status and message when it fails. Its links are not shown to anyone."""
        res = self.handle(ApiRequest(method, path, params, None if body is None else orjson.dumps(body),
                                     "http://udp.local/v1.1", "application/json"))
        if res.status >= 400:
            raise RuntimeError(f"{method} {path}: {res.status} {res.content().decode(errors='replace')[:300]}")
        if res.raw is not None or (self.cache is not None and res.text is None and res.body is not None):
            # from the response cache: encoded, or holding encoded fragments (sensorthings.fragments)
            return orjson.loads(res.content())
        return res.body

    def handle(self, req: ApiRequest, tx: Tx | None = None, now: dict[str, int] | None = None,
               inline: bool = False) -> ApiResponse:
        """Answer one request; never raises for bad input. `now`: the tables' versions, read before this call
        (sensorthings.store.version_watch); read here when not given. `inline`: a GET `computes_inline` chose,
        answered on the event loop, which has waited for this process's writer already."""
        if self.cache is not None and tx is None and req.method.upper() == "GET":
            return self._answer(self._cached_get, req, now, inline)
        return self._answer(self._route, req, tx)

    def computes_inline(self, plan: CachePlan) -> bool:
        """True when a GET's answer, not in the cache, is best computed on the event loop: when its last
        computation took under INLINE_CPU_S of CPU, none is under way and a connection is free (no replicas).
        Under load a thread costs more than such an answer: the hop there and back, and a turn at the interpreter
        lock beside the event loop around every statement (a page of new Observations, 0.5 ms in-process, took
        1.4-2.5 ms in a thread while readers and writers were busy). On PostgreSQL the event loop also waits for
        the answer's round trips (one or two statements for such a page): computed so, the newest 100 Observations
        under 300 POSTs/s 2,181-2,613 req/s against 1,142-1,261 in threads (kept servers, alternating), writes kept."""
        assert self.cache is not None
        if not self.store.reads_at_once():
            return False
        cost = self.cache.cost_of(plan.key)
        return cost is not None and cost < INLINE_CPU_S and not self.cache.computing(plan.key)

    def cache_plan(self, req: ApiRequest) -> CachePlan | None:
        """How the response cache keeps a GET's answer; None when it may not (no cache, or now() in it: then it
        depends on the clock, not only on the data)."""
        if self.cache is None or any("now(" in v.lower() for v in req.params.values()):
            return None
        return CachePlan((req.path.strip("/"), tuple(sorted(req.params.items())), req.base, req.sees_internal,
                          req.exact_count),
                         _confinement(req))

    def cached(self, req: ApiRequest, plan: CachePlan, now: dict[str, int]) -> ApiResponse | None:
        """The answer to a GET from the response cache, if nothing it was read from has changed by the versions
        `now` (read with `plan.rows`); None otherwise: then `handle` computes it."""
        assert self.cache is not None
        entry = self.cache.get(plan.key, now)
        return None if entry is None else self._from_entry(req, entry)

    def stale_enough(self, req: ApiRequest, plan: CachePlan) -> ApiResponse | None:
        """For a GET whose client takes an answer `req.max_stale` seconds behind the data: the cached one if it was
        current that recently, with its `Age`, without reading the versions; None otherwise (then `cached`)."""
        assert self.cache is not None
        if req.max_stale is None:
            return None
        found = self.cache.recent(plan.key, req.max_stale)
        if found is None:
            return None
        entry, age = found
        res = self._from_entry(req, entry)
        res.headers["Age"] = str(int(age))
        return res

    def joined(self, req: ApiRequest, plan: CachePlan, now: dict[str, int]) -> Future[ApiResponse | None] | None:
        """For a GET `cached` did not answer: the answer of a computation already under way that is fresh for it
        (versions `now`), without a thread of its own to wait in; None when there is none (then `handle`
        computes it). The future gives None when that answer was not one to keep."""
        assert self.cache is not None
        flight = self.cache.join(plan.key, now, plan.rows)
        if flight is None:
            return None
        answer: Future[ApiResponse | None] = Future()

        def settle(done: Future[Entry | None]) -> None:
            entry = done.result()
            answer.set_result(None if entry is None else self._from_entry(req, entry))

        flight.future.add_done_callback(settle)
        return answer

    def _from_entry(self, req: ApiRequest, entry: Entry) -> ApiResponse:
        if req.if_none_match and entry.etag in req.if_none_match:
            return ApiResponse(304, headers={"ETag": entry.etag})
        return ApiResponse(entry.status, raw=entry.body, headers={**dict(entry.headers), "ETag": entry.etag})

    def submit(self, req: ApiRequest, data: Any = None) -> Pending[ApiResponse] | None:
        """A POST of one Observation handed to the group-commit writer without waiting: its answer once
        committed. None for any other request (and for a deep insert), which `handle` answers in a thread.
        Parses only, so an event loop may call it."""
        target = _observation_set(req.path) if req.method.upper() == "POST" else None
        if target is None:
            return None
        pending: list[tuple[Pending[Written], Callable[[], ApiResponse]]] = []

        def start() -> ApiResponse | None:
            submitted = self._submit_observation(req, target, _json_body(req) if data is None else data,
                                                 bare=data is not None)
            if submitted is None:
                return None
            pending.append(submitted)
            return ApiResponse(202)

        refused = self._answer(start)  # type: ignore[arg-type]
        if not pending:
            # bad input: answered at once
            return None if refused is None else Pending.of(refused)
        answer: Pending[ApiResponse] = Pending()
        written, finish = pending[0]
        written.add_done_callback(lambda _f: _settle(answer, lambda: self._answer(finish)))
        return answer

    def create_observation(self, req: ApiRequest, data: Any = None) -> Pending[ApiResponse]:
        """A POST of one Observation, answered once it is committed, without waiting here: MQTT creates take
        their PUBACK from the future. Through the group-commit writer like an HTTP POST's. `data`: the body
        already parsed; then the answer is only a status (201 with the Location, or the refusal): nobody reads
        the Observation back over MQTT."""
        answer = self.submit(req, data)
        if answer is None:  # not a simple Observation (a deep insert: in a transaction of its own)
            answer = Pending.of(self.handle(req))
        return answer

    def observation_row(self, path: str, data: Any) -> ObservationRow | ApiResponse | None:
        """The row a POST of one Observation (`data`, parsed JSON) to `path` writes through the group-commit writer
        (`write_rows`), or the refusal a bad one gets at once; None when it goes the general way
        (`create_observation`): another path, a deep insert."""
        target = _observation_set(path)
        if target is None:
            return None
        made: list[ObservationRow | None] = []

        def parse() -> ApiResponse:
            made.append(_observation_row(target, data))
            return ApiResponse(202)

        refused = self._answer(parse)
        return made[0] if made else refused

    def refusal(self, exc: Exception) -> ApiResponse | None:
        """The error response a request that raised `exc` gets: bad input 4xx, the database away 503; None for a
        fault it does not know."""
        def fail() -> ApiResponse:
            raise exc

        try:
            return self._answer(fail)
        except Exception:  # noqa: BLE001 - `exc` itself, raised again by `_answer`
            return None

    def write_rows(self, rows: list[ObservationRow]) -> Pending[Written]:
        """Hand rows made by `observation_row` to the group-commit writer, each written or refused on its own: what
        became of them once committed."""
        return self.store.writer.submit(rows)

    def _answer(self, run: Callable[..., ApiResponse], *args: Any) -> ApiResponse:
        """What `run` answers, with bad input and a database's refusals or absence as error responses."""
        try:
            return run(*args)
        except QueryError as exc:
            return ApiResponse(400, exc.to_json())
        except PathError as exc:
            return error(exc.status, str(exc))
        except (BodyError, StoreError) as exc:
            return error(400, str(exc))
        except NotFound as exc:
            return error(404, str(exc))
        except QueryTimeout as exc:
            # the request asked for more work than a statement may take: the client's to narrow, not to retry
            return error(400, str(exc))
        except IntegrityError as exc:
            return error(400, f"the write breaks a constraint: {exc.orig}")
        except DBAPIError as exc:
            if (reason := client_fault(exc)) is not None:
                return error(400, reason)
            if database_unavailable(exc):
                log.warning("database unavailable: %s", exc)
                return ApiResponse(503, {"code": 503, "type": "error", "message": "the database is unavailable"},
                                   {"Retry-After": "5"})
            raise

    def _cached_get(self, req: ApiRequest, now: dict[str, int] | None, inline: bool = False) -> ApiResponse:
        """A GET answered from the response cache while no table its answer was read from has changed."""
        assert self.cache is not None
        plan = self.cache_plan(req)
        with self.store.read() as conn:
            if plan is None:
                return self._route(req, Tx(conn, []))
            key = plan.key
            if now is None:
                # the versions first: the data read after them is at least as new
                now = self.store.versions(conn, plan.rows)
            entry = self.cache.get(key, now)
            if entry is None:
                flight, leads = self.cache.board(key, now, plan.rows)
                if not leads:
                    entry = flight.future.result()
                    if entry is None:  # its answer was not one to keep
                        return self._route(req, Tx(conn, []))
                else:
                    try:
                        with self.cache.turn(key):
                            if not inline:  # on the event loop the caller waited for the writer (`computes_inline`)
                                self.store.writer.yield_to()
                            if (seen := self.cache.depart(flight)) is not None:
                                # those who joined read their versions before now: read at the newest of theirs
                                now = newest(seen, now)
                            self.cache.read_at(flight, now, plan.rows)
                            spent = time.thread_time()
                            res, entry = self._read_into_cache(req, conn, plan, now)
                            self.cache.note_cost(key, time.thread_time() - spent)
                    finally:
                        self.cache.land(flight, entry)
                    if entry is None:
                        return res
        return self._from_entry(req, entry)

    def _read_into_cache(self, req: ApiRequest, conn: Connection, plan: CachePlan,
                         now: dict[str, int]) -> tuple[ApiResponse, Entry | None]:
        """Answer a GET, noting the tables it reads; a 200 JSON answer is remembered at their versions."""
        assert self.cache is not None
        read: set[str] = set()
        conn.info[NOW_KEY] = now
        try:
            with noting_reads(conn, read):
                res = self._route(req, Tx(conn, []))
        finally:
            conn.info.pop(NOW_KEY, None)
        if res.status != 200 or res.text is not None:
            return res, None
        return res, self.cache.put(plan.key, stamp(read, now, TABLES, plan.scope), res.status, res.content(),
                                   res.headers)

    def _route(self, req: ApiRequest, tx: Tx | None) -> ApiResponse:
        path = req.path.strip("/")
        method = req.method.upper()
        if path == "":
            if method != "GET":
                return error(405, "the service root is read-only")
            return ApiResponse(200, self.root(req.base))
        if path == "CreateObservations":
            if method != "POST":
                return error(405, "CreateObservations takes POST")
            return self.create_observations(req, tx)
        if path == "$batch":
            if method != "POST":
                return error(405, "$batch takes POST")
            from sensorthings.batch import run_batch  # batch runs requests through this module: import late

            return run_batch(self, req)
        resource = parse_path(path)
        if method == "GET":
            return self.get(req, resource, tx)
        if method == "POST":
            return self.post(req, resource, tx)
        if method in ("PATCH", "PUT"):
            return self.update(req, resource, tx)
        if method == "DELETE":
            return self.delete(req, resource, tx)
        return error(405, f"method {method} is not allowed here")

    def root(self, base: str) -> dict[str, Any]:
        """The service root document."""
        return {
            "value": [{"name": e.set_name, "url": f"{base}/{e.set_name}"} for e in ENTITY_TYPES],
            "serverSettings": {"conformance": CONFORMANCE + self.extra_conformance, **self.extra_settings},
        }

    @contextmanager
    def _reading(self, tx: Tx | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx.conn
        else:
            with self.store.read() as conn:
                yield conn

    @contextmanager
    def _writing(self, tx: Tx | None) -> Iterator[Tx]:
        if tx is not None:
            yield tx
        else:
            with self.store.write() as (conn, changes):
                yield Tx(conn, changes)

    def options(self, req: ApiRequest, entity: EntityType) -> QueryOptions:
        """The request's query options, parsed within the limits and checked against `entity`."""
        params = {k: v for k, v in req.params.items() if k.lower() != "$skiptoken"}
        return query_options(params, entity, self.limits)

    def after(self, req: ApiRequest) -> tuple[Any, ...] | None:
        """The sort keys a `$skiptoken` continues from."""
        for k, v in req.params.items():
            if k.lower() == "$skiptoken":
                return decode_token(v)
        return None

    # -- GET --------------------------------------------------------------------------------------
    def get(self, req: ApiRequest, resource: Resource, tx: Tx | None) -> ApiResponse:
        """Read an entity, a set, a property, a `$value` or `$ref`s."""
        entity = resource.entity
        opts = parsed = self.options(req, entity)
        reader = Reader(self.store, req.base, self.limits.default_top, hide_internal=not req.sees_internal,
                        exact_count=req.exact_count, fragments=None if self.cache is None else self.cache.fragments,
                        pages=None if self.cache is None else self.cache.pages,
                        kept_rows=None if self.cache is None else self.cache.rows)
        where = condition(resource)
        with self._reading(tx) as conn:
            if resource.single:
                if resource.prop is not None or resource.ref:
                    opts = QueryOptions()
                doc = reader.entity(conn, entity, where, opts)
                if doc is None:
                    return error(404, f"no such {entity.name}: /{req.path.strip('/')}")
                if resource.ref:
                    return ApiResponse(200, {"@iot.selfLink": doc["@iot.selfLink"]})
                if resource.prop is not None:
                    key = "@iot.id" if resource.prop == "id" else resource.prop
                    value = doc.get(key)
                    if resource.value:
                        if value is None:
                            return ApiResponse(204)
                        text = value if isinstance(value, str) else orjson.dumps(value).decode()
                        return ApiResponse(200, text=text, headers={"Content-Type": "text/plain; charset=utf-8"})
                    if value is None:
                        return ApiResponse(204)
                    return ApiResponse(200, {key: value})
                return ApiResponse(200, doc)
            if resource.ref:
                opts = QueryOptions(filter=opts.filter, select=("@iot.selfLink",), orderby=opts.orderby,
                                    top=opts.top, skip=opts.skip, count=opts.count)
            if opts.result_format == "dataArray":
                if entity is not OBSERVATION:
                    raise QueryError("$resultFormat=dataArray applies to Observations", "$resultFormat")
                out = self._data_array(conn, reader, resource, opts, req)
            else:
                def next_url(token: str | None) -> str:
                    return self._next_url(req, parsed, token)

                out = reader.collection(conn, entity, where, opts, next_url, self.after(req), resource.steps)
            if not out["value"]:
                # an empty set of a missing parent is a 404; looked up only then, to spare the common case
                self._check_parent(conn, resource)
            return ApiResponse(200, out)

    def _next_url(self, req: ApiRequest, opts: QueryOptions, token: str | None) -> str:
        """The next page: by skiptoken where the order allows seeking, by $skip otherwise."""
        top = opts.top if opts.top is not None else self.limits.default_top
        return next_link(f"{req.base}/{req.path.strip('/')}", opts, top=top, skip=opts.skip + top, skiptoken=token)

    def _check_parent(self, conn: Connection, resource: Resource) -> None:
        parent = resource.parent
        if parent is not None and parent.id is not None and not self.store.exists(conn, parent.entity, parent.id):
            raise NotFound(f"{parent.entity.name} {parent.id} does not exist")

    def _data_array(self, conn: Connection, reader: Reader, resource: Resource, opts: QueryOptions,
                    req: ApiRequest) -> dict[str, Any]:
        components = list(opts.select or DATA_ARRAY_COMPONENTS)
        for name in components:
            if name not in DATA_ARRAY_COMPONENTS:
                raise QueryError(f"{name} cannot be a dataArray component", "$select")
        # the rows are grouped by their (Multi)Datastream: read its key too
        keyed = replace(opts, select=(*components, "Datastream", "MultiDatastream"))
        rows, token, count = reader.page(conn, OBSERVATION, condition(resource), keyed, self.after(req),
                                         resource.steps)
        write = serializer(OBSERVATION, req.base, tuple(dict.fromkeys(("id", *components))))
        groups: dict[str, list[list[Any]]] = {}
        for row in rows:
            doc = write(row)
            if row["datastream_id"] is not None:
                stream = f"Datastream@iot.navigationLink\0{req.base}/Datastreams({row['datastream_id']})"
            else:
                md = row["multi_datastream_id"]
                stream = f"MultiDatastream@iot.navigationLink\0{req.base}/MultiDatastreams({md})"
            groups.setdefault(stream, []).append([doc["@iot.id" if c == "id" else c] for c in components])
        out: dict[str, Any] = {}
        if count is not None:
            out.update(count_annotations(count))
        out["value"] = []
        for stream, items in groups.items():
            key, link = stream.split("\0")
            out["value"].append({key: link, "components": components, "dataArray@iot.count": len(items),
                                 "dataArray": items})
        if token is not None:
            out["@iot.nextLink"] = self._next_url(req, opts, token or None)
        return out

    # -- POST -------------------------------------------------------------------------------------
    def post(self, req: ApiRequest, resource: Resource, tx: Tx | None) -> ApiResponse:
        """Create an entity (deep insert), or link one with `$ref`."""
        if resource.prop is not None or resource.single:
            return error(405, "POST creates entities in a set; address a set such as /Things")
        data = _json_body(req)
        entity = resource.entity
        target = _observation_set(req.path) if entity is OBSERVATION and tx is None else None
        if target is not None:
            submitted = self._submit_observation(req, target, data)
            if submitted is not None:
                return submitted[1]()
        parent = resource.parent
        last = resource.steps[-1]
        with self._writing(tx) as t:
            if parent is not None:
                if parent.id is None:
                    raise PathError("POST to a navigation set needs its parent's id", 400)
                if not self.store.exists(t.conn, parent.entity, parent.id):
                    raise NotFound(f"{parent.entity.name} {parent.id} does not exist")
            if resource.ref:
                if parent is None or last.nav is None or last.nav.kind is not NavKind.LINK:
                    raise PathError("POST $ref adds a link to a many-to-many set such as Things(1)/Locations", 400)
                if not isinstance(data, dict) or "@iot.id" not in data:
                    raise BodyError('a $ref body is {"@iot.id": <id>}')
                other = parse_id(data["@iot.id"], "$ref")
                self.store.add_link(t.conn, parent.entity, parent.id, last.nav.name, other)  # type: ignore[arg-type]
                t.changes.append(Change(parent.entity, parent.id, "update"))  # type: ignore[arg-type]
                return ApiResponse(204)
            implied: dict[str, int] = {}
            implied_navs: frozenset[str] = frozenset()
            extra_link: tuple[str, Ref] | None = None
            if parent is not None and last.nav is not None:
                back = reverse_nav(parent.entity, last.nav)
                if back is None:
                    raise PathError(f"cannot create {entity.name} through {last.nav.name}", 400)
                implied_navs = frozenset({back.name})
                if last.nav.kind is NavKind.REVERSE:
                    implied[last.nav.column] = parent.id  # type: ignore[assignment]
                elif last.nav.kind is NavKind.LINK:
                    extra_link = (back.name, Ref(parent.entity, parent.id))  # type: ignore[arg-type]
                else:
                    raise PathError(f"{last.nav.name} is a single entity; create it in its own set", 400)
            draft = parse_entity(entity, data, implied=implied_navs)
            if isinstance(draft, Ref):
                raise BodyError(f"a new {entity.name} must not carry @iot.id")
            if extra_link is not None:
                draft.links.setdefault(extra_link[0], []).append(extra_link[1])
            new_id = self.store.insert(t.conn, draft, implied, t.changes)
            doc = Reader(self.store, req.base, self.limits.default_top).entity(
                t.conn, entity, lambda table: table.c.id == new_id, QueryOptions())
        link = f"{req.base}/{entity.set_name}({new_id})"
        return ApiResponse(201, doc, {"Location": link})

    def _submit_observation(self, req: ApiRequest, target: _ObservationSet, data: Any,
                            bare: bool = False) -> tuple[Pending[Written], Callable[[], ApiResponse]] | None:
        """One POSTed Observation handed to the group-commit writer: its future and what answers once it is
        done (201 with the Observation as written, or the refusal); None for a deep insert (a new
        FeatureOfInterest inside), which takes a transaction of its own."""
        row = _observation_row(target, data)
        if row is None:
            return None
        parent = target.resource.parent
        future = self.store.writer.submit([row], together=True)

        def finish() -> ApiResponse:
            written = future.result()
            reason = written.reasons.get(0)
            if reason is not None:
                if parent is not None and reason == f"{parent.entity.name} {parent.id} does not exist":
                    raise NotFound(reason)
                raise StoreError(reason)
            row = written.rows[0]
            assert row is not None, "a row not refused is written"
            link = f"{req.base}/{OBSERVATION.set_name}({row['id']})"
            return ApiResponse(201, None if bare else serializer(OBSERVATION, req.base, None)(row), {"Location": link})

        return future, finish

    def create_observations(self, req: ApiRequest, tx: Tx | None) -> ApiResponse:
        """The dataArray extension: many Observations per request, per-row errors without failing the rest."""
        return ApiResponse(201, create_observations(self.store, tx, _json_body(req), req.base))

    # -- PATCH / PUT ------------------------------------------------------------------------------
    def update(self, req: ApiRequest, resource: Resource, tx: Tx | None) -> ApiResponse:
        """PATCH (JSON merge or JSON Patch) or PUT an entity; PUT on a to-one `$ref` relinks."""
        if not resource.single or resource.prop is not None:
            return error(405, f"{req.method} applies to one entity, e.g. /Things(1)")
        data = _json_body(req)
        entity = resource.entity
        with self._writing(tx) as t:
            id_ = self._resolve_id(t.conn, resource)
            if resource.ref:
                return self._put_ref(t, resource, data)
            patch = req.method.upper() == "PATCH"
            if patch and (isinstance(data, list) or "json-patch" in req.content_type):
                data = self._apply_json_patch(t.conn, req, entity, id_, data)
                mode = "put"
            else:
                mode = "patch" if patch else "put"
            if not isinstance(data, dict):
                raise BodyError(f"{entity.name} must be a JSON object")
            data = {k: v for k, v in data.items() if k != "@iot.id"}
            draft = parse_entity(entity, data, mode=mode)
            assert isinstance(draft, Draft)
            self.store.update(t.conn, draft, id_, t.changes)
            doc = Reader(self.store, req.base, self.limits.default_top).entity(
                t.conn, entity, lambda table: table.c.id == id_, QueryOptions())
        return ApiResponse(200, doc)

    def _apply_json_patch(self, conn: Connection, req: ApiRequest, entity: EntityType, id_: int,
                          ops: Any) -> dict[str, Any]:
        current = Reader(self.store, req.base).entity(conn, entity, lambda table: table.c.id == id_,
                                                      QueryOptions(select=tuple(p.name for p in entity.props)))
        if current is None:  # Things(n) with one step is taken at its word until here
            raise NotFound(f"no such {entity.name}: {entity.set_name}({id_})")
        try:
            patched = jsonpatch.apply_patch(current, ops)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError) as exc:
            raise BodyError(f"JSON Patch: {exc}") from None
        if not isinstance(patched, dict):  # a patch of the whole document ("path": "") may replace it by anything
            raise BodyError(f"JSON Patch: the result must be a {entity.name} object, not {type(patched).__name__}")
        read_only = {p.name for p in entity.props if p.read_only}
        return {k: v for k, v in patched.items() if k not in read_only or v != current.get(k)}

    def _put_ref(self, t: Tx, resource: Resource, data: Any) -> ApiResponse:
        last = resource.steps[-1]
        parent = resource.parent
        if parent is None or last.nav is None or last.nav.kind is not NavKind.FK or parent.id is None:
            raise PathError("PUT $ref sets a single link such as Datastreams(1)/Sensor/$ref", 400)
        if not isinstance(data, dict) or "@iot.id" not in data:
            raise BodyError('a $ref body is {"@iot.id": <id>}')
        draft = Draft(parent.entity, {}, {last.nav.name: [Ref(target_of(last.nav), parse_id(data["@iot.id"], "$ref"))]})
        self.store.update(t.conn, draft, parent.id, t.changes)
        return ApiResponse(204)

    def _resolve_id(self, conn: Connection, resource: Resource) -> int:
        last = resource.steps[-1]
        if last.id is not None and len(resource.steps) == 1:
            return last.id
        table = TABLES[resource.entity.table]
        cond = condition(resource)(table)
        found = conn.execute(select(table.c.id).where(cond).limit(1)).scalar() if cond is not None else None
        if found is None:
            raise NotFound(f"no such {resource.entity.name}")
        return found

    # -- DELETE -----------------------------------------------------------------------------------
    def delete(self, req: ApiRequest, resource: Resource, tx: Tx | None) -> ApiResponse:
        """Delete an entity (with cascades) or a link (`Things(1)/Locations(2)/$ref`)."""
        with self._writing(tx) as t:
            if resource.ref:
                last = resource.steps[-1]
                parent = resource.parent
                if parent is None or parent.id is None or last.nav is None or last.id is None \
                        or last.nav.kind is not NavKind.LINK:
                    raise PathError("DELETE $ref removes a link such as Things(1)/Locations(2)/$ref", 400)
                if not self.store.remove_link(t.conn, parent.entity, parent.id, last.nav.name, last.id):
                    raise NotFound("no such link")
                return ApiResponse(200)
            if not resource.single or resource.prop is not None:
                return error(405, "DELETE applies to one entity, e.g. /Things(1)")
            id_ = self._resolve_id(t.conn, resource)
            self.store.delete(t.conn, resource.entity, id_)
        return ApiResponse(200)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """A GET's key in the response cache and, for a read confined to one (Multi)Datastream's Observations, the
    row version keys that stand for the tables it reads (sensorthings.store.versions.confined)."""

    key: tuple
    scope: dict[str, str] | None

    @property
    def rows(self) -> tuple[str, ...]:
        """The row version keys to read with the tables' versions."""
        return tuple(self.scope.values()) if self.scope else ()


def _confinement(req: ApiRequest) -> dict[str, str] | None:
    """`Datastreams(n)/Observations` (or a MultiDatastream's) whose options reach no other Observations or
    Datastreams: it reads that stream's row and Observations only, so writes elsewhere cannot change it."""
    try:
        resource = parse_path(req.path.strip("/"))
    except PathError:
        return None
    parent = resource.parent
    if (len(resource.steps) != 2 or parent is None or parent.id is None
            or parent.entity not in (DATASTREAM, MULTI_DATASTREAM) or resource.entity is not OBSERVATION
            or resource.single or resource.ref or resource.prop is not None):
        return None
    if any("observations" in v.lower() or "datastreams" in v.lower() for v in req.params.values()):
        return None
    return confined(parent.entity.table, parent.id)


@dataclass(frozen=True, slots=True)
class _ObservationSet:
    """An Observations set one POSTed Observation is created in through the group-commit writer (`Observations`,
    `Datastreams(7)/Observations`), made once per path: devices post to the same few thousand."""

    resource: Resource
    implied: frozenset[str]  # the navigation property the path gives (`Datastream`)
    given: tuple[tuple[str, int], ...]  # and its column with the parent's id


@lru_cache(maxsize=16_384)
def _observation_set(path: str) -> _ObservationSet | None:
    """Where a POST to `path` creates one Observation through the group-commit writer; None for any other path
    (`handle` answers it, and says what is wrong with one it cannot parse)."""
    path = path.strip("/")
    if path in ("", "$batch", "CreateObservations"):
        return None
    try:
        resource = parse_path(path)
    except PathError:
        return None
    if resource.entity is not OBSERVATION or resource.single or resource.ref or resource.prop is not None:
        return None
    parent, last = resource.parent, resource.steps[-1]
    if parent is None:
        return _ObservationSet(resource, frozenset(), ())
    if parent.id is None or last.nav is None or last.nav.kind is not NavKind.REVERSE:
        return None
    back = reverse_nav(parent.entity, last.nav)
    if back is None:
        return None
    return _ObservationSet(resource, frozenset({back.name}), ((last.nav.column, parent.id),))


def _observation_row(target: _ObservationSet, data: Any) -> ObservationRow | None:
    """The row one Observation POSTed to `target` writes; None for a deep insert (a new FeatureOfInterest inside),
    which takes a transaction of its own. Raises what is wrong with the body."""
    draft = parse_entity(OBSERVATION, data, implied=target.implied)
    if isinstance(draft, Ref):
        raise BodyError(f"a new {OBSERVATION.name} must not carry @iot.id")
    values = dict(target.given)
    values.update(draft.values)
    for name, items in draft.links.items():
        item = items[0]
        if not isinstance(item, Ref):
            return None
        values[OBSERVATION.nav_by_name[name].column] = item.id  # whether it exists, the writer checks
    return ObservationRow(**values)


def _settle(answer: Pending[ApiResponse], finish: Callable[[], ApiResponse]) -> None:
    """Resolve `answer` with what `finish` answers, or with what it raised beyond the errors it answers."""
    try:
        answer.set_result(finish())
    except Exception as exc:  # noqa: BLE001 - whoever waits must hear of it
        answer.set_exception(exc)


def _json_body(req: ApiRequest) -> Any:
    if not req.body:
        raise BodyError("the request needs a JSON body")
    try:
        return orjson.loads(req.body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not JSON: {exc}") from None


def relative_path(url: str, base: str) -> str:
    """A URL or path made relative to the service root (`Things(1)`)."""
    if url.startswith(base):
        return url[len(base):].lstrip("/")
    parts = urlsplit(url)
    path = parts.path if parts.scheme else url.split("?", 1)[0]
    query = parts.query if parts.scheme else (url.split("?", 1)[1] if "?" in url else "")
    for prefix in ("/v1.1/", "v1.1/", "/v1.0/", "v1.0/"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    path = path.lstrip("/")
    return path + ("?" + query if query else "")
