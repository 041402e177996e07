"""A departmental file served from its import in the platform's store (provider_plugins/imports.py): every
request rendered to SQL on the store (provider_plugins/sql_table.py), the default answer (CRS84, every
property) taken from the pre-encoded features, nothing held per worker but the table's description.

Each request looks at the registry (at most every `RECHECK_S` seconds per process) so that a re-import shows at
once on every worker; the table a request started on stays for it until the import after next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from features.cql_sql import PostgisSql, SqliteSql
from features.request import ItemsQuery
from features.source import SourceUnavailable, encode_feature
from features.spec import CollectionSpec
from provider_plugins.imports import INTEGER, Imported, current, features_of, table_of
from provider_plugins.sql_table import Layout, SqlTableSource, unavailable, wkb_geojson
from provider_plugins.table import SourceError
from sensorthings.store.base import Store
from sensorthings.store.sqlite import rtree_table

RECHECK_S = 0.5


class StoredSource(SqlTableSource):
    """An imported file answering every query in the store's SQL."""

    pages_by_key = True

    def __init__(self, spec: CollectionSpec, store: Store) -> None:
        self.spec = spec
        self.describe(spec)
        self.store = store
        self.postgis = store.dialect.name == "postgresql"
        self._lock = threading.Lock()
        self._seen: tuple[float, Imported, Layout] | None = None
        try:
            self._current()
        except SourceUnavailable as exc:
            raise SourceError(spec.id, str(exc)) from None

    def _current(self, fresh: bool = False) -> tuple[Imported, Layout]:
        seen = self._seen
        now = monotonic()
        if seen is not None and now - seen[0] < RECHECK_S and not fresh:
            return seen[1], seen[2]
        try:
            with self.store.read() as conn:
                found = current(conn, self.id)
        except DBAPIError as exc:
            raise self.unavailable(exc) from None
        if found is None:
            raise SourceUnavailable(f"collection {self.id!r}: {self.spec.source} is not imported into the store "
                                    "(`udp load` imports it)")
        with self._lock:
            seen = self._seen
            layout = seen[2] if seen is not None and seen[1].version == found.version else self._layout(found)
            self._seen = (now, found, layout)
        return found, layout

    def _layout(self, found: Imported) -> Layout:
        meta = found.meta
        table = table_of(found.table_name, meta, self.postgis)
        columns = {name: table.c[phys] for name, phys, _kind in meta["columns"]}
        c = table.c
        spatial: Any = PostgisSql(4326) if self.postgis else SqliteSql(
            rtree_table(f"{found.table_name}_rtree"), c.rid, (c.x0, c.y0, c.x1, c.y1), bool(meta["points"]),
            {k: tuple(v) for k, v in meta.get("spread", {}).items()})
        return Layout(table, columns, c[meta["key"]], c.g, 4326, meta["time"], spatial,
                      encoded=features_of(found.table_name).c.f,
                      integer=frozenset(n for n, _p, kind in meta["columns"] if kind == INTEGER),
                      rows=found.rows, order=c.rid, dense=True)

    # -- what SqlTableSource asks ------------------------------------------------------------------------
    def layout(self, fresh: bool = False) -> Layout:
        """The current import's table."""
        return self._current(fresh)[1]

    def connect(self) -> Any:
        """A read connection to the store."""
        return self.store.read()

    def unfiltered_count(self, conn: Connection, layout: Layout) -> tuple[int, bool] | None:
        """The import's row count: exact, the table never changes."""
        return None if layout.rows is None else (layout.rows, True)

    def unavailable(self, exc: DBAPIError) -> Exception:
        """503 naming the collection."""
        return unavailable(self.id, f"its import of {self.spec.source}", exc)

    def compose(self, t: Layout, q: ItemsQuery) -> tuple[Sequence[Any], Callable[[Sequence[Any]], list[bytes]]]:
        """SQLite: the stored feature with its properties chosen and its geometry in the asked CRS."""

        def encode(rows: Sequence[Any]) -> list[bytes]:
            docs = [orjson.loads(r[0]) for r in rows]
            geo = wkb_geojson([r[1] for r in rows], q)
            names = q.properties
            return [encode_feature(d["id"], g, d["properties"] if names is None else
                                   {n: d["properties"].get(n) for n in names})
                    for d, g in zip(docs, geo, strict=True)]

        return [t.encoded, t.geom], encode

    # -- what the OGC API asks ---------------------------------------------------------------------------
    @property
    def storage_crs(self) -> int | None:
        """The file's CRS."""
        return self._current()[0].meta["source_crs"]

    @property
    def bbox(self) -> tuple[float, float, float, float] | None:
        """The extent in CRS84."""
        box = self._current()[0].meta["bbox"]
        return None if box is None else tuple(box)  # type: ignore[return-value]

    def etag(self) -> str:
        """The import's identity: a re-import changes it."""
        found = self._current()[0]
        return f"{found.fingerprint}-{found.version}"
