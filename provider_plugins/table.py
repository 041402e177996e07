"""Departmental sources (any vector file GDAL reads, CSV with coordinate or WKT columns, PostGIS tables)
loaded once into memory: columns, CRS84 geometries with an R-tree, and each feature's GeoJSON pre-encoded.

A city's departmental datasets are small next to memory (tens of thousands of features); holding them
parsed is what makes a page of 1,000 features cost a join of bytes instead of a file parse.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from features import crs as crsmod
from features.cql import FilterError, evaluate
from features.request import ItemsQuery, ParamError, Sort
from features.source import FeatureSource, Page, encode_feature
from features.spec import CollectionSpec


class SourceError(Exception):
    """A source that cannot be read, with the collection id and the reason."""

    def __init__(self, collection: str, reason: str) -> None:
        super().__init__(f"collection {collection!r}: {reason}")
        self.collection = collection
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # raised in an import process, re-raised in the one that started it
        return (SourceError, (self.collection, self.reason))


@dataclass
class Table:
    """A loaded source: one row per feature."""

    spec: CollectionSpec
    columns: pd.DataFrame  # the properties, in source order
    ids: np.ndarray  # feature ids (int or str), unique
    geoms: np.ndarray  # shapely geometries in CRS84 (None for rows without one)
    source_crs: int | None  # EPSG code of the source (None: CRS84)
    encoded: list[bytes]  # each feature as GeoJSON in CRS84
    tree: shapely.STRtree
    bbox: tuple[float, float, float, float] | None
    time_column: str | None
    etag: str
    id_index: dict[str, int]

    def row_of(self, fid: str) -> int | None:
        """The row of a feature id given as text in a URL."""
        return self.id_index.get(fid)

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """Queryable properties and their JSON Schema types."""
        return {name: {"type": json_type(self.columns[name])} | (
            {"format": "date-time"} if name == self.time_column else {}) for name in self.columns.columns}


def json_type(series: pd.Series) -> str:
    """The JSON Schema type of a column."""
    kind = series.dtype.kind
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return "integer"
    if kind == "f":
        return "number"
    return "string"


_LOCK = threading.Lock()
_LOADED: dict[CollectionSpec, Table] = {}


def load(spec: CollectionSpec) -> Table:
    """The table of a source, read once per process (SourceError when it cannot be read)."""
    with _LOCK:
        table = _LOADED.get(spec)
        if table is None:
            table = _LOADED[spec] = _read(spec)
        return table


def forget() -> None:
    """Drop every loaded table (a process that only checked them)."""
    with _LOCK:
        _LOADED.clear()


@dataclass
class Rows:
    """A source as read: typed columns, ids, CRS84 geometries."""

    frame: pd.DataFrame  # the properties, in source order, times as UTC
    ids: np.ndarray  # feature ids (int or str), unique
    geoms: np.ndarray  # shapely geometries in CRS84 (None for rows without one)
    source_crs: int | None
    time_column: str | None
    etag: str


def _read(spec: CollectionSpec) -> Table:
    rows = read_rows(spec)
    return assemble(spec, rows.frame, rows.ids, rows.geoms, rows.source_crs, rows.time_column, rows.etag)


def read_rows(spec: CollectionSpec) -> Rows:
    """A source's rows (SourceError naming the collection when it cannot be read)."""
    try:
        return _build(spec)
    except SourceError:
        raise
    except crsmod.CrsError as exc:
        raise SourceError(spec.id, str(exc)) from None
    except (OSError, ValueError, KeyError, UnicodeDecodeError, RuntimeError) as exc:
        raise SourceError(spec.id, f"cannot read {spec.source}: {exc}") from None
    except Exception as exc:  # pyogrio's DataSourceError and friends: report, never crash start-up
        raise SourceError(spec.id, f"cannot read {spec.source}: {type(exc).__name__}: {exc}") from None


def _build(spec: CollectionSpec) -> Rows:
    frame, geoms, source_crs = _read_frame(spec)
    # integers stay integers where a cell is empty, text is text; column names are text
    frame = frame.convert_dtypes(convert_boolean=False, convert_floating=False)
    frame.columns = [str(c) for c in frame.columns]
    if source_crs is not None and len(geoms):
        geoms = crsmod.transform(geoms, source_crs, None, xy=True)
    if spec.id_column is not None:
        if spec.id_column not in frame.columns:
            raise SourceError(spec.id, f"id column {spec.id_column!r} not in the source "
                                       f"(columns: {', '.join(map(str, frame.columns))})")
        ids = frame[spec.id_column].to_numpy()
        if frame[spec.id_column].isna().any():
            raise SourceError(spec.id, f"id column {spec.id_column!r} has empty values")
        if pd.Series(ids).duplicated().any():
            raise SourceError(spec.id, f"id column {spec.id_column!r} has duplicate values")
    else:
        ids = np.arange(1, len(frame) + 1)
    time_column = spec.time
    if time_column is not None and time_column not in frame.columns:
        raise SourceError(spec.id, f"time column {time_column!r} not in the source")
    if time_column is not None:
        frame[time_column] = pd.to_datetime(frame[time_column], utc=True, errors="coerce")
    else:
        time_column = next((c for c in frame.columns if frame[c].dtype.kind == "M"), None)
        if time_column is not None:
            frame[time_column] = pd.to_datetime(frame[time_column], utc=True)
    digest = hashlib.sha1(spec.source.encode())
    if not spec.is_postgis:
        st = Path(spec.source).stat()
        digest.update(f"{st.st_mtime_ns}:{st.st_size}".encode())
    return Rows(frame, ids, geoms, source_crs, time_column, digest.hexdigest()[:16])


def assemble(spec: CollectionSpec, frame: pd.DataFrame, ids: np.ndarray, geoms: np.ndarray, source_crs: int | None,
             time_column: str | None, etag: str) -> Table:
    """A table from its rows (CRS84 geometries): features encoded, R-tree and extent made."""
    encoded = encode_rows(frame, ids, geoms)
    valid = geoms[~shapely.is_missing(geoms)] if len(geoms) else geoms
    bbox = tuple(float(v) for v in shapely.total_bounds(valid)) if len(valid) else None
    return Table(spec, frame, ids, geoms, source_crs, encoded, shapely.STRtree(geoms), bbox,
                 time_column, etag, {str(v): i for i, v in enumerate(ids.tolist())})


def encode_rows(frame: pd.DataFrame, ids: np.ndarray, geoms: np.ndarray) -> list[bytes]:
    """Each row as a GeoJSON Feature (CRS84 geometries)."""
    geo_json = shapely.to_geojson(geoms)
    return [encode_feature(fid, b"null" if g is None else g.encode(), row)
            for fid, g, row in zip(ids.tolist(), geo_json, _json_ready(frame), strict=True)]


def _json_ready(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts: NaN as null, times as ISO text (built from column lists: pandas' to_dict("records")
    was half the cost of encoding an import)."""
    if not len(frame.columns):
        return [{} for _ in range(len(frame))]
    cols = []
    for name in frame.columns:
        col = frame[name]
        text = col.dt.strftime("%Y-%m-%dT%H:%M:%SZ") if col.dtype.kind == "M" else col
        cells = text.to_numpy(dtype=object, na_value=None).copy()
        cells[col.isna().to_numpy(dtype=bool)] = None
        cols.append(cells.tolist())
    names = [str(n) for n in frame.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]


def _read_frame(spec: CollectionSpec) -> tuple[pd.DataFrame, np.ndarray, int | None]:
    declared = crsmod.parse_crs(spec.crs) if spec.crs else None
    if spec.is_postgis:
        return _read_postgis(spec, declared)
    path = Path(spec.source)
    if not path.exists():
        raise SourceError(spec.id, f"file not found: {path}")
    if path.suffix.lower() in (".csv", ".tsv", ".txt") or spec.x or spec.wkt or spec.latlon:
        return _read_csv(spec, path, declared)
    import pyogrio

    kwargs: dict[str, Any] = {}
    if spec.layer:
        kwargs["layer"] = spec.layer
    if spec.encoding:
        kwargs["encoding"] = spec.encoding
    gdf = pyogrio.read_dataframe(path, **kwargs)
    source_crs = declared if spec.crs else (crsmod.epsg_of(CRS.from_user_input(gdf.crs)) if gdf.crs else None)
    geoms = np.asarray(gdf.geometry.array, dtype=object) if "geometry" in gdf else np.array([], dtype=object)
    frame = pd.DataFrame(gdf.drop(columns="geometry")) if "geometry" in gdf else pd.DataFrame(gdf)
    return frame.reset_index(drop=True), geoms, source_crs


def _read_csv(spec: CollectionSpec, path: Path, declared: int | None) -> tuple[pd.DataFrame, np.ndarray, int | None]:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    frame = pd.read_csv(path, sep=sep, encoding=spec.encoding or "utf-8-sig", low_memory=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    if spec.wkt:
        if spec.wkt not in frame.columns:
            raise SourceError(spec.id, f"WKT column {spec.wkt!r} not in the CSV (columns: {', '.join(frame.columns)})")
        try:
            geoms = shapely.from_wkt(frame[spec.wkt].fillna("").replace("", None).to_numpy(), on_invalid="raise")
        except shapely.errors.GEOSException as exc:
            raise SourceError(spec.id, f"column {spec.wkt!r}: not WKT: {exc}") from None
        frame = frame.drop(columns=spec.wkt)
    elif spec.latlon:
        if spec.latlon not in frame.columns:
            raise SourceError(spec.id, f"column {spec.latlon!r} not in the CSV (columns: {', '.join(frame.columns)})")
        parts = frame[spec.latlon].astype("string").str.strip("() ").str.split(",", n=1, expand=True)
        if parts.shape[1] != 2:
            raise SourceError(spec.id, f"column {spec.latlon!r} does not hold 'lat, lon' text")
        ys = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=float)
        xs = pd.to_numeric(parts[1], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        geoms = np.full(len(frame), None, dtype=object)
        geoms[ok] = shapely.points(xs[ok], ys[ok])
    else:
        x, y = spec.x or _guess(frame, ("lon", "longitude", "x", "경도")), spec.y or _guess(
            frame, ("lat", "latitude", "y", "위도"))
        if x is None or y is None:
            raise SourceError(spec.id, "no coordinate columns: declare `x` and `y` (or `wkt`) for this CSV")
        for c in (x, y):
            if c not in frame.columns:
                raise SourceError(spec.id, f"coordinate column {c!r} not in the CSV "
                                           f"(columns: {', '.join(frame.columns)})")
        xs = pd.to_numeric(frame[x], errors="coerce").to_numpy(dtype=float)
        ys = pd.to_numeric(frame[y], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        geoms = np.full(len(frame), None, dtype=object)
        geoms[ok] = shapely.points(xs[ok], ys[ok])
    return frame.reset_index(drop=True), np.asarray(geoms, dtype=object), declared


def _guess(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): c for c in frame.columns}
    return next((lower[n] for n in names if n in lower), None)


def _read_postgis(spec: CollectionSpec, declared: int | None) -> tuple[pd.DataFrame, np.ndarray, int | None]:
    import geopandas
    import sqlalchemy

    url, _, table = spec.source.partition("#")
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)
                                      .replace("postgres://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            found = conn.execute(sqlalchemy.text(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = :s AND table_name = :t"),
                {"s": schema, "t": name}).first()
            if found is None:
                raise SourceError(spec.id, f"no table {schema}.{name} in {url.rsplit('@', 1)[-1]}")
            geom_cols = [r[0] for r in conn.execute(sqlalchemy.text(
                "SELECT f_geometry_column FROM geometry_columns WHERE f_table_schema = :s AND f_table_name = :t"),
                {"s": schema, "t": name})]
            if not geom_cols:
                raise SourceError(spec.id, f"table {schema}.{name} has no geometry column")
            query = sqlalchemy.select(sqlalchemy.literal_column("*")).select_from(
                sqlalchemy.table(name, schema=schema))
            gdf = geopandas.read_postgis(query, conn, geom_col=geom_cols[0])
    finally:
        engine.dispose()
    source_crs = declared if spec.crs else (crsmod.epsg_of(CRS.from_user_input(gdf.crs)) if gdf.crs else None)
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    return pd.DataFrame(gdf.drop(columns=geom_cols[0])).reset_index(drop=True), geoms, source_crs


class TableSource(FeatureSource):
    """A departmental source served from its loaded table."""

    def __init__(self, spec: CollectionSpec) -> None:
        self.spec = spec
        self.describe(spec)
        self.table = load(spec)

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """Queryable properties and their JSON Schema types."""
        return self.table.fields

    @property
    def storage_crs(self) -> int | None:
        """The source's CRS."""
        return self.table.source_crs

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The extent in CRS84."""
        return self.table.bbox

    @property
    def time_column(self) -> str | None:
        """The time property."""
        return self.table.time_column

    def etag(self) -> str:
        """The file's identity when it was loaded."""
        return self.table.etag

    def _mask(self, q: ItemsQuery) -> np.ndarray | None:
        t = self.table
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal mask
            mask = m if mask is None else mask & m

        if q.bbox is not None:
            m = np.zeros(len(t.ids), dtype=bool)
            m[t.tree.query(shapely.box(*q.bbox), predicate="intersects")] = True
            both(m)
        if q.time is not None and t.time_column is not None:
            col = t.columns[t.time_column]
            lo, hi = q.time
            m = col.notna().to_numpy(dtype=bool).copy()  # pandas may hand out a read-only view
            if lo is not None:
                m &= (col >= lo).to_numpy(dtype=bool)
            if hi is not None:
                m &= (col <= hi).to_numpy(dtype=bool)
            both(m)
        for name, text in q.equals:
            col = t.columns[name]
            if col.dtype.kind in "iuf":
                try:
                    value: Any = float(text)
                except ValueError:
                    raise ParamError(f"{name}: {text!r} is not a number") from None
                # nullable integer columns compare to <NA> where a value is missing: no match there
                both((col == value).fillna(False).to_numpy(dtype=bool))
            else:
                both((col.astype("string") == text).fillna(False).to_numpy(dtype=bool))
        if q.filter is not None:
            try:
                both(evaluate(q.filter, t.columns, t.geoms, t.tree, q.filter_crs))
            except FilterError as exc:
                raise ParamError(f"filter: {exc}") from None
        return mask

    def _order(self, rows: np.ndarray, sortby: tuple[Sort, ...]) -> np.ndarray:
        if not sortby:
            return rows
        sub = self.table.columns.iloc[rows]
        sub = sub.assign(_row=rows).sort_values([s.property for s in sortby],
                                                 ascending=[not s.descending for s in sortby],
                                                 kind="stable", na_position="last")
        return sub["_row"].to_numpy()

    def search(self, q: ItemsQuery) -> Page:
        """Filter, sort and page the table."""
        mask = self._mask(q)
        rows = np.arange(len(self.table.ids)) if mask is None else np.flatnonzero(mask)
        if q.hits:
            return Page(len(rows), [])
        rows = self._order(rows, q.sortby)[q.offset:q.offset + q.limit]
        return Page(int(mask.sum()) if mask is not None else len(self.table.ids), self._encode(rows, q))

    def feature(self, fid: str, q: ItemsQuery) -> bytes | None:
        """One feature by id."""
        row = self.table.row_of(fid)
        return None if row is None else self._encode(np.array([row]), q)[0]

    def _encode(self, rows: np.ndarray, q: ItemsQuery) -> list[bytes]:
        t = self.table
        if q.crs is None and q.properties is None and not q.skip_geometry:
            return [t.encoded[i] for i in rows.tolist()]
        cols = list(q.properties) if q.properties is not None else list(t.columns.columns)
        props = _json_ready(t.columns.iloc[rows][cols])
        if q.skip_geometry:
            geo: list[Any] = [b"null"] * len(rows)
        else:
            geoms = crsmod.transform(t.geoms[rows], None, q.crs)
            geo = [b"null" if g is None else g.encode() for g in shapely.to_geojson(geoms)]
        return [encode_feature(fid, g, p) for fid, g, p in zip(t.ids[rows].tolist(), geo, props, strict=True)]
