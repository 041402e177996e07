"""The one contract for the OGC API's sources (as pygeoapi keeps it in `pygeoapi/provider/base.py`): what
every feature source does, the registry the OGC API finds them in, and the pygeoapi provider that wraps any of them.

The platform's own items route calls `FeatureSource.search` with a parsed `ItemsQuery`; pygeoapi (its
HTML pages, queryables, the collection documents) reaches the same source through `PlatformProvider`,
a pygeoapi `BaseProvider` named by dotted path in the generated pygeoapi configuration. Concrete sources
(`provider_plugins/`) implement `FeatureSource`; the shell (`udp/`) builds them and hands them to
`features.app.features_routes`, which puts them in `SOURCES`: the OGC API never imports a concrete source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import numpy as np
import orjson
import shapely
from pygeoapi.provider.base import (
    BaseProvider,
    ProviderConnectionError,
    ProviderInvalidQueryError,
    ProviderItemNotFoundError,
)

from features import crs as crsmod
from features.request import ItemsQuery, ParamError, Sort, parse_datetime
from features.spec import CollectionSpec, MapStyle
from sensorthings.store.base import QueryTimeout


@dataclass
class Page:
    """One page of features, each already encoded as a GeoJSON Feature."""

    number_matched: int
    features: list[bytes]
    exact: bool = True  # False: number_matched is an estimate (an unfiltered page of a large table)
    next_cursor: str | None = None  # a source paging by key: the `cursor` of the next page, None on the last


@dataclass
class TileFeatures:
    """The features a tile is made of: ids, CRS84 geometries (shapely) and properties, in one order."""

    ids: list[Any]
    geometries: np.ndarray
    properties: list[dict[str, Any]]
    complete: bool = True  # False: more features met the tile than were read


@dataclass(frozen=True)
class DatabaseTable:
    """Where a source's rows live in PostgreSQL, for a map server that reads them in place (ows/): a libpq
    connection string and a SELECT giving the key as `udp_id`, each property under its name, and the geometry as
    `udp_geom` in `srid`; `kind` is point, line or polygon, `multi` whether points are multipoints."""

    dsn: str
    select: str
    srid: int
    kind: str
    multi: bool = False


def geometry_kind(type_name: str | None) -> str:
    """point, line or polygon for a geometry type's name (PostGIS's or GeoJSON's, any case; polygon otherwise)."""
    name = (type_name or "point").lower().removeprefix("st_").removeprefix("multi")
    return {"point": "point", "linestring": "line"}.get(name, "polygon")


@dataclass(frozen=True)
class Author:
    """Who writes (OGC API Features Part 4): the client's address, and whether they signed in."""

    client: str
    signed_in: bool
    name: str | None = None


class WriteRejected(Exception):
    """A write the source refuses: the HTTP status, the reason, and headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class SourceUnavailable(Exception):
    """The source's data cannot be reached now (a table dropped, its database down); the message names the
    collection. The OGC API answers 503."""


class _Unavailable(ProviderConnectionError):
    """SourceUnavailable as pygeoapi answers it (its HTML pages): 503, not its default 500."""

    http_status_code = HTTPStatus.SERVICE_UNAVAILABLE


class FeatureSource(ABC):
    """A collection's data: its queryables, CRSs, extent, and the answer to a query."""

    id: str
    title: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    cache_control: str = "public, max-age=60"
    access: str = "public"  # "internal": only for the read role
    # answers carry this where the public base URL goes (sources that write links to other APIs)
    placeholder: bytes | None = None
    # True: search honours ItemsQuery.after and sets Page.next_cursor (keyset paging); the OGC API's next links
    # then carry `cursor` instead of `offset`
    pages_by_key: bool = False
    item_type: str = "feature"  # "record": a catalogue (OGC API Records)
    style: MapStyle = MapStyle()  # how maps draw it (config.yml `style:`)
    # OGC API Features Part 4: the methods it takes, each with the role it needs (None: anyone); empty: read-only
    write_roles: ClassVar[dict[str, str | None]] = {}

    def describe(self, spec: CollectionSpec) -> None:
        """The collection's id, title, description, keywords and access as declared in config.yml."""
        self.id, self.title, self.description = spec.id, spec.title, spec.description
        self.keywords, self.access, self.style = spec.keywords, spec.access, spec.style

    @property
    @abstractmethod
    def fields(self) -> dict[str, dict[str, Any]]:
        """Queryable properties and their JSON Schema types (and `enum`: the values a property may take)."""

    @property
    @abstractmethod
    def storage_crs(self) -> int | None:
        """The CRS the source holds its data in."""

    @property
    @abstractmethod
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The spatial extent in CRS84."""

    @property
    def time_column(self) -> str | None:
        """The property `datetime=` filters on."""
        return None

    def offered_crs(self) -> list[int | None]:
        """Output CRSs: CRS84 first, then the usual ones and the source's own."""
        out: list[int | None] = [None, *crsmod.OUTPUT_EPSG]
        if self.storage_crs not in out:
            out.append(self.storage_crs)
        return out

    @abstractmethod
    def search(self, q: ItemsQuery) -> Page:
        """The features a query selects (ParamError for a query the data cannot answer)."""

    @abstractmethod
    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One feature as GeoJSON, None when there is no such id."""

    @abstractmethod
    def etag(self) -> str:
        """Changes whenever the data changes; "" when only the answer itself can tell."""

    def vector_tile(self, layer: str, tms_id: str, z: int, row: int, col: int, buffer: int,
                    cell: int | None = None, properties: tuple[str, ...] | None = None) -> bytes | None:
        """The tile as MVT made by the source's database itself (PostGIS `ST_AsMVT`), or None where it cannot
        make this one: features.tiles then encodes `tile_features`. `cell`: generalised, the points of a cell of
        that many pixels as one (features.tiles's rules); None: complete. `properties`: the attributes to carry
        (None: every property)."""
        return None

    def create(self, body: bytes, author: Author) -> tuple[str, bytes]:
        """A new feature from a request body: its id and the Feature stored (WriteRejected says why not)."""
        raise WriteRejected(405, f"collection {self.id!r} takes no new features")

    def update(self, fid: str, body: bytes, replace: bool, author: Author) -> bytes:
        """A feature changed (PATCH) or replaced (PUT): the Feature stored."""
        raise WriteRejected(405, f"collection {self.id!r} is read-only")

    def delete(self, fid: str, author: Author) -> None:
        """A feature removed."""
        raise WriteRejected(405, f"collection {self.id!r} is read-only")

    def tiles_version(self) -> str:
        """The version of the data a kept vector tile was made from: its pyramid on disk and in memory is kept under
        it; "" when tiles must be made each time they are asked."""
        return self.etag()

    def region_version(self, box: tuple[float, float, float, float]) -> str:
        """Within `tiles_version`, the version of the data meeting a CRS84 box (a tile and its buffer), for data
        whose writes are logged by place: a tile kept under it stays good until a write reaches it. "": the
        tiles version is all."""
        return ""

    def changes_seen(self) -> str:
        """A marker that changes soon after the data change, maybe some seconds late: for what may lag, as a
        small-scale map's overview. "" when there is none."""
        return self.etag()

    def database_table(self) -> DatabaseTable | None:
        """The rows in place in PostgreSQL for a map server; None: the map server reads a snapshot of
        `tile_features` instead."""
        return None

    def tile_features(self, bbox: tuple[float, float, float, float], limit: int,
                      cells: int | None = None) -> TileFeatures:
        """The features meeting a CRS84 box, at most `limit`, for a vector tile; `cells`: the tile will be
        generalised on a grid of that many cells a side, so a source may hand over counted cells (`point_count`)
        instead of many features. Here from `search`'s GeoJSON, which every source answers; a source that reads
        its columns more cheaply says so by overriding it."""
        page = self.search(ItemsQuery(limit=limit + 1, bbox=bbox))
        docs = [orjson.loads(f) for f in page.features[:limit]]
        docs = [d for d in docs if d.get("geometry")]
        geoms = shapely.from_geojson([orjson.dumps(d["geometry"]) for d in docs]) if docs else np.array([])
        return TileFeatures([d.get("id") for d in docs], np.asarray(geoms, dtype=object),
                            [d.get("properties") or {} for d in docs], complete=len(page.features) <= limit)


def encode_feature(fid: Any, geometry: Any, properties: dict[str, Any]) -> bytes:
    """A GeoJSON Feature (geometry as a GeoJSON mapping or pre-encoded bytes)."""
    head = orjson.dumps({"type": "Feature", "id": fid})[:-1]
    geo = geometry if isinstance(geometry, bytes) else orjson.dumps(geometry)
    props = orjson.dumps(properties, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return head + b',"geometry":' + geo + b',"properties":' + props + b"}"


# -- pygeoapi --------------------------------------------------------------------------------------
SOURCES: dict[str, FeatureSource] = {}  # collection id → source, filled by features_routes at start-up


class PlatformProvider(BaseProvider):
    """pygeoapi's view of a platform source (`data:` is the collection id)."""

    registry: ClassVar[dict[str, FeatureSource]] = SOURCES

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_def)
        self.source = self.registry[provider_def["data"]]
        self.get_fields()

    def get_fields(self) -> dict[str, dict[str, Any]]:
        """Queryables for pygeoapi, which writes a property's `enum` in the queryables from what it calls
        `values`."""
        self._fields = {k: {**v, "values": v["enum"]} if "enum" in v else v for k, v in self.source.fields.items()}
        return self._fields

    def query(self, offset: int = 0, limit: int = 10, resulttype: str = "results", bbox: list | None = None,
              datetime_: str | None = None, properties: list | None = None, sortby: list | None = None,
              select_properties: list | None = None, skip_geometry: bool = False, q: str | None = None,
              filterq: Any = None, **kwargs: Any) -> dict[str, Any]:
        """pygeoapi's query (its HTML pages) answered by the source."""
        try:
            query = ItemsQuery(
                limit=limit, offset=offset, bbox=tuple(bbox) if bbox else None,  # type: ignore[arg-type]
                time=parse_datetime(datetime_) if datetime_ and self.source.time_column else None,
                equals=tuple(properties or ()), filter=filterq,
                sortby=tuple(Sort(s["property"], s["order"] == "-") for s in sortby or ()),
                properties=tuple(select_properties) if select_properties else None,
                skip_geometry=skip_geometry, hits=resulttype == "hits")
            page = self.source.search(query)
        except (ParamError, QueryTimeout) as exc:  # the client's to change: pygeoapi answers 400, not 500
            raise ProviderInvalidQueryError(str(exc)) from None
        except SourceUnavailable as exc:
            raise _Unavailable(user_msg=str(exc)) from None
        features = [orjson.loads(f) for f in page.features]
        return {"type": "FeatureCollection", "features": features, "numberMatched": page.number_matched,
                "numberReturned": len(features)}

    def get(self, identifier: Any, **kwargs: Any) -> dict[str, Any]:
        """One feature for pygeoapi."""
        try:
            found = self.source.feature(str(identifier), ItemsQuery())
        except SourceUnavailable as exc:
            raise _Unavailable(user_msg=str(exc)) from None
        if found is None:
            raise ProviderItemNotFoundError(f"no feature {identifier!r}")
        return orjson.loads(found)
