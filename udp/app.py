"""The one ASGI app: landing page, /health, the SensorThings API at /v1.1, OGC API Features at /ogcapi, WMS and
WFS at /wms and /wfs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from apicommon.heap import freeze_startup
from apicommon.request import public_base, refusal
from apicommon.switching import switch_often
from features.app import features_routes
from features.source import FeatureSource
from features.tile_files import TileFiles
from mqtt_bridge import deadletters
from ows import mapserver
from ows.app import ows_routes
from ows.mapfile import ServiceInfo
from provider_plugins.catalogue import PlatformCatalogue
from sensorthings.cache import ResponseCache
from sensorthings.http.app import sensorthings_routes
from sensorthings.http.read_waits import ReadWaits
from sensorthings.mqtt.client import BrokerAddress
from sensorthings.mqtt.notify import Notifier, mqtt_conformance
from sensorthings.service import Service
from sensorthings.store import version_watch
from sensorthings.store.base import Store
from sensorthings.store.leadership import holders
from udp.auth import Oidc
from udp.cockpit.routes import cockpit_routes
from udp.config import Config, load_config
from udp.landing_page import landing_html
from udp.load import bring_in
from udp.sources import load_sources

log = logging.getLogger("udp")


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson."""

    def render(self, content: object) -> bytes:
        import orjson

        return orjson.dumps(content)


def build_app(config: Config) -> Starlette:
    """The platform's ASGI app for a configuration."""
    store = Store.open(config.store, statement_timeout=config.statement_timeout_s, replicas=config.store_replicas)
    bring_in(store, config.collections, show=False)  # `udp serve` did already; an app built directly not
    cache = ResponseCache(config.cache_mb * 1024 * 1024) if config.cache_mb > 0 else None
    mqtt_url = os.environ.get("UDP_MQTT_URL")
    endpoints = os.environ.get("UDP_MQTT_ENDPOINTS", "").split()
    extensions, settings = mqtt_conformance(endpoints) if mqtt_url else ([], {})
    service = Service(store, cache=cache, extensions=extensions, settings=settings, limits=config.limits())
    versions = version_watch.watch(config.store) if cache is not None else None
    read_waits = ReadWaits()
    notifier = None
    if mqtt_url:
        base = os.environ.get("UDP_BASE_URL", config.public_url or "http://localhost:8080").rstrip("/")
        notifier = Notifier(store, BrokerAddress.parse(mqtt_url), base + "/v1.1",
                            f"udp-notify-{socket.gethostname()}-{os.getpid()}", limits=config.limits(),
                            qos=config.mqtt_notify_qos, relay=os.environ.get("UDP_NOTIFY_RELAY"))
        store.listeners.append(notifier)
    if config.bridge:
        deadletters.create_tables(store)  # /health counts them, maybe before the bridge process has started
    started = time.time()
    cockpit_oidc = _oidc(config)

    async def landing(request: Request) -> Response:
        base = public_base(request, config.public_url)
        links = [
            {"href": f"{base}/", "rel": "self", "type": "application/json", "title": "this document"},
            {"href": f"{base}/v1.1", "rel": "sensorthings", "type": "application/json",
             "title": "OGC SensorThings API v1.1"},
            {"href": f"{base}/ogcapi", "rel": "data", "type": "application/json",
             "title": "OGC API Features: the city's datasets"},
            {"href": f"{base}/ogcapi/collections/{catalogue.id}", "rel":
             "http://www.opengis.net/def/rel/ogc/1.0/ogc-catalog", "type": "application/json",
             "title": "The catalogue of datasets and services (OGC API Records)"},
            {"href": f"{base}/dcat", "rel": "describedby", "type": "text/turtle",
             "title": "The catalogue as DCAT-AP for harvesting (Turtle, JSON-LD, RDF/XML)"},
            {"href": f"{base}/wms?SERVICE=WMS&REQUEST=GetCapabilities", "rel": "service", "type": "text/xml",
             "title": "WMS 1.3.0: the city's layers as maps"},
            {"href": f"{base}/wfs?SERVICE=WFS&REQUEST=GetCapabilities", "rel": "service", "type": "text/xml",
             "title": "WFS 2.0: the city's layers as features"},
            {"href": f"{base}/cockpit/", "rel": "cockpit", "type": "text/html",
             "title": "The cockpit: the city at a glance"},
            {"href": f"{base}/health", "rel": "status", "type": "application/json", "title": "health"},
        ]
        want_html = request.query_params.get("f") == "html" or (
            "text/html" in request.headers.get("accept", "") and request.query_params.get("f") != "json")
        if want_html:
            meta = config.catalogue
            return HTMLResponse(landing_html(base, config.title, "Urban data platform", links[1:],
                                             meta.publisher.name if meta.publisher else None, meta.contact))
        return ORJSONResponse({"title": config.title, "description": "Urban data platform", "links": links})

    async def me(request: Request) -> Response:
        """Who the request is and what it may do: for a client's interface (the cockpit shows its moderation queue
        to those who may moderate). The server checks every request itself all the same."""
        principal = request.scope.get("udp.principal")
        named = principal is not None and bool(principal.roles)
        body = {"name": principal.name if named else None, "roles": sorted(principal.roles) if named else [],
                "may": {role: refusal(request.scope, role) is None for role in ("read", "write", "moderate")},
                "accounts": config.auth is not None,
                "oidc": None if cockpit_oidc is None else {"issuer": cockpit_oidc.issuer,
                                                           "client_id": cockpit_oidc.client_id}}
        return ORJSONResponse(body, headers={"Cache-Control": "private, no-store", "Vary": "Authorization"})

    async def health(request: Request) -> Response:
        # ?subscribed=TOPIC (repeatable): whether the platform has heard of subscribers to it, so that a client can
        # tell when its subscription takes notifications; the operator's to see once the platform has accounts
        asked = request.query_params.getlist("subscribed")
        if asked and not (config.auth is None or _is_admin(request)):
            return ORJSONResponse({"code": 403, "type": "error",
                                   "message": "subscribed=: which topics have subscribers takes the admin role"},
                                  status_code=403)
        db_ok = await run_in_threadpool(store.healthy)
        # what is down: the database (503: nothing can be read or written), the broker (200: HTTP still works)
        down = [] if db_ok else ["store"]
        body = {"status": "ok" if db_ok else "degraded", "down": down, "uptime_s": round(time.time() - started, 1),
                "store": {"kind": store.dialect.name, "ok": db_ok}}
        if store.replicas is not None:
            body["store"]["replicas"] = store.replicas.stats()
            body["store"]["primary_reads"] = store.replicas.primary_reads
        if service.cache is not None:
            body["response_cache"] = service.cache.stats()
            body["worker"] = os.getpid()  # the stats are this worker's
        body["reads"] = read_waits.stats()  # where this worker's GETs spent their time (sensorthings.http.read_waits)
        body["ingest"] = store.writer.stats()
        if store.write_turns is not None:  # SQLite: this worker's turns at the write lock every process shares
            body["ingest"]["write_turns"] = store.write_turns.stats()
        if store.checkpoints is not None:  # SQLite: this worker's passive checkpoints beside the writes
            body["ingest"]["checkpoints"] = store.checkpoints.runs
        if db_ok:  # the collections whose vector tiles `udp seed` has made for their current data
            body["tiles"] = {"seeded": await run_in_threadpool(_seeded, sources, tile_files)}
            # several nodes on one store: which one runs each singleton (the same answer on every node)
            body["node"] = {"name": os.environ.get("UDP_NODE"),
                            "singletons": await run_in_threadpool(holders, config.store, config.singletons())}
        if notifier is not None:
            body["mqtt"] = notifier.stats()
            if asked:
                body["mqtt"]["subscribed"] = notifier.knows(asked)
            if not body["mqtt"]["connected"]:
                down.append("mqtt")
                body["status"] = "degraded"
        if config.bridge:
            # the bridge holds device messages unacknowledged while the store is down: the broker keeps them
            body["bridge"] = {"dead_letters": await run_in_threadpool(deadletters.count, store) if db_ok else None}
        if not db_ok:
            return ORJSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return ORJSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # a few threads per worker: more only contend for the GIL (measured in bench/sta_http.py)
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.threads
        switch_often()  # a uvicorn worker is spawned: it does not inherit `udp serve`'s setting
        freeze_startup()
        yield
        if versions is not None:
            await versions.close()
        if notifier is not None:
            notifier.close()
        store.close()

    sources = load_sources(config.collections, store, config.indicators, config.statement_timeout_s)
    if config.feedback is not None:
        from provider_plugins.areas import load_areas
        from provider_plugins.feedback import COLLECTION, FeedbackSource

        feedback = FeedbackSource(config.feedback, store, load_areas(config.feedback),
                                  set(sources) | set(config.indicators))
        if notifier is not None:
            feedback.listeners.append(notifier.announce)
        sources[COLLECTION] = feedback
    tile_files = TileFiles(config.cache_directory() / "tiles")
    catalogue = PlatformCatalogue(store, sources, config.collections, config.sensors, config.indicators,
                                  config.catalogue, config.title, endpoints or config.mqtt_endpoints,
                                  maps=mapserver.mapserv() is not None)
    app = Starlette(routes=[
        Route("/", landing),
        Route("/health", health),
        Route("/me", me),
        *sensorthings_routes(service, config.public_url, max_body_mb=config.max_body_mb, versions=versions,
                             waits=read_waits),
        *cockpit_routes(cockpit_oidc.issuer if cockpit_oidc is not None else None),
        *features_routes(sources, config.title, config.public_url, max_limit=config.max_top, catalogue=catalogue,
                         tile_dir=tile_files.directory),
        *ows_routes(sources, _service_info(config), config.public_url, config.cache_directory() / "ows"),
    ], lifespan=lifespan, middleware=_middleware(config))
    app.state.store = store
    app.state.service = service
    app.state.config = config
    return app


def _oidc(config: Config) -> Oidc | None:
    """The OpenID Connect issuer the cockpit signs in with (`auth.oidc` with a `client_id`), or None."""
    oidc = config.auth.oidc if config.auth is not None else None
    return oidc if oidc is not None and oidc.client_id else None


def _seeded(sources: dict[str, FeatureSource], files: TileFiles) -> list[str]:
    """The collections whose vector tiles `udp seed` has made for their current data."""
    return [cid for cid, source in sources.items() if (folder := files.current(source)) is not None
            and files.seeded(folder)]


def _service_info(config: Config) -> ServiceInfo:
    """What WMS and WFS capabilities say of the platform: its title, publisher and contact from config.yml."""
    meta = config.catalogue
    agent = meta.contact or meta.publisher
    return ServiceInfo(meta.title or config.title, meta.description or "Urban data platform",
                       meta.publisher.name if meta.publisher else None, agent.name if agent else None,
                       agent.email if agent else None)


def _is_admin(request: Request) -> bool:
    """Whether the request's principal (set by the access control) holds the admin role."""
    principal = request.scope.get("udp.principal")
    return bool(principal is not None and principal.can("admin"))


def _middleware(config: Config) -> list[Middleware]:
    """CORS for `server.cors` origins (outermost: a browser's preflight carries no credentials), then access
    control when `auth:` is declared."""
    out: list[Middleware] = []
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        out.append(Middleware(
            CORSMiddleware, allow_origins=list(config.cors), allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS), expose_headers=list(CORS_EXPOSED), max_age=3600))
    if config.auth is None:
        return out
    from udp.auth import Authenticator, AuthMiddleware

    return [*out, Middleware(AuthMiddleware, auth=Authenticator(config.auth))]


CORS_METHODS = ("GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS")
# what a web app sends: credentials of its own (Basic, a bearer token), bodies, conditional requests, how stale an
# answer it takes (Cache-Control: max-stale)
CORS_HEADERS = ("Authorization", "Content-Type", "Accept", "Accept-Language", "If-None-Match", "If-Match", "Prefer",
                "Cache-Control")
# what it may read of an answer beyond the safelisted headers
CORS_EXPOSED = ("ETag", "Location", "Content-Crs", "Link", "Retry-After", "WWW-Authenticate", "Age")


def app_from_env() -> Starlette:
    """App factory for uvicorn workers: the configuration comes from UDP_* environment variables."""
    config = load_config(os.environ.get("UDP_CONFIG") or None)
    if os.environ.get("UDP_STORE"):
        config.store = os.environ["UDP_STORE"]
    if os.environ.get("UDP_CACHE_MB"):
        config.cache_mb = int(os.environ["UDP_CACHE_MB"])
    if os.environ.get("UDP_PUBLIC_URL"):
        config.public_url = os.environ["UDP_PUBLIC_URL"]
    return build_app(config)
