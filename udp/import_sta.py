"""`udp import-sta`: copy Things with everything they carry from another SensorThings server into the store.

The source is a SensorThings URL of Things (FROST-Server, istSOS, iot.hamburg.de; nextLinks are followed,
related entities come by `$expand`, Observations per (Multi)Datastream in pages) or a saved JSON page of
Things with expanded entities. Entities are written through the store's deep-insert machinery
(`Store.insert` with drafts from `sensorthings.body`), Observations through `Store.write_observations`.

A map file of source entity → new id makes a re-run create nothing twice; Observations are recognised
by (Datastream, phenomenonTime, result) in the store, so they are never copied twice and the map stays
small however many there are.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from sensorthings.body import BodyError, Draft, Ref, convert_value, parse_entity
from sensorthings.model import (
    DATASTREAM,
    FEATURE_OF_INTEREST,
    LOCATION,
    MULTI_DATASTREAM,
    OBSERVATION,
    OBSERVED_PROPERTY,
    SENSOR,
    THING,
    EntityType,
)
from sensorthings.store.base import COMPLEX_OBSERVATION, Change, Store, StoreError
from sensorthings.store.observations import ObservationRow
from sensorthings.store.schema import TABLES
from sensorthings.times import format_instant, parse_instant

MAP_FORMAT = "udp import-sta map 1"
OM_OBSERVATION = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Observation"
# servers without the MultiDatastream extension refuse the whole request when it is expanded
THINGS_EXPAND_PLAIN = "Locations,Datastreams($expand=Sensor,ObservedProperty)"
THINGS_EXPAND = THINGS_EXPAND_PLAIN + ",MultiDatastreams($expand=Sensor,ObservedProperties)"
# only the FeatureOfInterest's id with each Observation; each feature is fetched once; older servers
# refuse a nested $select, and the last resort is the feature the store derives from the Location
FOI_EXPANDS: tuple[str | None, ...] = ("FeatureOfInterest($select=id)", "FeatureOfInterest", None)
OBSERVATION_PROPS = ("phenomenonTime", "resultTime", "result", "resultQuality", "validTime", "parameters")
ROW_TEMPLATE: dict[str, Any] = {
    "phenomenon_time_start": None, "phenomenon_time_end": None, "result_time": None, "result_type": None,
    "result_number": None, "result_string": None, "result_json": None, "result_quality": None,
    "valid_time_start": None, "valid_time_end": None, "parameters": None, "datastream_id": None,
    "multi_datastream_id": None, "feature_of_interest_id": None,
}
SAVE_EVERY = 2.0  # seconds between map writes while a page is being imported


class NetworkError(RuntimeError):
    """The source could not be reached, even after retrying: the import stops."""


class SourceError(RuntimeError):
    """The source answered one request with an error or with something that is not a SensorThings document."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MapError(ValueError):
    """The map file cannot be used with this store."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `udp import-sta` options."""
    parser.add_argument("source", help="a SensorThings URL of Things (…/v1.1/Things?$filter=…) or a saved JSON page "
                                       "of Things with expanded Locations/Datastreams (.json or .json.gz)")
    parser.add_argument("--store", help="sqlite:///path.db or postgresql://user@host/db (default: the config's store)")
    parser.add_argument("--config", help="config.yml whose store: to write to")
    parser.add_argument("--map", default="import-map.json",
                        help="JSON file of source entity → new id, read and written as the import goes "
                             "(default import-map.json)")
    parser.add_argument("--observations", type=int, metavar="N",
                        help="at most N Observations per (Multi)Datastream, the newest (default: all; 0: none)")
    parser.add_argument("--since", metavar="ISO", help="only Observations whose phenomenonTime starts at or after this")
    parser.add_argument("--follow", action="store_true",
                        help="for a file: follow its @iot.nextLink and read from its server what the file lacks "
                             "(Sensors, ObservedProperties, Locations, all Observations)")
    parser.add_argument("--page-size", type=int, default=1000, metavar="N",
                        help="Observations per request to the source (default 1000)")
    parser.add_argument("--retries", type=int, default=4, help="retries of a failed request (default 4)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the source (default 60)")


def run(args: argparse.Namespace) -> int:
    """Import; 0 when everything was copied, 1 when something failed or the run stopped, 2 for bad arguments."""
    err: TextIO = sys.stderr
    try:
        since = parse_instant(args.since) if args.since else None
    except ValueError as exc:
        print(f"import-sta: --since: {exc}", file=err)
        return 2
    if (args.observations is not None and args.observations < 0) or args.page_size < 1:
        print("import-sta: --observations and --page-size take a number ≥ 0 (≥ 1 for --page-size)", file=err)
        return 2
    store_url = args.store
    if not store_url:
        from udp.config import ConfigError, load_config

        try:
            store_url = load_config(args.config).store
        except ConfigError as exc:
            print(f"config error: {exc}", file=err)
            return 2
    store_url = _absolute_sqlite(store_url)
    try:
        idmap = IdMap.load(Path(args.map), _shown(store_url))
    except MapError as exc:
        print(f"import-sta: {exc}", file=err)
        return 2
    try:
        store = Store.open(store_url)
    except (ValueError, SQLAlchemyError) as exc:
        print(f"import-sta: cannot open the store {_shown(store_url)}: {exc}", file=err)
        return 2
    fetcher = Fetcher(args.retries, args.backoff, args.timeout, err)
    importer = Importer(store, idmap, fetcher, err, limit=args.observations, since=since, page_size=args.page_size)
    code = 0
    try:
        importer.run(args.source, follow=args.follow)
    except NetworkError as exc:
        print(f"import-sta stopped: {exc}. What was imported is kept and {args.map} lists it: "
              "run the same command again to continue.", file=err)
        code = 1
    except SourceError as exc:
        print(f"import-sta stopped: {exc}", file=err)
        code = 1
    except SQLAlchemyError as exc:
        print(f"import-sta stopped: the store {_shown(store_url)} failed: {exc}", file=err)
        code = 1
    except KeyboardInterrupt:
        print("import-sta interrupted; what was imported is kept", file=err)
        code = 130
    finally:
        idmap.save()
        fetcher.close()
        store.close()
    importer.summary(args.source, _shown(store_url), args.map)
    if code == 0 and importer.failures:
        code = 1
    return code


def _absolute_sqlite(url: str) -> str:
    # the map records the store it belongs to: one spelling per file, whatever the working directory
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(url[len("sqlite:///"):]).resolve())
    return url


def _shown(url: str) -> str:
    """A store URL without its password, to print and to keep in the map file."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# -- the map ----------------------------------------------------------------------------------------
@dataclass
class IdMap:
    """Source entity (root/Set(id)) → id in the store, per entity set; saved atomically."""

    path: Path
    store: str
    entities: dict[str, dict[str, int]] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path: Path, store: str) -> IdMap:
        """The map in `path` (empty when the file does not exist); MapError when it is another store's."""
        if not path.exists():
            return cls(path, store)
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise MapError(f"cannot read the map {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != MAP_FORMAT or not isinstance(doc.get("entities"), dict):
            raise MapError(f"{path} is not an import-sta map")
        if doc.get("store") != store:
            # the ids would name other entities, or none: refuse rather than link to the wrong ones
            raise MapError(f"the map {path} belongs to the store {doc.get('store')}, not {store}: "
                           "give another --map for this store")
        return cls(path, store, {k: dict(v) for k, v in doc["entities"].items()})

    def get(self, entity: EntityType, key: str) -> int | None:
        """The id an imported entity has in the store."""
        return self.entities.get(entity.set_name, {}).get(key)

    def put(self, entity: EntityType, key: str, id_: int) -> None:
        """Remember an entity written to the store."""
        self.entities.setdefault(entity.set_name, {})[key] = id_
        self.dirty = True

    def save(self) -> None:
        """Write the file if anything changed (a crash leaves the previous version whole)."""
        if not self.dirty:
            return
        doc = {"format": MAP_FORMAT, "store": self.store, "entities": self.entities}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)
        self.dirty = False


# -- the source -------------------------------------------------------------------------------------
class Fetcher:
    """GETs JSON from the source, retrying network errors and overload with exponential backoff."""

    def __init__(self, retries: int, backoff: float, timeout: float, err: TextIO) -> None:
        self.retries = max(0, retries)
        self.backoff = backoff
        self.err = err
        self.requests = 0
        self.client = httpx.Client(timeout=timeout, follow_redirects=True,
                                   headers={"Accept": "application/json", "User-Agent": "udp-import-sta"})

    def get(self, url: str) -> Any:
        """The JSON at `url`; SourceError for an error answer, NetworkError when retries are exhausted."""
        reason = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                self.requests += 1
                res = self.client.get(url)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if res.status_code == 200:
                    try:
                        return orjson.loads(res.content)
                    except orjson.JSONDecodeError:
                        raise SourceError(f"{url}: the answer is not JSON ({res.headers.get('content-type')})",
                                          200) from None
                if res.status_code != 429 and res.status_code < 500:
                    raise SourceError(f"{url}: HTTP {res.status_code}: {_message(res)}", res.status_code)
                reason = f"HTTP {res.status_code}: {_message(res)}"
                after = res.headers.get("retry-after", "")
                if after.isdigit():
                    wait = max(wait, min(float(after), 60.0))
            if attempt < self.retries:
                print(f"  retrying in {wait:g} s ({attempt + 1}/{self.retries}): {url}: {reason}", file=self.err)
                time.sleep(wait)
        raise NetworkError(f"{url}: {reason} (gave up after {self.retries + 1} attempts)")

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


def _message(res: httpx.Response) -> str:
    try:
        doc = res.json()
    except ValueError:
        return res.text[:200].strip() or res.reason_phrase
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return doc["message"]
    return str(doc)[:200]


def _with_params(url: str, params: dict[str, str], replace: bool = False) -> str:
    """`url` with query options added (kept as they are where the URL has them, unless `replace`)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    have = {k.lower() for k, _ in pairs}
    if replace:
        pairs = [(k, v) for k, v in pairs if k.lower() not in {p.lower() for p in params}]
        have = set()
    pairs += [(k, v) for k, v in params.items() if k.lower() not in have]
    # %20 for spaces and literal $ ( ) , ; = ' : as SensorThings servers expect them
    query = urlencode(pairs, quote_via=quote, safe="$(),;='/:")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _root_of_url(url: str) -> str:
    """The service root of a resource URL: everything up to the version segment (`…/v1.1`)."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    for i in range(len(segments) - 1, -1, -1):
        if segments[i].lower().startswith("v1."):
            path = "/".join(segments[: i + 1])
            break
    else:
        path = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def _key_root(root: str) -> str:
    # a server serves v1.0 and v1.1 with the same ids (iot.hamburg.de, FROST): one entity, one key
    return root[: -len("/v1.0")] + "/v1.1" if root.endswith("/v1.0") else root


def _id_text(value: Any) -> str | None:
    """An id as it appears in a path: `5`, or `'abc'` for a string id; None when there is none."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return str(int(text))  # "@iot.id": "5" and 5 are the same entity
    return "'" + text.replace("'", "''") + "'"


def _where(path: str, doc: Any) -> str:
    link = doc.get("@iot.selfLink") if isinstance(doc, dict) else None
    return f"{path} ({link})" if isinstance(link, str) else path


def _items(doc: dict[str, Any], nav: str) -> list[dict[str, Any]]:
    value = doc.get(nav)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _has_content(doc: Any) -> bool:
    """True when an entity object carries properties, not only an id and links (`$select=id`)."""
    return isinstance(doc, dict) and any(not k.startswith("@iot.") and "@iot." not in k for k in doc)


# -- counts and progress ----------------------------------------------------------------------------
@dataclass
class Tally:
    """What a run did so far."""

    new: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)
    observations: int = 0
    duplicates: int = 0
    started: float = field(default_factory=time.monotonic)

    def entities(self) -> int:
        """Entities other than Observations created or found already imported."""
        return sum(self.new.values()) + sum(self.existing.values())

    def rates(self) -> str:
        """Entities and Observations per second since the start."""
        seconds = max(time.monotonic() - self.started, 1e-6)
        return f"{self.entities() / seconds:,.0f} entities/s, {self.observations / seconds:,.0f} observations/s"

    def line(self) -> str:
        """The counts as one line."""
        order = [e.set_name for e in (THING, LOCATION, DATASTREAM, MULTI_DATASTREAM, SENSOR, OBSERVED_PROPERTY,
                                      FEATURE_OF_INTEREST)]
        parts = []
        for name in order:
            new, old = self.new.get(name, 0), self.existing.get(name, 0)
            if new or old:
                parts.append(f"{name} {new}" + (f" (+{old} already)" if old else ""))
        parts.append(f"Observations {self.observations}" + (f" (+{self.duplicates} already)" if self.duplicates
                                                             else ""))
        return ", ".join(parts)


@dataclass
class Tx:
    """An open write transaction and the entities it created, mapped once it commits."""

    conn: Connection
    changes: list[Change]
    created: dict[tuple[str, str], tuple[EntityType, int]] = field(default_factory=dict)


# -- the import -------------------------------------------------------------------------------------
class Importer:
    """Copies pages of Things, with what they carry, into a store."""

    def __init__(self, store: Store, idmap: IdMap, fetcher: Fetcher, err: TextIO, *, limit: int | None = None,
                 since: datetime | None = None, page_size: int = 1000) -> None:
        self.store = store
        self.map = idmap
        self.fetcher = fetcher
        self.err = err
        self.limit = limit
        self.since = since
        self.page_size = page_size
        self.online = False
        self.failures = 0
        self.tally = Tally()
        self.verified: set[tuple[str, int]] = set()
        self.foi_expand = 0  # index into FOI_EXPANDS: the richest form the source accepts
        self.last_save = time.monotonic()
        self.last_report = time.monotonic()

    # -- reporting ---------------------------------------------------------------------------------
    def fail(self, where: str, reason: str) -> None:
        """Report one thing that was not imported: what, where, why."""
        self.failures += 1
        print(f"  failed: {where}: {reason}", file=self.err)

    def warn(self, where: str, reason: str) -> None:
        """Report something imported with a change."""
        print(f"  warning: {where}: {reason}", file=self.err)

    def summary(self, source: str, store: str, map_path: str) -> None:
        """The closing line."""
        seconds = time.monotonic() - self.tally.started
        print(f"import-sta: {source} → {store} in {seconds:.1f} s: {self.tally.line()}; {self.failures} failed; "
              f"{self.tally.rates()}; {self.fetcher.requests} requests; map {map_path}", file=self.err)

    def _maybe_save(self) -> None:
        if time.monotonic() - self.last_save >= SAVE_EVERY:
            self.map.save()
            self.last_save = time.monotonic()

    # -- pages -------------------------------------------------------------------------------------
    def run(self, source: str, follow: bool = False) -> None:
        """Import every page of Things the source gives."""
        for n, (label, things, root) in enumerate(self._pages(source, follow), start=1):
            for i, thing in enumerate(things):
                self.thing(thing, root or self._file_root(thing, source), f"{label} value[{i}]")
            self.map.save()
            self.last_save = time.monotonic()
            print(f"page {n}: {len(things)} Things from {label}; so far {self.tally.line()}; "
                  f"{self.failures} failed; {self.tally.rates()}", file=self.err)

    def _pages(self, source: str, follow: bool) -> Iterator[tuple[str, list[dict[str, Any]], str | None]]:
        if source.startswith(("http://", "https://")):
            self.online = True
            url: str | None = self._things_url(source)
            root = _root_of_url(source)
            first = True
            while url:
                try:
                    doc = self.fetcher.get(url)
                except SourceError as exc:
                    if not (first and exc.status is not None and 400 <= exc.status < 500
                            and THINGS_EXPAND in _expand_of(url)):
                        raise
                    url = _with_params(url, {"$expand": THINGS_EXPAND_PLAIN}, replace=True)
                    doc = self.fetcher.get(url)
                first = False
                yield url, _things_of(doc, url), root
                url = doc.get("@iot.nextLink") if isinstance(doc, dict) else None
            return
        self.online = follow
        path = Path(source)
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            doc = orjson.loads(raw)
        except (OSError, orjson.JSONDecodeError, gzip.BadGzipFile) as exc:
            raise SourceError(f"cannot read {source}: {exc}") from None
        yield source, _things_of(doc, source), None
        url = doc.get("@iot.nextLink") if follow and isinstance(doc, dict) else None
        while url:
            page = self.fetcher.get(url)
            yield url, _things_of(page, url), _root_of_url(url)
            url = page.get("@iot.nextLink") if isinstance(page, dict) else None

    @staticmethod
    def _things_url(url: str) -> str:
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        last = path.rsplit("/", 1)[-1]
        if last.lower().startswith("v1."):
            path += "/Things"
        elif not last.startswith("Things"):
            raise SourceError(f"{url}: import-sta reads Things: give a URL such as …/v1.1/Things?$filter=…")
        url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
        return _with_params(url, {"$expand": THINGS_EXPAND})

    @staticmethod
    def _file_root(thing: dict[str, Any], source: str) -> str:
        link = thing.get("@iot.selfLink")
        if isinstance(link, str) and link.startswith(("http://", "https://")):
            return _root_of_url(link)
        return Path(source).resolve().as_uri()

    def _get_all(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            doc = self.fetcher.get(next_url)
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), list):
                raise SourceError(f"{next_url}: not a SensorThings collection")
            out += [v for v in doc["value"] if isinstance(v, dict)]
            next_url = doc.get("@iot.nextLink")
        return out

    # -- keys and drafts ---------------------------------------------------------------------------
    @staticmethod
    def key(entity: EntityType, doc: dict[str, Any], root: str, parent: str | None = None) -> str:
        """The map key of a source entity: `root/Set(id)`; a content hash where the source gives no id."""
        id_ = _id_text(doc.get("@iot.id"))
        if id_ is not None:
            return f"{_key_root(root)}/{entity.set_name}({id_})"
        own = {k: v for k, v in doc.items() if k in entity.prop_by_name}
        digest = hashlib.sha1(orjson.dumps(own, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        return f"{parent or _key_root(root)}/{entity.set_name}#{digest}"

    def _mapped(self, tx: Tx, entity: EntityType, key: str) -> int | None:
        made = tx.created.get((entity.set_name, key))
        if made is not None:
            return made[1]
        id_ = self.map.get(entity, key)
        if id_ is None:
            return None
        if (entity.set_name, id_) in self.verified or self.store.exists(tx.conn, entity, id_):
            self.verified.add((entity.set_name, id_))
            return id_
        return None  # deleted from the store since: made again, and the map entry replaced

    def draft(self, entity: EntityType, doc: dict[str, Any], where: str) -> Draft:
        """A draft of an entity's own properties, with defaults for what real servers leave out."""
        body = {k: v for k, v in doc.items() if k in entity.prop_by_name}
        for prop in entity.props:
            if prop.required and body.get(prop.name) is None:
                default = _default(entity, prop.name, doc)
                if default is not None:
                    body[prop.name] = default
        for name in list(body):
            prop = entity.prop_by_name[name]
            if prop.required:
                continue
            try:
                convert_value(entity, name, body[name], {})
            except ValueError as exc:
                # an optional property the store cannot take: keep the entity, say what was left out
                self.warn(where, f"{name} left out: {exc}")
                del body[name]
        draft = parse_entity(entity, body, implied=frozenset(n.name for n in entity.navs))
        assert isinstance(draft, Draft)
        return draft

    def _insert(self, tx: Tx, draft: Draft, key: str) -> int:
        new_id = self.store.insert(tx.conn, draft, {}, tx.changes)
        tx.created[(draft.entity.set_name, key)] = (draft.entity, new_id)
        return new_id

    def _commit(self, tx: Tx) -> None:
        for (set_name, key), (entity, id_) in tx.created.items():
            self.map.put(entity, key, id_)
            self.verified.add((set_name, id_))
            self.tally.new[set_name] = self.tally.new.get(set_name, 0) + 1

    def _existing(self, entity: EntityType) -> None:
        self.tally.existing[entity.set_name] = self.tally.existing.get(entity.set_name, 0) + 1

    # -- Things and what they carry ----------------------------------------------------------------
    def thing(self, doc: dict[str, Any], root: str, path: str) -> None:
        """Import one Thing with its Locations, (Multi)Datastreams, Sensors, ObservedProperties, Observations.

        `path` says where the Thing is in the source (`page value[3]`), for messages.
        """
        where = _where(path, doc)
        key = self.key(THING, doc, root)
        if self.online:
            self._complete(doc, key, root, where)
        streams: list[tuple[EntityType, int, dict[str, Any], str, str]] = []
        try:
            with self.store.write() as (conn, changes):
                tx = Tx(conn, changes)
                thing_id = self._thing_row(tx, doc, key, root, path)
                if thing_id is None:
                    return
                for entity, nav in ((DATASTREAM, "Datastreams"), (MULTI_DATASTREAM, "MultiDatastreams")):
                    for j, ds in enumerate(_items(doc, nav)):
                        ds_path = f"{path}.{nav}[{j}]"
                        ds_key = self.key(entity, ds, root, key)
                        sid = self._stream(tx, entity, ds, ds_key, thing_id, root, _where(ds_path, ds))
                        if sid is not None:
                            streams.append((entity, sid, ds, ds_key, ds_path))
                if not self.online and self.limit != 0:
                    # a saved page's Observations travel with their Thing: one transaction, not one per stream
                    for entity, sid, ds, ds_key, ds_path in streams:
                        self._observations(entity, sid, ds, ds_key, root, ds_path, tx)
        except (SQLAlchemyError, StoreError) as exc:
            if isinstance(exc, OperationalError):
                raise  # the store is down: nothing after would fare better
            self.fail(where, f"the Thing and what it carries were not written: {exc}")
            return
        self._commit(tx)
        self._maybe_save()
        if not self.online or self.limit == 0:
            return
        for entity, sid, ds, ds_key, ds_path in streams:
            self._observations(entity, sid, ds, ds_key, root, ds_path)

    def _thing_row(self, tx: Tx, doc: dict[str, Any], key: str, root: str, path: str) -> int | None:
        where = _where(path, doc)
        thing_id = self._mapped(tx, THING, key)
        locations: list[tuple[str, Draft | Ref]] = []
        for j, loc in enumerate(_items(doc, "Locations")):
            loc_where = _where(f"{path}.Locations[{j}]", loc)
            loc_key = self.key(LOCATION, loc, root, key)
            loc_id = self._mapped(tx, LOCATION, loc_key)
            if loc_id is not None:
                self._existing(LOCATION)
                locations.append((loc_key, Ref(LOCATION, loc_id)))
                continue
            try:
                locations.append((loc_key, self.draft(LOCATION, loc, loc_where)))
            except BodyError as exc:
                self.fail(loc_where, str(exc))
        if thing_id is None:
            try:
                draft = self.draft(THING, doc, where)
            except BodyError as exc:
                self.fail(where, f"{exc}; its Datastreams and Observations are skipped")
                return None
            # one deep insert: the Thing, its new Locations, links to known ones and the HistoricalLocation
            draft.links["Locations"] = [item for _, item in locations]
            thing_id = self._insert(tx, draft, key)
            for loc_key, item in locations:
                if isinstance(item, Draft):
                    assert item.id is not None
                    tx.created[(LOCATION.set_name, loc_key)] = (LOCATION, item.id)
            return thing_id
        self._existing(THING)
        for loc_key, item in locations:
            if isinstance(item, Ref):
                self.store.add_link(tx.conn, THING, thing_id, "Locations", item.id)
            else:
                item.links["Things"] = [Ref(THING, thing_id)]
                self._insert(tx, item, loc_key)
        return thing_id

    def _stream(self, tx: Tx, entity: EntityType, doc: dict[str, Any], key: str, thing_id: int, root: str,
                where: str) -> int | None:
        found = self._mapped(tx, entity, key)
        if found is not None:
            self._existing(entity)
            return found
        if isinstance(doc.get("@import.failed"), str):
            self.fail(where, doc["@import.failed"])
            return None
        try:
            draft = self.draft(entity, doc, where)
            sensor = self._related(tx, SENSOR, doc.get("Sensor"), root, f"{where}.Sensor")
            draft.links["Thing"] = [Ref(THING, thing_id)]
            draft.links["Sensor"] = [Ref(SENSOR, sensor)]
            if entity is DATASTREAM:
                prop = self._related(tx, OBSERVED_PROPERTY, doc.get("ObservedProperty"), root,
                                     f"{where}.ObservedProperty")
                draft.links["ObservedProperty"] = [Ref(OBSERVED_PROPERTY, prop)]
            else:
                props = _items(doc, "ObservedProperties")
                if not props:
                    raise BodyError("a MultiDatastream needs its ObservedProperties, and the source gave none")
                draft.links["ObservedProperties"] = [
                    Ref(OBSERVED_PROPERTY, self._related(tx, OBSERVED_PROPERTY, p, root,
                                                         f"{where}.ObservedProperties[{k}]"))
                    for k, p in enumerate(props)]
            return self._insert(tx, draft, key)
        except (BodyError, StoreError) as exc:
            # raised before the (Multi)Datastream's row is written: the rest of the Thing goes on
            self.fail(where, f"{exc}; its Observations are skipped")
            return None

    def _related(self, tx: Tx, entity: EntityType, doc: Any, root: str, where: str) -> int:
        """A Sensor or ObservedProperty: the mapped one, a new one, or the source's placeholder."""
        if isinstance(doc, dict):
            key = self.key(entity, doc, root)
            found = self._mapped(tx, entity, key)
            if found is not None:
                self._existing(entity)
                return found
            if _has_content(doc):
                return self._insert(tx, self.draft(entity, doc, _where(where, doc)), key)
        # the source did not give it (a saved page without $expand): one stand-in per source, named so
        key = f"{_key_root(root)}#unknown-{entity.name}"
        found = self._mapped(tx, entity, key)
        if found is not None:
            return found
        body = _placeholder(entity, root)
        return self._insert(tx, self.draft(entity, body, where), key)

    # -- completing what a page lacks (online only) ------------------------------------------------
    def _complete(self, thing: dict[str, Any], key: str, root: str, where: str) -> None:
        self._complete_set(thing, "Locations", None, where, optional=False)
        self._complete_set(thing, "Datastreams", "Sensor,ObservedProperty", where, optional=False)
        self._complete_set(thing, "MultiDatastreams", "Sensor,ObservedProperties", where, optional=True)
        # a (Multi)Datastream imported before needs only its Observations
        for ds in _items(thing, "Datastreams"):
            if self.map.get(DATASTREAM, self.key(DATASTREAM, ds, root, key)) is None:
                for nav in ("Sensor", "ObservedProperty"):
                    self._complete_one(ds, nav)
        for md in _items(thing, "MultiDatastreams"):
            if self.map.get(MULTI_DATASTREAM, self.key(MULTI_DATASTREAM, md, root, key)) is None:
                self._complete_one(md, "Sensor")
                self._complete_set(md, "ObservedProperties", None, where, optional=False)

    def _complete_set(self, doc: dict[str, Any], nav: str, expand: str | None, where: str, optional: bool) -> None:
        more = doc.get(f"{nav}@iot.nextLink")
        try:
            if isinstance(doc.get(nav), list):
                if isinstance(more, str):
                    doc[nav] = doc[nav] + self._get_all(more)
                return
            link = doc.get(f"{nav}@iot.navigationLink")
            if not isinstance(link, str) and not optional and isinstance(doc.get("@iot.selfLink"), str):
                link = f"{doc['@iot.selfLink']}/{nav}"
            if not isinstance(link, str):
                return
            doc[nav] = self._get_all(_with_params(link, {"$expand": expand}) if expand else link)
        except SourceError as exc:
            if optional and exc.status is not None and 400 <= exc.status < 500:
                return  # a server without the MultiDatastream extension
            if nav == "ObservedProperties":
                doc["@import.failed"] = f"its ObservedProperties could not be read: {exc}"
            else:
                self.fail(where, f"its {nav} could not be read, imported without them: {exc}")

    def _complete_one(self, doc: dict[str, Any], nav: str) -> None:
        if _has_content(doc.get(nav)):
            return
        link = doc.get(f"{nav}@iot.navigationLink")
        if not isinstance(link, str) and isinstance(doc.get("@iot.selfLink"), str):
            link = f"{doc['@iot.selfLink']}/{nav}"
        if not isinstance(link, str):
            return
        try:
            got = self.fetcher.get(link)
        except SourceError as exc:
            doc["@import.failed"] = f"its {nav} could not be read: {exc}"
            return
        if isinstance(got, dict):
            doc[nav] = got

    # -- Observations ------------------------------------------------------------------------------
    def _observations(self, entity: EntityType, stream_id: int, doc: dict[str, Any], key: str, root: str,
                      path: str, tx: Tx | None = None) -> None:
        """A (Multi)Datastream's Observations: those in the page offline, else read page by page from the source."""
        where = _where(path, doc)
        if not self.online:
            items = [o for o in _items(doc, "Observations") if self._after_since(o)]
            if self.limit is not None:
                items = items[: self.limit]
            if items:
                self._observation_page(entity, stream_id, doc, key, root, items, path, tx)
            return
        id_ = _id_text(doc.get("@iot.id"))
        link = f"{root}/{entity.set_name}({id_})/Observations" if id_ is not None \
            else doc.get("Observations@iot.navigationLink")
        if not isinstance(link, str):
            self.fail(where, "no id or Observations link to read its Observations from")
            return
        params = {"$top": str(min(self.page_size, self.limit or self.page_size)),
                  "$orderby": "phenomenonTime desc"}
        if self.since is not None:
            params["$filter"] = f"phenomenonTime ge {format_instant(self.since)}"
        taken = 0
        url: str | None = None
        while self.limit is None or taken < self.limit:
            try:
                if url is None:
                    url, page = self._first_observations(link, params)
                else:
                    page = self.fetcher.get(url)
            except SourceError as exc:
                self.fail(where, f"Observations not read: {exc}")
                return
            if not isinstance(page, dict) or not isinstance(page.get("value"), list):
                self.fail(url, "not a SensorThings collection of Observations")
                return
            items = [o for o in page["value"] if isinstance(o, dict) and self._after_since(o)]
            if self.limit is not None:
                items = items[: self.limit - taken]
            taken += len(items)
            if items:
                self._observation_page(entity, stream_id, doc, key, root, items, path)
            url = page.get("@iot.nextLink")
            if not url:
                return

    def _first_observations(self, link: str, params: dict[str, str]) -> tuple[str, Any]:
        while True:
            expand = FOI_EXPANDS[self.foi_expand]
            url = _with_params(link, {**params, **({"$expand": expand} if expand else {})})
            try:
                return url, self.fetcher.get(url)
            except SourceError as exc:
                if exc.status != 400 or self.foi_expand == len(FOI_EXPANDS) - 1:
                    raise
                self.foi_expand += 1

    def _after_since(self, obs: dict[str, Any]) -> bool:
        if self.since is None:
            return True
        text = obs.get("phenomenonTime") or obs.get("resultTime")
        try:
            return isinstance(text, str) and parse_instant(text.split("/")[0]) >= self.since
        except ValueError:
            return True  # the row reports its own bad time

    def _observation_row(self, obs: dict[str, Any], where: str) -> dict[str, Any] | None:
        if "result" not in obs:
            self.fail(where, "the Observation has no result")
            return None
        values = dict(ROW_TEMPLATE)
        try:
            for name in OBSERVATION_PROPS:
                if name in obs:
                    convert_value(OBSERVATION, name, obs[name], values)
        except ValueError as exc:
            self.fail(where, str(exc))
            return None
        if values["phenomenon_time_start"] is None:
            if values["result_time"] is None:
                self.fail(where, "the Observation has neither phenomenonTime nor resultTime")
                return None
            values["phenomenon_time_start"] = values["result_time"]
        return values

    def _observation_page(self, entity: EntityType, stream_id: int, doc: dict[str, Any], key: str, root: str,
                          items: list[dict[str, Any]], path: str, tx: Tx | None = None) -> None:
        """Write a page of a (Multi)Datastream's Observations, in `tx` or in a transaction of their own."""
        column = "datastream_id" if entity is DATASTREAM else "multi_datastream_id"
        rows: list[tuple[dict[str, Any], Any, str]] = []
        for k, obs in enumerate(items):
            obs_where = _where(f"{path}.Observations[{k}]", obs)
            row = self._observation_row(obs, obs_where)
            if row is not None:
                row[column] = stream_id
                rows.append((row, obs.get("FeatureOfInterest"), obs_where))
        if not rows:
            return
        features = self._fetch_features(rows, root)
        if tx is not None:
            written = self._write_observations(tx, entity, stream_id, doc, key, root, rows, features, path)
        else:
            with self.store.write() as (conn, changes):
                tx = Tx(conn, changes)
                written = self._write_observations(tx, entity, stream_id, doc, key, root, rows, features, path)
            self._commit(tx)
        self.tally.observations += written
        self._maybe_save()
        if time.monotonic() - self.last_report >= SAVE_EVERY:
            self.last_report = time.monotonic()
            print(f"  … {self.tally.observations} Observations so far ({self.tally.rates()}), now {path}",
                  file=self.err)

    def _write_observations(self, tx: Tx, entity: EntityType, stream_id: int, doc: dict[str, Any], key: str,
                            root: str, rows: list[tuple[dict[str, Any], Any, str]],
                            features: dict[str, dict[str, Any]], path: str) -> int:
        column = "datastream_id" if entity is DATASTREAM else "multi_datastream_id"
        fresh = self._new_only(tx.conn, column, stream_id, [r for r, _, _ in rows])
        self.tally.duplicates += len(rows) - len(fresh)
        default: list[int | None] = []
        good: list[ObservationRow] = []
        places: list[str] = []
        for row, foi, obs_where in rows:
            if id(row) not in fresh:
                continue
            foi_id = self._feature(tx, foi, features, root, obs_where)
            if foi_id is None:
                if not default:
                    default.append(self._default_feature(tx, entity, stream_id, doc, key, _where(path, doc)))
                foi_id = default[0]
            if foi_id is None:
                self.fail(obs_where, "no FeatureOfInterest: the source gave none, the Thing has no Location "
                                     "and the Datastream no observedArea")
                continue
            row["feature_of_interest_id"] = foi_id
            good.append(ObservationRow(**row))
            places.append(obs_where)
        ids = self.store.write_observations(tx.conn, good, tx.changes,
                                            refused=lambda i, reason: self.fail(places[i], reason))
        return sum(1 for i in ids if i is not None)

    def _new_only(self, conn: Connection, column: str, stream_id: int, rows: list[dict[str, Any]]) -> set[int]:
        """The rows (by id()) whose (phenomenonTime, result) the (Multi)Datastream does not have yet."""
        obs = TABLES["observations"]
        starts = [r["phenomenon_time_start"] for r in rows]
        # pages come in time order: one index range per page, where a list of 1,000 instants costs PostgreSQL
        # more to plan than to run
        q = select(obs.c.phenomenon_time_start, obs.c.phenomenon_time_end, obs.c.result_type, obs.c.result_number,
                   obs.c.result_string, obs.c.result_json).where(
            obs.c[column] == stream_id, obs.c.phenomenon_time_start.between(min(starts), max(starts)))
        have = {_identity(dict(r)) for r in conn.execute(q).mappings()}
        return {id(r) for r in rows if _identity(r) not in have}

    def _fetch_features(self, rows: list[tuple[dict[str, Any], Any, str]], root: str) -> dict[str, dict[str, Any]]:
        """FeaturesOfInterest named only by id and not imported yet, read before the write transaction."""
        out: dict[str, dict[str, Any]] = {}
        if not self.online:
            return out
        for _, foi, where in rows:
            if not isinstance(foi, dict) or _has_content(foi):
                continue
            key = self.key(FEATURE_OF_INTEREST, foi, root)
            id_ = _id_text(foi.get("@iot.id"))
            if key in out or id_ is None or self.map.get(FEATURE_OF_INTEREST, key) is not None:
                continue
            link = foi.get("@iot.selfLink") if isinstance(foi.get("@iot.selfLink"), str) \
                else f"{root}/FeaturesOfInterest({id_})"
            try:
                got = self.fetcher.get(link)
            except SourceError as exc:
                self.warn(where, f"its FeatureOfInterest could not be read, the Location's is used: {exc}")
                got = None
            if isinstance(got, dict):
                out[key] = got
        return out

    def _feature(self, tx: Tx, foi: Any, fetched: dict[str, dict[str, Any]], root: str, where: str) -> int | None:
        if not isinstance(foi, dict):
            return None
        key = self.key(FEATURE_OF_INTEREST, foi, root)
        found = self._mapped(tx, FEATURE_OF_INTEREST, key)
        if found is not None:
            return found
        body = foi if _has_content(foi) else fetched.get(key)
        if body is None:
            return None
        try:
            return self._insert(tx, self.draft(FEATURE_OF_INTEREST, body, _where(f"{where}.FeatureOfInterest",
                                                                                  body)), key)
        except BodyError as exc:
            self.warn(where, f"its FeatureOfInterest cannot be stored ({exc}); the Location's is used")
            return None

    def _default_feature(self, tx: Tx, entity: EntityType, stream_id: int, doc: dict[str, Any], key: str,
                         where: str) -> int | None:
        """The feature the store derives from the Thing's Location, else one from the observedArea."""
        try:
            return self.store.feature_for(tx.conn, stream_id if entity is DATASTREAM else None,
                                          stream_id if entity is MULTI_DATASTREAM else None)
        except StoreError:
            pass
        area = doc.get("observedArea")
        if not isinstance(area, dict):
            return None
        area_key = f"{key}#observedArea"
        found = self._mapped(tx, FEATURE_OF_INTEREST, area_key)
        if found is not None:
            return found
        body = {"name": doc.get("name") or "observed area", "encodingType": "application/geo+json", "feature": area,
                "description": f"the observed area of {doc.get('@iot.selfLink') or where}, whose Thing has no "
                               "Location"}
        try:
            return self._insert(tx, self.draft(FEATURE_OF_INTEREST, body, where), area_key)
        except BodyError as exc:
            self.warn(where, f"no FeatureOfInterest from its observedArea: {exc}")
            return None


def _things_of(doc: Any, where: str) -> list[dict[str, Any]]:
    """The Things of a page: `{"value": [...]}`, a bare list, or one Thing."""
    if isinstance(doc, dict) and isinstance(doc.get("value"), list):
        return [t for t in doc["value"] if isinstance(t, dict)]
    if isinstance(doc, list):
        return [t for t in doc if isinstance(t, dict)]
    if isinstance(doc, dict) and ("@iot.id" in doc or "name" in doc):
        return [doc]
    raise SourceError(f"{where}: not a SensorThings page of Things (no \"value\" array)")


def _expand_of(url: str) -> str:
    for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if k.lower() == "$expand":
            return v
    return ""


def _default(entity: EntityType, name: str, doc: dict[str, Any]) -> Any:
    """What stands in for a required property a real server left out or sent as null."""
    if name == "name":
        return f"{entity.name} {doc['@iot.id']}" if doc.get("@iot.id") is not None else entity.name
    if name in ("description", "definition", "metadata"):
        return ""
    if name == "encodingType":
        return "application/geo+json" if entity in (LOCATION, FEATURE_OF_INTEREST) else "text/plain"
    if name == "observationType":
        return COMPLEX_OBSERVATION if entity is MULTI_DATASTREAM else OM_OBSERVATION
    if name == "unitOfMeasurement":
        return {"name": None, "symbol": None, "definition": None}
    return None


def _placeholder(entity: EntityType, root: str) -> dict[str, Any]:
    said = f"{root} did not give the {entity.name} of these Datastreams (import-sta)"
    if entity is SENSOR:
        return {"name": "unknown sensor", "description": said, "encodingType": "text/plain", "metadata": ""}
    return {"name": "unknown observed property", "definition": "", "description": said}


def _identity(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes an Observation the same one again: its time and its result."""
    value = row["result_json"]
    return (row["phenomenon_time_start"], row["phenomenon_time_end"], row["result_type"], row["result_number"],
            row["result_string"], orjson.dumps(value, option=orjson.OPT_SORT_KEYS) if value is not None else None)
