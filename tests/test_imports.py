"""Departmental files imported into the store: served from there on both stores, imported again when the file
changes while the platform serves (atomic switch, nothing breaks meanwhile), `udp load`, and the faults."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from tests.conftest import ROOT, Server, serve_on, start_server, stop_server, wait_until


def _csv(path: Path, rows: int, name: str = "tree") -> None:
    """`rows` points with an integer, a number, a text and a time column, written then moved in place (a
    department's export replacing the old one)."""
    lines = ["fid,name,height,planted,lon,lat"]
    lines += [f"{i},{name} {i},{i * 0.5},2020-01-{1 + i % 28:02d}T10:00:00Z,{9.9 + i * 1e-4},{53.5 + i * 1e-4}"
              for i in range(1, rows + 1)]
    tmp = path.with_suffix(".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("imports")
    _csv(tmp / "trees.csv", 300)
    (tmp / "config.yml").write_text(yaml.safe_dump({"title": "Import city", "collections": {
        "trees": {"source": "trees.csv", "x": "lon", "y": "lat", "id": "fid", "time": "planted"},
        "plain": {"source": "trees.csv", "x": "lon", "y": "lat"},
    }}), encoding="utf-8")
    for srv in serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml"), "--workers", "2"]):
        yield srv, tmp


def _items(srv: Server, cid: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{srv.url}/ogcapi/collections/{cid}/items", params=params, timeout=30)


def test_file_sources_answer_from_the_store(served: tuple[Server, Path]) -> None:
    srv, _ = served
    page = _items(srv, "trees", limit=5, sortby="-height").json()
    assert page["numberMatched"] >= 300 and [f["id"] for f in page["features"]][:1] == [page["numberMatched"]]
    feature = page["features"][0]
    assert feature["geometry"]["type"] == "Point"
    assert set(feature["properties"]) == {"fid", "name", "height", "planted", "lon", "lat"}
    # typed columns: numbers and times compare natively in SQL
    tall = _items(srv, "trees", filter="height > 100 AND planted >= TIMESTAMP('2020-01-10T00:00:00Z')",
                  limit=1000).json()
    assert tall["features"] and all(f["properties"]["height"] > 100 for f in tall["features"])
    assert all(f["properties"]["planted"] >= "2020-01-10" for f in tall["features"])
    queryables = httpx.get(f"{srv.url}/ogcapi/collections/trees/queryables", timeout=30).json()["properties"]
    assert queryables["height"]["type"] == "number" and queryables["fid"]["type"] == "integer"
    # a property outside the queryables is a 400, never SQL
    bad = _items(srv, "trees", filter="\"height; DROP TABLE x\" > 1")
    assert bad.status_code == 400
    # keyset paging through next links: every row once
    seen: list[int] = []
    url: str | None = f"{srv.url}/ogcapi/collections/plain/items?limit=70"
    while url:
        doc = httpx.get(url, timeout=30).json()
        seen += [f["id"] for f in doc["features"]]
        url = next((ln["href"] for ln in doc["links"] if ln["rel"] == "next"), None)
    assert len(seen) == len(set(seen)) == _items(srv, "plain", limit=1).json()["numberMatched"]


def test_a_replaced_file_is_served_after_its_reimport_without_a_break(served: tuple[Server, Path]) -> None:
    srv, tmp = served
    before = _items(srv, "trees", limit=1)
    rows = before.json()["numberMatched"]
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:  # requests all through the switch: every one answered, from one import or the other
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.get(f"{srv.url}/ogcapi/collections/trees/items", params={"limit": 50, "bbox": "9,53,11,55"})
                if r.status_code != 200 or r.json()["numberMatched"] not in (rows, rows + 100):
                    failures.append(f"{r.status_code} {r.text[:200]}")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        _csv(tmp / "trees.csv", rows + 100, name="replanted")
        wait_until(lambda: _items(srv, "trees", limit=1).json()["numberMatched"] == rows + 100, timeout=90,
                   what="the re-imported file to be served")
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not failures, failures[:3]

    def everywhere() -> bool:  # each worker follows the switch within half a second (two: ask often enough)
        pages = [_items(srv, "trees", limit=1).json() for _ in range(10)]
        return all(p["numberMatched"] == rows + 100 and p["features"][0]["properties"]["name"].startswith("replanted")
                   for p in pages)

    wait_until(everywhere, timeout=5, what="every worker to serve the new import")
    assert _items(srv, "trees", limit=1).headers["etag"] != before.headers["etag"]


def test_a_broken_replacement_keeps_the_last_import_served(served: tuple[Server, Path]) -> None:
    srv, tmp = served
    rows = _items(srv, "trees", limit=1).json()["numberMatched"]
    good = (tmp / "trees.csv").read_bytes()
    (tmp / "trees.part").write_text("fid,name\n1,no coordinates here\n", encoding="utf-8")
    os.replace(tmp / "trees.part", tmp / "trees.csv")
    try:
        # the watcher looks every 2 s: give it time to try, then the old import must still answer
        log = srv.log_path
        assert log is not None
        wait_until(lambda: "re-import failed" in log.read_text(errors="replace"), timeout=60,
                   what="the failed re-import logged")
        assert _items(srv, "trees", limit=1).json()["numberMatched"] == rows
    finally:
        (tmp / "trees.part").write_bytes(good)
        os.replace(tmp / "trees.part", tmp / "trees.csv")


def test_a_dropped_import_table_is_503_naming_the_collection(tmp_path: Path) -> None:
    from sensorthings.store.base import Store

    _csv(tmp_path / "t.csv", 20)
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"title": "x", "collections": {
        "gone": {"source": "t.csv", "x": "lon", "y": "lat"}}}), encoding="utf-8")
    store_url = f"sqlite:///{tmp_path / 'udp.db'}"
    srv = start_server(store_url, "sqlite", ["--config", str(tmp_path / "config.yml")])
    try:
        assert _items(srv, "gone").status_code == 200
        store = Store.open(store_url)
        with store.write() as (conn, _):
            name = conn.exec_driver_sql("SELECT table_name FROM udp_imports").scalar_one()
            conn.exec_driver_sql(f'DROP TABLE "{name}"')
        store.close()
        r = _items(srv, "gone", bbox="9,53,11,55")
        assert r.status_code == 503 and "gone" in r.text
        assert httpx.get(f"{srv.url}/v1.1/Things", timeout=30).status_code == 200
    finally:
        stop_server(srv)


def test_udp_load_imports_before_start_and_only_what_changed(tmp_path: Path) -> None:
    _csv(tmp_path / "a.csv", 10)
    _csv(tmp_path / "b.csv", 10)
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"title": "x", "store": "sqlite:///udp.db", "collections": {
        "a": {"source": "a.csv", "x": "lon", "y": "lat"}, "b": {"source": "b.csv", "x": "lon", "y": "lat"},
        "pg": {"source": "postgresql://nobody@127.0.0.1:1/none#public.t"}}}), encoding="utf-8")

    def load(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "udp.cli", "load", "--config", str(tmp_path / "config.yml"),
                               *args], capture_output=True, text=True, cwd=ROOT, timeout=300)

    first = load()
    assert first.returncode == 0, first.stderr
    assert "imported 2 of 2 file sources" in first.stdout
    again = load()
    assert "imported 0 of 2" in again.stdout and "current" in again.stdout
    _csv(tmp_path / "b.csv", 12)
    changed = load()
    assert "imported 1 of 2" in changed.stdout and ": b" in changed.stdout
    assert "imported 1 of 1" in load("--all", "a").stdout
    unknown = load("nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    (tmp_path / "a.csv").write_text("no,coordinates\n1,2\n", encoding="utf-8")
    broken = load()
    assert broken.returncode == 1 and "'a'" in broken.stderr


def test_sqlite_scans_a_wide_range_and_takes_the_index_for_a_narrow_one(tmp_path: Path) -> None:
    """SQLite's planner has no histograms and takes an index for any range; the import's percentiles decide."""
    from features.cql import parse_filter
    from features.cql_sql import render
    from features.spec import CollectionSpec
    from provider_plugins.imports import import_source
    from provider_plugins.stored import StoredSource
    from sensorthings.store.base import Store

    # 20,000 rows (more than imports.FEW_ROWS): heights 0.5 … 10,000, floors 1 … 5 (few values, still indexed),
    # planted on days 1 … 28 in turn
    lines = ["fid,height,floors,planted,lon,lat"] + [
        f"{i},{i * 0.5},{1 + i % 5},2020-01-{1 + i % 28:02d}T10:00:00Z,{9.9 + i * 1e-5},{53.5 + i * 1e-5}"
        for i in range(1, 20_001)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = Store.open(f"sqlite:///{tmp_path / 'udp.db'}")
    try:
        spec = CollectionSpec("t", "t", str(tmp_path / "t.csv"), x="lon", y="lat", id_column="fid", time="planted")
        import_source(store, spec)
        t = StoredSource(spec, store).layout()
        day2 = "TIMESTAMP('2020-01-02T00:00:00Z')"
        cases = {  # filter: (rows, scanned rather than taken by the index)
            "height > 9800": (400, False), "height > 1000": (18_000, True),
            "height BETWEEN 100 AND 200": (201, False), "height BETWEEN 100 AND 9000": (17_801, True),
            f"planted < {day2}": (714, False), f"planted > {day2}": (20_000 - 714, True),
            "floors = 3": (4_000, True), "floors = 7": (0, False),
        }
        for text, (rows, scanned) in cases.items():
            cond = render(parse_filter(text, "cql2-text"), t.columns, t.geom, t.spatial)
            stmt = select(func.count()).select_from(t.table).where(cond)
            sql = str(stmt.compile(store.engine, compile_kwargs={"literal_binds": True}))
            with store.read() as conn:
                plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
                assert conn.execute(stmt).scalar_one() == rows, text
            assert ("SEARCH" not in plan) == scanned, (text, plan, sql)  # SEARCH: an index range; SCAN: every row
    finally:
        store.close()


@pytest.mark.parametrize("width", [6, 40], ids=["narrow", "wide"])
def test_sqlite_rows_go_in_many_to_a_statement_all_of_them_in_order(tmp_path: Path, width: int) -> None:
    """The import's SQLite insert binds many rows per statement (up to the driver's variable limit): every row,
    blobs and nulls as given, whether the last statement is full or not."""
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, Text, create_engine

    from provider_plugins.imports import _insert

    engine = create_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    table = Table("t", MetaData(), Column("rid", Integer, primary_key=True), Column("g", LargeBinary),
                  *[Column(f"p{k}", Text) for k in range(width - 2)])
    table.create(engine)
    rows = [(i, bytes([i % 256, 0, 1]) if i % 7 else None, *[None if (i + k) % 5 == 0 else f"{i}.{k}"
                                                            for k in range(width - 2)]) for i in range(2_345)]
    with engine.begin() as conn:
        _insert(conn, table, iter(rows))
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(table.select().order_by(table.c.rid))] == rows
    engine.dispose()
