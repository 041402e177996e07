"""Citizen feedback (config.yml `feedback:`): anyone sends a place, a category and a text (OGC API Features Part 4,
`POST /ogcapi/collections/feedback/items`); moderators publish, reject and answer it (PATCH, PUT, DELETE). Kept in
the platform's store, served as the collection `feedback` with the SQL of every stored table.

The public sees published items and their answers, never the contact nor who wrote; moderators see everything.
An item's area is the name of the `areas` polygon it lies in, joined when it is sent.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import shapely
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from features.cql_sql import PostgisSql, SqliteSql
from features.request import ItemsQuery
from features.source import Author, Page, SourceUnavailable, WriteRejected, encode_feature
from features.spec import CollectionSpec, SpecError
from provider_plugins.areas import Areas
from provider_plugins.sql_table import Layout, SqlTableSource, wkb_geojson
from sensorthings.store.base import Store
from sensorthings.store.schema import GEOMETRY
from sensorthings.store.sqlite import rtree_table

COLLECTION = "feedback"
STATUSES = ("received", "published", "rejected", "in progress", "answered")
PUBLIC = ("published", "in progress", "answered")  # what anyone sees: published, and what became of it since
# the moves a moderator may make from each status
MOVES = {"received": {"published", "rejected"}, "published": {"in progress", "answered", "rejected"},
         "in progress": {"answered", "rejected"}, "answered": {"in progress"}, "rejected": {"published"}}
MAX_TEXT = 2000
MAX_SHORT = 200  # contact, about, department
_DATASTREAM = re.compile(r"Datastreams\(\d{1,18}\)")
MAX_SPAN = 0.02  # a polygon at most this many degrees across (about 2 km): a place, not a district
KEYS = ("title", "categories", "areas", "moderation", "rate", "extent")


@dataclass(frozen=True)
class FeedbackSpec:
    """config.yml `feedback:`."""

    categories: tuple[str, ...]
    title: str = "Tell the city"
    areas_id: str | None = None  # a polygon collection naming each item's area …
    moderation: bool = True  # new items wait for a moderator
    rate: int = 20  # submissions per client without an account …
    per_s: float = 60.0  # … in this many seconds
    extent: tuple[float, float, float, float] | None = None  # where items may be; else the areas' extent
    areas: CollectionSpec | None = None  # … as the configuration declares it (an indicator's areas, too)
    area_name: str | None = None  # its column naming the areas; None: as the indicators guess it


def parse_feedback(body: Any) -> FeedbackSpec:
    """`feedback:` of config.yml (SpecError naming the key)."""
    if not isinstance(body, dict):
        raise SpecError("feedback: a mapping with categories, and title, areas, moderation, rate, extent")
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise SpecError(f"feedback.{unknown[0]}: not a key of feedback ({', '.join(KEYS)})")
    cats = body.get("categories")
    if not (isinstance(cats, list) and cats and all(isinstance(c, str) and c.strip() for c in cats)):
        raise SpecError("feedback.categories: a list of category names")
    rate, per = 20, 60.0
    if "rate" in body:
        text = str(body["rate"])
        count, _, unit = text.partition("/")
        seconds = {"second": 1.0, "minute": 60.0, "hour": 3600.0}.get(unit.strip())
        if not count.strip().isdigit() or int(count) < 1 or seconds is None:
            raise SpecError(f"feedback.rate: {text!r} is not N/second, N/minute or N/hour")
        rate, per = int(count), seconds
    extent = body.get("extent")
    if extent is not None and not (isinstance(extent, list) and len(extent) == 4
                                   and all(isinstance(v, int | float) for v in extent)
                                   and extent[0] < extent[2] and extent[1] < extent[3]):
        raise SpecError("feedback.extent: [west, south, east, north] in degrees")
    areas = body.get("areas")
    if areas is not None and not isinstance(areas, str):
        raise SpecError("feedback.areas: the id of a polygon collection")
    return FeedbackSpec(tuple(c.strip() for c in cats), str(body.get("title", "Tell the city")), areas,
                        bool(body.get("moderation", True)), rate, per,
                        tuple(float(v) for v in extent) if extent else None)  # type: ignore[arg-type]


def create_table(store: Store) -> Table:
    """The feedback table in the store, made when missing (with its R-tree on SQLite, its GiST index on
    PostgreSQL)."""
    postgis = store.dialect.name == "postgresql"
    table = feedback_table(postgis)
    try:
        with store.engine.begin() as conn:
            table.create(conn, checkfirst=True)
    except DBAPIError:  # another worker made it at the same moment
        with store.engine.connect() as conn:
            if not store.engine.dialect.has_table(conn, COLLECTION):
                raise
    with store.engine.begin() as conn:
        if postgis:
            conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS "{COLLECTION}_g" ON "{COLLECTION}" USING gist (g)')
        else:
            conn.exec_driver_sql(f'CREATE VIRTUAL TABLE IF NOT EXISTS "{COLLECTION}_rtree" '
                                 "USING rtree(id, minx, maxx, miny, maxy)")
    return table


def feedback_table(postgis: bool) -> Table:
    """The table the items are kept in (SQLite: WKB and its bounds, with an R-tree beside it)."""
    cols = [Column("id", Integer, primary_key=True, autoincrement=True),
            Column("created", DateTime(timezone=True), nullable=False, index=True),
            Column("category", String(200), nullable=False),
            Column("text", Text, nullable=False),
            Column("contact", String(MAX_SHORT)),
            Column("about", String(MAX_SHORT)),
            Column("status", String(20), nullable=False, index=True),
            Column("response", Text),
            Column("department", String(MAX_SHORT)),
            Column("answered", DateTime(timezone=True)),
            Column("area", String(200)),
            Column("client", String(40)),  # a hash of the sender's address: the rate limit, nothing shown
            Column("g", GEOMETRY if postgis else LargeBinary, nullable=False)]
    if not postgis:
        cols += [Column(b, Float) for b in ("x0", "y0", "x1", "y1")]
    return Table(COLLECTION, MetaData(), *cols)


class FeedbackSource(SqlTableSource):
    """The feedback collection: its two views, and what citizens and moderators write."""

    cache_control = "private, no-cache"  # a moderator's view must stay out of shared caches
    write_roles = {"POST": None, "PUT": "moderate", "PATCH": "moderate", "DELETE": "moderate"}

    def __init__(self, spec: FeedbackSpec, store: Store, areas: Areas | None,
                 collections: Collection[str] = ()) -> None:
        self.id, self.title = COLLECTION, spec.title
        self.description = "What citizens told the city, and the city's answers"
        self.keywords = ("feedback", "participation")
        self.spec = spec
        self.store = store
        self.areas = areas
        self.collections = collections  # the ids an item may be `about`
        self.postgis = store.dialect.name == "postgresql"
        self.table = create_table(store)
        self.listeners: list[Callable[[str, bytes], None]] = []  # (topic, payload) after each commit
        c = self.table.c
        spatial: Any = PostgisSql(4326) if self.postgis else SqliteSql(
            rtree_table(f"{COLLECTION}_rtree"), c.id, (c.x0, c.y0, c.x1, c.y1), False)
        public = {"category": c.category, "text": c.text, "status": c.status, "response": c.response,
                  "department": c.department, "area": c.area, "about": c.about, "created": c.created,
                  "answered": c.answered}
        self._public = Layout(self.table, public, c.id, c.g, 4326, "created", spatial,
                              scope=c.status.in_(PUBLIC))
        self._moderated = Layout(self.table, {**public, "contact": c.contact}, c.id, c.g, 4326, "created", spatial)
        self._lock = threading.Lock()

    # -- the two views ---------------------------------------------------------------------------------------
    def search(self, q: ItemsQuery) -> Page:
        """A page of the requester's view."""
        try:
            return self._search(self.layout_for(q.moderator), q)
        except DBAPIError as exc:
            raise self.unavailable(exc) from None

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One item of the requester's view."""
        try:
            return self._feature(self.layout_for(q.moderator), fid, q)
        except DBAPIError as exc:
            raise self.unavailable(exc) from None

    # -- what SqlTableSource asks ------------------------------------------------------------------------
    def layout(self, fresh: bool = False) -> Layout:
        """The public view (a moderator's query asks for the other: `layout_for`)."""
        return self._public

    def layout_for(self, moderator: bool) -> Layout:
        """The view a requester gets."""
        return self._moderated if moderator else self._public

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """The public view's properties, a category and a status each one of its list (JSON Schema `enum`, in the
        queryables and the schema), so that a client's form offers what the server takes without asking elsewhere."""
        out = super().fields
        out["category"] = {**out["category"], "enum": list(self.spec.categories)}
        out["status"] = {**out["status"], "enum": list(STATUSES)}
        return out

    def connect(self) -> Any:
        """A read connection to the store."""
        return self.store.read()

    def compose(self, t: Layout, q: ItemsQuery) -> tuple[Sequence[Any], Callable[[Sequence[Any]], list[bytes]]]:
        """SQLite: the Features made here from the columns (times as UTC ISO 8601)."""
        names = list(t.columns) if q.properties is None else [n for n in q.properties if n in t.columns]

        def encode(rows: Sequence[Any]) -> list[bytes]:
            geo = wkb_geojson([r[1] for r in rows], q)
            # (a page's rows carry its sort marks after these columns)
            return [encode_feature(r[0], g, {n: _plain(v) for n, v in zip(names, r[2:2 + len(names)], strict=True)})
                    for r, g in zip(rows, geo, strict=True)]

        return [t.key, t.geom, *(t.columns[n] for n in names)], encode

    def unfiltered_count(self, conn: Connection, layout: Layout) -> tuple[int, bool] | None:
        """Counted: the public view always filters."""
        return None

    def unavailable(self, exc: DBAPIError) -> Exception:
        """503: the store is down."""
        return SourceUnavailable(f"collection {COLLECTION!r}: the store cannot be read ({str(exc.orig).strip()})")

    @property
    def storage_crs(self) -> int | None:
        """CRS84."""
        return None

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """Where items may be."""
        return self._extent()

    def etag(self) -> str:
        """Unknown in advance (items come and change): the body's hash."""
        return ""

    # -- writes ------------------------------------------------------------------------------------------
    def create(self, body: bytes, author: Author) -> tuple[str, bytes]:
        """A citizen's new item: its id and the Feature as the sender may see it (WriteRejected says why not)."""
        doc = _feature(body)
        props = doc.get("properties") or {}
        if not isinstance(props, dict):
            raise WriteRejected(400, "properties: an object")
        extra = sorted(set(props) - {"category", "text", "contact", "about"})
        if extra:
            raise WriteRejected(400, f"properties.{extra[0]}: not for a citizen to set (category, text, contact, "
                                     "about)")
        geom = self._geometry(doc.get("geometry"))
        category = self._category(props.get("category"))
        text = _text(props.get("text"), "text", MAX_TEXT, required=True)
        contact = _text(props.get("contact"), "contact", MAX_SHORT)
        about = self._about(props.get("about"))
        now = datetime.now(UTC)
        client = hashlib.sha1(author.client.encode()).hexdigest() if not author.signed_in else None
        status = "received" if self.spec.moderation else "published"
        values = {"created": now, "category": category, "text": text, "contact": contact, "about": about,
                  "status": status, "area": self._area(geom), "client": client, **self._shape(geom)}
        with self.store.write() as (conn, _):
            if client is not None:
                self._limit(conn, client, now)
            fid = conn.execute(insert(self.table).values(**values).returning(self.table.c.id)).scalar_one()
            if not self.postgis:
                self._index(conn, fid, geom)
        self._announce(fid, status)
        found = self._one(fid, moderator=True)
        assert found is not None
        return str(fid), found

    def update(self, fid: str, body: bytes, replace: bool, author: Author) -> bytes:
        """A moderator's change (PATCH: a JSON merge patch, a Feature's `properties` and `geometry` or the
        properties alone), or the whole item again (PUT: a Feature)."""
        key = _key(fid)
        doc = _json(body)
        if not isinstance(doc, dict):
            raise WriteRejected(400, "a JSON object: a Feature, or the properties to change")
        if replace and doc.get("type") != "Feature":
            raise WriteRejected(400, "PUT takes a GeoJSON Feature")
        shaped = doc.get("type") == "Feature" or "properties" in doc or "geometry" in doc
        props = (doc.get("properties") or {}) if shaped else doc
        if not isinstance(props, dict):
            raise WriteRejected(400, "properties: an object")
        if replace:  # everything a citizen sends, again: what is left out is gone
            props = {"contact": None, "about": None, **props}
            for name in ("category", "text"):
                props.setdefault(name, None)
        with self.store.write() as (conn, _):
            row = conn.execute(select(self.table).where(self.table.c.id == key)).mappings().first()
            if row is None:
                raise WriteRejected(404, f"no feedback item {fid!r}")
            values = self._changes(props, row)
            geom = self._geometry(doc["geometry"]) if replace or doc.get("geometry") is not None else None
            if geom is not None:
                values.update(area=self._area(geom), **self._shape(geom))
            if values:
                conn.execute(update(self.table).where(self.table.c.id == key).values(**values))
            if geom is not None and not self.postgis:
                self._index(conn, key, geom)
            status = values.get("status", row["status"])
        self._announce(key, status)
        found = self._one(key, moderator=True)
        assert found is not None
        return found

    def delete(self, fid: str, author: Author) -> None:
        """A moderator removes an item."""
        key = _key(fid)
        with self.store.write() as (conn, _):
            gone = conn.execute(delete(self.table).where(self.table.c.id == key)).rowcount
            if not gone:
                raise WriteRejected(404, f"no feedback item {fid!r}")
            if not self.postgis:
                conn.exec_driver_sql(f'DELETE FROM "{COLLECTION}_rtree" WHERE id = ?', (key,))
        self._announce(key, "deleted")

    # -- the parts ---------------------------------------------------------------------------------------
    def _one(self, fid: int, moderator: bool) -> bytes | None:
        return self.feature(str(fid), ItemsQuery(moderator=moderator))

    def _changes(self, props: dict[str, Any], row: Any) -> dict[str, Any]:
        """The columns a moderator's properties set, each checked as a citizen's are."""
        allowed = {"status", "response", "department", "category", "text", "contact", "about"}
        other = sorted(set(props) - allowed)
        if other:
            raise WriteRejected(400, f"properties.{other[0]}: not a property of an item ({', '.join(sorted(allowed))})")
        values: dict[str, Any] = {}
        if "category" in props:
            values["category"] = self._category(props["category"])
        if "text" in props:
            values["text"] = _text(props["text"], "text", MAX_TEXT, required=True)
        if "contact" in props:
            values["contact"] = _text(props["contact"], "contact", MAX_SHORT)
        if "about" in props:
            values["about"] = self._about(props["about"])
        if "status" in props:
            status = props["status"]
            if status not in STATUSES:
                raise WriteRejected(400, f"status: {status!r} is not one of {', '.join(STATUSES)}")
            if status != row["status"] and status not in MOVES[row["status"]]:
                raise WriteRejected(409, f"status: an item {row['status']!r} can become "
                                         f"{', '.join(sorted(MOVES[row['status']]))}, not {status!r}")
            values["status"] = status
        if "response" in props:
            values["response"] = _text(props["response"], "response", MAX_TEXT)
        if "department" in props:
            values["department"] = _text(props["department"], "department", MAX_SHORT)
        if values.get("status") == "answered":
            if not (values.get("response") or row["response"]):
                raise WriteRejected(400, "status: an answered item needs a response")
            values["answered"] = datetime.now(UTC)
        return values

    def _about(self, value: Any) -> str | None:
        """What an item is about: a collection or indicator (`districts`), one of its features
        (`districts/11020`), or a Datastream (`Datastreams(12)`)."""
        text = _text(value, "about", MAX_SHORT)
        if text is None or _DATASTREAM.fullmatch(text):
            return text
        collection = text.split("/", 1)[0]
        if collection not in self.collections:
            raise WriteRejected(400, f"about: {text!r} names no collection, feature or Datastream of the platform "
                                     "(a collection id, id/feature id, or Datastreams(n))")
        return text

    def _category(self, value: Any) -> str:
        if value not in self.spec.categories:
            raise WriteRejected(400, f"category: {value!r} is not one of {', '.join(self.spec.categories)}")
        return str(value)

    def _extent(self) -> tuple[float, float, float, float] | None:
        if self.spec.extent is not None:
            return self.spec.extent
        if self.areas is None or not len(self.areas.geoms):
            return None
        x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(self.areas.geoms))
        return (x0, y0, x1, y1)

    def _geometry(self, value: Any) -> shapely.Geometry:
        if value is None:
            raise WriteRejected(400, "geometry: an item needs a place (a Point, or a small Polygon)")
        if not isinstance(value, dict) or value.get("type") not in ("Point", "Polygon"):
            raise WriteRejected(400, "geometry: a GeoJSON Point or Polygon")
        try:
            geom = shapely.from_geojson(orjson.dumps(value))
        except shapely.errors.GEOSException as exc:
            raise WriteRejected(400, f"geometry: {exc}") from None
        if geom.is_empty or not geom.is_valid:
            raise WriteRejected(400, "geometry: empty or not valid")
        x0, y0, x1, y1 = geom.bounds
        if max(x1 - x0, y1 - y0) > MAX_SPAN:
            raise WriteRejected(400, f"geometry: a polygon at most {MAX_SPAN}° (about 2 km) across")
        box = self._extent()
        if box is not None and not (box[0] <= x0 and x1 <= box[2] and box[1] <= y0 and y1 <= box[3]):
            raise WriteRejected(400, f"geometry: outside the city ({', '.join(f'{v:g}' for v in box)})")
        return geom

    def _area(self, geom: shapely.Geometry) -> str | None:
        """The name of the area the item lies in (as the indicators name areas)."""
        return None if self.areas is None else self.areas.of(geom.representative_point())

    def _shape(self, geom: shapely.Geometry) -> dict[str, Any]:
        if self.postgis:
            return {"g": shapely.to_wkb(shapely.set_srid(geom, 4326), hex=True, include_srid=True)}
        x0, y0, x1, y1 = geom.bounds
        return {"g": shapely.to_wkb(geom), "x0": x0, "y0": y0, "x1": x1, "y1": y1}

    def _index(self, conn: Any, fid: int, geom: shapely.Geometry) -> None:
        x0, y0, x1, y1 = geom.bounds
        conn.exec_driver_sql(f'INSERT OR REPLACE INTO "{COLLECTION}_rtree" VALUES (?, ?, ?, ?, ?)',
                             (fid, x0, x1, y0, y1))

    def _limit(self, conn: Any, client: str, now: datetime) -> None:
        since = now - timedelta(seconds=self.spec.per_s)
        t = self.table.c
        sent = conn.execute(select(func.count(), func.min(t.created)).where(t.client == client, t.created > since)
                            ).one()
        if sent[0] >= self.spec.rate:
            oldest = sent[1] if sent[1].tzinfo else sent[1].replace(tzinfo=UTC)
            wait = max(1, int((oldest + timedelta(seconds=self.spec.per_s) - now).total_seconds()) + 1)
            raise WriteRejected(429, f"at most {self.spec.rate} items in {self.spec.per_s:g} s from one place "
                                     f"without an account: try again in {wait} s", {"Retry-After": str(wait)})

    def _announce(self, fid: int, status: str) -> None:
        """Tell the listeners: the public item, or only that it changed (what the public may not see)."""
        if not self.listeners:
            return
        if status in PUBLIC:
            body = self._one(fid, moderator=False)
            topic, payload = f"feedback/{fid}", body or b"{}"
        else:
            topic, payload = f"feedback/{fid}", orjson.dumps({"id": fid, "status": status})
        for listener in self.listeners:
            listener(topic, payload)


def _plain(value: Any) -> Any:
    """A column's value for JSON: times as UTC ISO 8601 (SQLite gives them back without a zone)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace(
            "+00:00", "Z")
    return value


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WriteRejected(400, f"the body is not JSON: {exc}") from None


def _feature(body: bytes) -> dict[str, Any]:
    doc = _json(body)
    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        raise WriteRejected(400, "the body is not a GeoJSON Feature")
    return doc


def _text(value: Any, name: str, limit: int, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            raise WriteRejected(400, f"{name}: required")
        return None
    if not isinstance(value, str):
        raise WriteRejected(400, f"{name}: text, not {type(value).__name__}")
    if required and not value.strip():
        raise WriteRejected(400, f"{name}: required")
    if len(value) > limit:
        raise WriteRejected(400, f"{name}: {len(value):,} characters, at most {limit:,}")
    return value


def _key(fid: str) -> int:
    if not (fid.isascii() and fid.isdigit()) or len(fid) > 18:
        raise WriteRejected(404, f"no feedback item {fid!r}")
    return int(fid)
