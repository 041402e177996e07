"""The records of a catalogue made searchable: a table of their queryables for CQL2 and sorting, an R-tree of their
extents for `bbox`, and an SQLite FTS5 index (porter stemming, bm25 ranking) for `q`.

The catalogue is small (one record per dataset or service: hundreds, not millions) and computed from the sources,
so the index is built in memory from the records, on both stores alike, whenever they change; bench/catalogue.py
measures building and searching it."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import shapely

from features.cql import FilterError, evaluate
from features.record import Record
from features.records_query import RecordsQuery, search_expression
from features.request import ParamError


class RecordIndex:
    """A snapshot of a catalogue's records, searchable."""

    def __init__(self, records: list[Record], version: str) -> None:
        self.records = records
        self.version = version
        self.by_id = {r.id: i for i, r in enumerate(records)}
        self.frame = pd.DataFrame({
            "id": pd.array([r.id for r in records], dtype="string"),
            "type": pd.array([r.type for r in records], dtype="string"),
            "title": pd.array([r.title for r in records], dtype="string"),
            "description": pd.array([r.description for r in records], dtype="string"),
            "keywords": pd.array([", ".join(r.keywords) for r in records], dtype="string"),
            "themes": pd.array([", ".join(t.code for t in r.themes) for r in records], dtype="string"),
            "license": pd.array([r.license.uri if r.license else None for r in records], dtype="string"),
            "recordKind": pd.array([r.kind for r in records], dtype="string"),
            "accrualPeriodicity": pd.array([r.updated.uri if r.updated else None for r in records], dtype="string"),
            "start": pd.to_datetime(pd.Series([r.start for r in records], dtype=object), utc=True),
            "end": pd.to_datetime(pd.Series([r.end for r in records], dtype=object), utc=True),
        })
        self.geoms = np.array([shapely.box(*r.bbox) if r.bbox else None for r in records], dtype=object)
        self.tree = shapely.STRtree(self.geoms)
        self._lock = threading.Lock()
        self._fts = sqlite3.connect(":memory:", check_same_thread=False)
        self._fts.execute("CREATE VIRTUAL TABLE text USING fts5(title, description, keywords, themes, "
                          "tokenize='porter unicode61 remove_diacritics 2')")
        self._fts.executemany("INSERT INTO text(rowid, title, description, keywords, themes) VALUES (?, ?, ?, ?, ?)",
                              [(i, r.title, r.description, " ".join(r.keywords),
                                " ".join(f"{t.code} {t.label}" for t in r.themes)) for i, r in enumerate(records)])

    def _matching(self, terms: tuple[str, ...]) -> list[int]:
        """The rows matching any term, best first (bm25, title weighted most)."""
        expression = " OR ".join(search_expression(t) for t in terms)
        with self._lock:
            rows = self._fts.execute("SELECT rowid FROM text WHERE text MATCH ? ORDER BY bm25(text, 4.0, 1.0, 2.0, "
                                     "2.0)", (expression,)).fetchall()
        return [r[0] for r in rows]

    def search(self, q: RecordsQuery) -> tuple[int, list[Record]]:
        """The number of records a search selects and the page it asks for."""
        n = len(self.records)
        mask = np.ones(n, dtype=bool)
        ranked: list[int] | None = None
        if q.terms:
            ranked = self._matching(q.terms)
            hit = np.zeros(n, dtype=bool)
            hit[ranked] = True
            mask &= hit
        if q.types:
            mask &= self.frame["type"].isin(q.types).to_numpy(dtype=bool)
        if q.ids:
            mask &= self.frame["id"].isin(q.ids).to_numpy(dtype=bool)
        if q.interval is not None:
            lo, hi = q.interval
            # a copy: pandas may hand out a read-only view
            timed = (self.frame["start"].notna() | self.frame["end"].notna()).to_numpy(dtype=bool).copy()
            if lo is not None:  # an open end reaches any instant
                timed &= (self.frame["end"].isna() | (self.frame["end"] >= lo)).to_numpy(dtype=bool)
            if hi is not None:
                timed &= (self.frame["start"].isna() | (self.frame["start"] <= hi)).to_numpy(dtype=bool)
            mask &= timed
        items = q.items
        if items.bbox is not None:
            hit = np.zeros(n, dtype=bool)
            hit[self.tree.query(shapely.box(*items.bbox), predicate="intersects")] = True
            mask &= hit
        for name, text in items.equals:
            mask &= (self.frame[name].astype("string") == text).fillna(False).to_numpy(dtype=bool)
        if items.filter is not None:
            try:
                mask &= evaluate(items.filter, self.frame, self.geoms, self.tree, items.filter_crs)
            except FilterError as exc:
                raise ParamError(f"filter: {exc}") from None
        rows = np.flatnonzero(mask)
        if items.sortby:
            sub = self.frame.iloc[rows].assign(_row=rows).sort_values(
                [s.property for s in items.sortby], ascending=[not s.descending for s in items.sortby],
                kind="stable", na_position="last")
            rows = sub["_row"].to_numpy()
        elif ranked is not None:  # the best matches first
            rows = np.array([r for r in ranked if mask[r]], dtype=int)
        page = rows[items.offset:items.offset + items.limit] if not items.hits else rows[:0]
        return len(rows), [self.records[i] for i in page.tolist()]
