"""config.yml: the declaration of a city, loaded and validated once at start-up."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from apicommon.declaration import declared
from features.metadata import CatalogueMetadata, MetadataError, parse_catalogue_metadata
from sensorthings.query.limits import Limits
from udp.errors import ConfigError, whole_number

if TYPE_CHECKING:
    from features.spec import CollectionSpec
    from mqtt_bridge.rules import Rule
    from provider_plugins.feedback import FeedbackSpec
    from udp.auth import AuthSpec
    from udp.indicators import IndicatorSpec
    from udp.retention import Rule as RetentionRule
    from udp.sensors import SensorsEntry

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KNOWN_KEYS = {"title", "store", "public_url", "mqtt", "collections", "sensors", "bridge", "indicators", "auth",
              "server", "publisher", "contact", "license", "catalogue", "feedback", "retention"}
SERVER_KEYS = ("threads", "response_cache_mb", "max_body_mb", "max_top", "max_expand_depth", "statement_timeout_s",
               "cors")
MQTT_KEYS = ("url", "port", "ws_port", "endpoints", "max_payload_kb", "notify_qos", "shared")


@dataclass
class Config:
    """The platform's configuration."""

    title: str = "Urban Data Platform"
    store: str = "sqlite:///udp.db"
    store_replicas: tuple[str, ...] = ()  # PostgreSQL streaming replicas that take the reads
    public_url: str | None = None
    threads: int = 4  # threads per worker for blocking database calls
    cache_mb: int = 64  # response cache per worker; 0 turns it off
    # limits on what one request may ask for: hostile or careless input must not take a worker down
    max_body_mb: int = 64  # request bodies (POST, PATCH, PUT, $batch, CreateObservations)
    max_top: int = 10_000  # $top and the OGC API `limit`
    max_expand_depth: int = 5  # $expand levels, nested options and paths alike
    statement_timeout_s: float = 30.0  # one SQL statement of a request; 0 turns it off
    # web pages of these origins may call the APIs from the browser (CORS); "*": any, as open data is read
    cors: tuple[str, ...] = ("*",)
    mqtt_max_payload_kb: int = 256  # a client's publish to the embedded broker, and an Observation published
    mqtt_url: str | None = None  # an external broker; None: the embedded one
    mqtt_port: int = 1883
    mqtt_ws_port: int = 9001
    mqtt_endpoints: list[str] = field(default_factory=list)  # the broker URLs clients are told (serverSettings)
    mqtt_notify_qos: int = 1  # the QoS notifications are published with
    mqtt_shared: bool = False  # nodes share the external broker's topics (MQTT 5 shared subscriptions)
    bridge: list[Rule] = field(default_factory=list)
    collections: dict[str, CollectionSpec] = field(default_factory=dict)
    sensors: list[SensorsEntry] = field(default_factory=list)
    indicators: dict[str, IndicatorSpec] = field(default_factory=dict)
    retention: list[RetentionRule] = field(default_factory=list)  # raw Observations deleted, aggregates kept
    feedback: FeedbackSpec | None = None  # citizens' feedback (`feedback:`), None: none taken
    auth: AuthSpec | None = None  # None: the platform runs open
    catalogue: CatalogueMetadata = field(default_factory=CatalogueMetadata)  # publisher, contact, licence, …
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def cache_directory(self) -> Path:
        """Where the processes of one platform (its store and config) keep what they make and share: map files,
        snapshots, kept tiles (caches: made again when gone)."""
        key = hashlib.sha1(f"{self.store}\0{self.path}".encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"udp-{key}"

    def singletons(self) -> list[str]:
        """What only one node of several runs with this configuration (the lock names of store/leadership.py)."""
        return (["indicators"] if self.indicators else []) + (["retention"] if self.retention else []) + (
            ["reimports"] if any(not spec.is_postgis for spec in self.collections.values()) else [])

    def limits(self) -> Limits:
        """The `server:` limits on queries, for every way a query comes in (HTTP, `$batch`, MQTT topics)."""
        return Limits(max_top=self.max_top, max_expand_depth=self.max_expand_depth)


def _flag(value: Any, where: str) -> bool:
    """A yes/no config value: true or false, or that text (from the environment: ${UDP_MQTT_SHARED})."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: true or false, got {value!r}")
    return value


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """The configuration from a YAML file; the defaults without one."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    declared(doc, "", KNOWN_KEYS, ConfigError)
    doc = _expand(doc, "")
    cfg = Config(path=p, raw=doc)
    if "title" in doc:
        if not isinstance(doc["title"], str):
            raise ConfigError("title: must be a string")
        cfg.title = doc["title"]
    if "store" in doc:
        store = doc["store"]
        if isinstance(store, dict):  # {url: …, replicas: […]}
            declared(store, "store", ("url", "replicas"), ConfigError)
            replicas = store.get("replicas") or []
            if isinstance(replicas, str):  # from the environment (${UDP_STORE_REPLICAS}): URLs apart, "" for none
                replicas = replicas.split()
            if not isinstance(replicas, list) or not all(isinstance(r, str) and r.startswith(("postgresql:",
                                                                                               "postgres:"))
                                                         for r in replicas):
                raise ConfigError("store.replicas: a list of postgresql://… URLs (streaming replicas of store.url)")
            store = store.get("url")
            if replicas and not str(store).startswith(("postgresql:", "postgres:")):
                raise ConfigError("store.replicas: replicas are PostgreSQL's: store.url must be postgresql://…")
            cfg.store_replicas = tuple(replicas)
        if not isinstance(store, str) or not store.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ConfigError(f"store: {store!r} is not sqlite:///file.db or postgresql://…")
        if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
            # relative SQLite paths are relative to the config file, like every other path in it
            store = "sqlite:///" + str((p.parent / store[len("sqlite:///"):]).resolve())
        cfg.store = store
    if "public_url" in doc:
        cfg.public_url = str(doc["public_url"])
    try:
        cfg.catalogue = parse_catalogue_metadata(doc)
    except MetadataError as exc:
        raise ConfigError(str(exc)) from None
    mqtt = doc.get("mqtt") or {}
    declared(mqtt, "mqtt", MQTT_KEYS, ConfigError)
    if "url" in mqtt:
        url = str(mqtt["url"])
        if not url.startswith(("mqtt://", "mqtts://", "ws://", "wss://", "tcp://")):
            raise ConfigError(f"mqtt.url: {url!r} is not a broker URL (mqtt://host:port)")
        cfg.mqtt_url = url
    if "port" in mqtt:
        cfg.mqtt_port = whole_number(mqtt["port"], "mqtt.port", 1, 65535)
    if "ws_port" in mqtt:
        cfg.mqtt_ws_port = whole_number(mqtt["ws_port"], "mqtt.ws_port", 0, 65535)
    if "endpoints" in mqtt:
        eps = mqtt["endpoints"]
        if not isinstance(eps, list) or not all(isinstance(e, str) and e.startswith(("mqtt://", "mqtts://", "ws://",
                                                                                        "wss://")) for e in eps):
            raise ConfigError("mqtt.endpoints: a list of broker URLs clients reach (mqtt://…, wss://…)")
        cfg.mqtt_endpoints = eps
    if "notify_qos" in mqtt:
        cfg.mqtt_notify_qos = whole_number(mqtt["notify_qos"], "mqtt.notify_qos", 0, 2)
    if "shared" in mqtt:
        shared = _flag(mqtt["shared"], "mqtt.shared")
        if shared and "url" not in mqtt:
            raise ConfigError("mqtt.shared: nodes share an external broker (mqtt.url); the embedded one is each "
                              "node's own")
        cfg.mqtt_shared = shared
    if "max_payload_kb" in mqtt:
        cfg.mqtt_max_payload_kb = whole_number(mqtt["max_payload_kb"], "mqtt.max_payload_kb", 1, 256 * 1024)
    if "bridge" in doc:
        from mqtt_bridge.rules import RuleError, parse_rules

        try:
            cfg.bridge = parse_rules(doc["bridge"])
        except RuleError as exc:
            raise ConfigError(str(exc)) from None
    if "collections" in doc:
        from features.spec import SpecError, parse_collections
        from provider_plugins.catalogue import CATALOGUE_ID
        from provider_plugins.sensorthings import VIEWS

        try:
            # the SensorThings collections and the catalogue are served beside the declared ones: their ids are taken
            cfg.collections = parse_collections(doc["collections"], p.parent,
                                                taken={v.id for v in VIEWS} | {CATALOGUE_ID})
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
    if "sensors" in doc:
        from udp.sensors import parse_sensors

        cfg.sensors = parse_sensors(doc["sensors"], p.parent)
    if "indicators" in doc:
        from udp.indicators import parse_indicators

        cfg.indicators = parse_indicators(doc["indicators"], cfg.collections)
    if "retention" in doc:
        from udp.retention import parse_retention

        cfg.retention = parse_retention(doc["retention"])
    if "feedback" in doc:
        from features.spec import SpecError
        from provider_plugins.feedback import COLLECTION, parse_feedback

        try:
            cfg.feedback = parse_feedback(doc["feedback"])
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
        if COLLECTION in cfg.collections:
            raise ConfigError(f"collections.{COLLECTION}: the id is the feedback's (`feedback:`); choose another")
        if cfg.feedback.areas_id is not None:
            if cfg.feedback.areas_id not in cfg.collections:
                raise ConfigError(f"feedback.areas: {cfg.feedback.areas_id!r} is not one of the collections")
            areas = cfg.collections[cfg.feedback.areas_id]
            cfg.feedback = replace(cfg.feedback, areas=areas, area_name=areas.style.label)
        from udp.indicators import feedback_indicators

        brought = feedback_indicators(cfg.feedback)
        taken = sorted(set(brought) & set(cfg.indicators))
        if taken:
            raise ConfigError(f"indicators.{taken[0]}: the id is one of feedback's indicators; choose another")
        cfg.indicators.update(brought)
    if "auth" in doc:
        from udp.auth import parse_auth

        cfg.auth = parse_auth(doc["auth"])
    server = doc.get("server") or {}
    declared(server, "server", SERVER_KEYS, ConfigError)
    if "threads" in server:
        cfg.threads = whole_number(server["threads"], "server.threads", 1, 256)
    if "response_cache_mb" in server:
        cfg.cache_mb = whole_number(server["response_cache_mb"], "server.response_cache_mb", 0, 65536)
    if "max_body_mb" in server:
        cfg.max_body_mb = whole_number(server["max_body_mb"], "server.max_body_mb", 1, 4096)
    if "max_top" in server:
        cfg.max_top = whole_number(server["max_top"], "server.max_top", 1, 1_000_000)
    if "max_expand_depth" in server:
        # the query parser's own bound on nesting is 50
        cfg.max_expand_depth = whole_number(server["max_expand_depth"], "server.max_expand_depth", 1, 50)
    if "statement_timeout_s" in server:
        cfg.statement_timeout_s = _seconds(server["statement_timeout_s"], "server.statement_timeout_s")
    if "cors" in server:
        cfg.cors = _origins(server["cors"])
    for rule in cfg.bridge:
        if rule.max_payload > cfg.mqtt_max_payload_kb * 1024:
            # the embedded broker drops larger publishes before the bridge could see them
            raise ConfigError(f"bridge[{rule.index}].max_payload: {rule.max_payload} bytes is over "
                              f"mqtt.max_payload_kb ({cfg.mqtt_max_payload_kb} KiB); raise that too")
    return cfg


def _origins(value: Any) -> tuple[str, ...]:
    """`server.cors`: "*", or a list of origins (scheme://host[:port]); [] turns CORS off."""
    if value == "*":
        return ("*",)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("server.cors: \"*\" or a list of origins such as https://dashboard.city.example")
    for origin in value:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(f"server.cors: {origin!r} is not an origin (scheme://host[:port], no path)")
    return tuple(value)


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
        raise ConfigError(f"{where}: must be a number of seconds from 0 (no limit) to 86400, got {value!r}")
    return float(value)

