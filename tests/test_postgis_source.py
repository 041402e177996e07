"""A department's PostGIS table served live (provider_plugins/postgis.py, features/cql_sql.py): the whole items
surface through `udp serve`, the same answers as the same rows loaded from a CSV file, a department's change
seen on the next request, a dropped table a 503, and tables the platform cannot serve refused at start-up."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.conftest import (
    DEMO_DATA,
    PG_URL,
    ROOT,
    Server,
    create_pg,
    serve_config,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.skipif(not PG_URL, reason="UDP_TEST_PG is not set: PostGIS sources need PostgreSQL")

ROWS = 400  # Seoul's public bike stations, the first few hundred


def _stations() -> list[dict[str, Any]]:
    with open(DEMO_DATA / "ttareungyi_bike_stations.csv", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.DictReader(fh)  # a few rows say "2018.7.4개통": not a date, left out
                if re.fullmatch(r"\d{4}-\d\d-\d\d", r["startDate"]) and r["numOfUnits"].isdigit()][:ROWS]
    out = []
    for i, r in enumerate(rows):  # some values left empty: nulls must select alike in both
        out.append({"id": int(r["id"]), "place": r["place"], "name": r["name"],
                    "address": None if i % 9 == 4 else r["address"] or None,
                    "latitude": float(r["latitude"]), "longitude": float(r["longitude"]),
                    "startDate": f"{r['startDate']}T00:00:00Z",
                    "numOfUnits": None if i % 13 == 6 else int(r["numOfUnits"])})
    return sorted(out, key=lambda r: r["id"])


def _table(url: str, name: str, rows: list[dict[str, Any]], key: bool = True, geometry: bool = True) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute(f'CREATE TABLE "{name}" (id integer {"PRIMARY KEY" if key else ""}, place text, name text, '
                     'address text, latitude double precision, longitude double precision, '
                     '"startDate" timestamptz, "numOfUnits" integer'
                     + (", geom geometry(Point, 4326))" if geometry else ")"))
        if geometry:
            conn.execute(f'CREATE INDEX ON "{name}" USING gist (geom)')
        with conn.cursor() as cur:
            cur.executemany(
                f'INSERT INTO "{name}" (id, place, name, address, latitude, longitude, "startDate", "numOfUnits"'
                + (", geom) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))"
                   if geometry else ") VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"),
                [(r["id"], r["place"], r["name"], r["address"], r["latitude"], r["longitude"], r["startDate"],
                  r["numOfUnits"], *((r["longitude"], r["latitude"]) if geometry else ())) for r in rows])
    return f"{url}#public.{name}"


def _big_table(url: str) -> str:
    """More rows than provider_plugins.postgis counts on every unfiltered page."""
    import psycopg

    from provider_plugins.postgis import ESTIMATE_ABOVE

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute("CREATE TABLE big AS SELECT g AS id, g % 7 AS weekday, "
                     "ST_SetSRID(ST_MakePoint(126.9 + (g % 1000) / 10000.0, 37.5 + (g / 1000) / 10000.0), 4326) "
                     f"AS geom FROM generate_series(1, {ESTIMATE_ABOVE + 20_000}) g")
        conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
        conn.execute("ALTER TABLE big ALTER weekday SET NOT NULL")  # keyset paging's row comparison
        conn.execute("ANALYZE big")
    return f"{url}#public.big"


@pytest.fixture(scope="module")
def ogc(db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("postgis")
    rows = _stations()
    with open(tmp / "bikes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    collections = {
        "bikes_pg": {"source": _table(db, "bikes", rows), "time": "startDate"},
        "bikes_file": {"source": str(tmp / "bikes.csv"), "x": "longitude", "y": "latitude", "id": "id",
                       "time": "startDate"},
        "scratch": {"source": _table(db, "scratch", rows[:20])},
        "big": {"source": _big_table(db)},
    }
    srv = serve_config(tmp, {"title": "Live", "collections": collections})
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def api(ogc: Server) -> httpx.Client:
    return ogc.http("/ogcapi")


POLYGON = "POLYGON((126.90 37.54, 126.95 37.54, 126.95 37.58, 126.90 37.58, 126.90 37.54))"
POLYGON_JSON = {"type": "Polygon", "coordinates": [[[126.90, 37.54], [126.95, 37.54], [126.95, 37.58],
                                                    [126.90, 37.58], [126.90, 37.54]]]}
SAME_QUERIES: list[dict[str, str]] = [
    {},
    {"limit": "50", "offset": "120"},
    {"limit": "1000"},
    {"bbox": "126.9,37.5,127.0,37.6"},
    {"bbox": "37.5,126.9,37.6,127.0", "bbox-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"},
    {"datetime": "2015-09-01T00:00:00Z/2015-12-31T00:00:00Z"},
    {"datetime": "2015-09-06T00:00:00Z"},
    {"place": "마포구"},
    {"numOfUnits": "10"},
    {"filter": "numOfUnits > 10 AND place = '마포구'"},
    {"filter": "name LIKE '%역%'"},
    {"filter": "name NOT LIKE '%역%'", "limit": "500"},
    {"filter": "CASEI(place) LIKE casei('%포%')"},
    {"filter": "place IN ('마포구', '종로구')"},
    {"filter": "numOfUnits NOT IN (10, 15)", "limit": "500"},
    {"filter": "numOfUnits BETWEEN 5 AND 10"},
    {"filter": "address IS NULL"},
    {"filter": "address IS NOT NULL AND NOT (numOfUnits > 10)", "limit": "500"},
    {"filter": "numOfUnits * 2 + 1 > 31 OR latitude / 2 < 18.77"},
    {"filter": "numOfUnits / 4 > 3"},
    {"filter": f"S_INTERSECTS(geometry, {POLYGON})"},
    {"filter": f"S_WITHIN(geometry, {POLYGON}) AND numOfUnits >= 10"},
    {"filter": f"S_DISJOINT(geometry, {POLYGON})", "limit": "500"},
    {"filter": "BBOX(geometry, 126.9, 37.5, 127.0, 37.6)"},
    {"filter": "S_INTERSECTS(geometry, POLYGON((37.54 126.90, 37.54 126.95, 37.58 126.95, 37.58 126.90, "
               "37.54 126.90)))",
     "filter-crs": "http://www.opengis.net/def/crs/EPSG/0/4326"},
    {"filter": "T_BEFORE(startDate, TIMESTAMP('2015-10-01T00:00:00Z'))"},
    {"filter": "T_AFTER(startDate, DATE('2016-01-01'))"},
    {"filter": "T_DURING(startDate, INTERVAL('2015-09-01T00:00:00Z', '2016-06-01T00:00:00Z'))"},
    {"filter": "startDate > TIMESTAMP('2016-01-01T00:00:00Z')"},
    {"filter-lang": "cql2-json", "filter": json.dumps({"op": "and", "args": [
        {"op": ">", "args": [{"property": "numOfUnits"}, 10]},
        {"op": "s_intersects", "args": [{"property": "geometry"}, POLYGON_JSON]}]})},
    {"filter-lang": "cql2-json",
     "filter": '{"op": "like", "args": [{"property": "name"}, "%역%"]}'},
    {"sortby": "-numOfUnits", "limit": "60"},
    {"sortby": "numOfUnits,-latitude", "limit": "60", "offset": "30"},
    {"properties": "name,numOfUnits"},
    {"skipGeometry": "true", "limit": "20"},
    {"resulttype": "hits"},
]


def _page(api: httpx.Client, cid: str, params: dict[str, str]) -> dict[str, Any]:
    res = api.get(f"/collections/{cid}/items", params=params)
    assert res.status_code == 200, (params, res.text)
    return res.json()


def _rounded(geometry: Any, digits: int = 6) -> Any:
    if geometry is None:
        return None
    return [round(v, digits) for v in geometry["coordinates"]]


@pytest.mark.parametrize("params", SAME_QUERIES, ids=[str(i) for i in range(len(SAME_QUERIES))])
def test_same_answers_as_the_file(api: httpx.Client, params: dict[str, str]) -> None:
    live, loaded = _page(api, "bikes_pg", params), _page(api, "bikes_file", params)
    assert live["numberMatched"] == loaded["numberMatched"], params
    assert [f["id"] for f in live["features"]] == [f["id"] for f in loaded["features"]], params
    assert [f["properties"] for f in live["features"]] == [f["properties"] for f in loaded["features"]]
    assert [_rounded(f["geometry"]) for f in live["features"]] == [_rounded(f["geometry"]) for f in loaded["features"]]
    assert [link["rel"] for link in live["links"]] == [link["rel"] for link in loaded["links"]]
    if not params.get("resulttype"):
        assert live["numberReturned"] == len(live["features"])


def test_filters_select_something(api: httpx.Client) -> None:
    """The comparison above means little if the filters select nothing or everything."""
    total = _page(api, "bikes_pg", {"resulttype": "hits"})["numberMatched"]
    assert total == ROWS
    for params in SAME_QUERIES:
        if "filter" in params or "bbox" in params or "datetime" in params:
            n = _page(api, "bikes_pg", {**params, "resulttype": "hits"})["numberMatched"]
            assert 0 < n < total, params


@pytest.mark.parametrize("crs", [4326, 25832, 5186, 3857])
def test_output_crs_in_its_axis_order(api: httpx.Client, crs: int) -> None:
    params = {"crs": f"http://www.opengis.net/def/crs/EPSG/0/{crs}", "limit": "30"}
    live, loaded = _page(api, "bikes_pg", params), _page(api, "bikes_file", params)
    for a, b in zip(live["features"], loaded["features"], strict=True):
        assert a["geometry"]["coordinates"] == pytest.approx(b["geometry"]["coordinates"], abs=0.01)
    first = live["features"][0]
    if crs == 4326:  # latitude first
        assert first["geometry"]["coordinates"] == pytest.approx(
            [first["properties"]["latitude"], first["properties"]["longitude"]])
    res = api.get("/collections/bikes_pg/items", params=params)
    assert res.headers["content-crs"] == f"<http://www.opengis.net/def/crs/EPSG/0/{crs}>"


def test_item_by_id(api: httpx.Client) -> None:
    fid = _page(api, "bikes_pg", {"limit": "1", "offset": "7"})["features"][0]["id"]
    live = api.get(f"/collections/bikes_pg/items/{fid}").json()
    loaded = api.get(f"/collections/bikes_file/items/{fid}").json()
    assert live["id"] == fid and live["properties"] == loaded["properties"]
    assert api.get("/collections/bikes_pg/items/999999").status_code == 404
    assert api.get("/collections/bikes_pg/items/not-a-number").status_code == 404
    five186 = api.get(f"/collections/bikes_pg/items/{fid}",
                      params={"crs": "http://www.opengis.net/def/crs/EPSG/0/5186"}).json()
    assert five186["geometry"]["coordinates"][0] > 500_000  # northing first, near Seoul
    assert api.get(f"/collections/bikes_pg/items/{fid}", params={"properties": "name"}).json()[
        "properties"] == {"name": loaded["properties"]["name"]}


def test_paging_follows_next_links(api: httpx.Client) -> None:
    seen: list[int] = []
    url: str | None = "/collections/bikes_pg/items?limit=150&sortby=-numOfUnits"
    while url:
        doc = api.get(url).json()
        seen += [f["id"] for f in doc["features"]]
        url = next((link["href"] for link in doc["links"] if link["rel"] == "next"), None)
    assert len(seen) == ROWS and len(set(seen)) == ROWS


def _follow(api: httpx.Client, cid: str, params: dict[str, str]) -> tuple[list[int], list[str]]:
    """Every id, in order, following the next links from the first page; and those links."""
    seen: list[int] = []
    hrefs: list[str] = []
    url: str | None = f"/collections/{cid}/items?{urlencode(params)}"
    while url and len(hrefs) < 50:  # a cursor not honoured would loop on the first page
        res = api.get(url)
        assert res.status_code == 200, (url, res.text)
        seen += [f["id"] for f in res.json()["features"]]
        url = next((ln["href"] for ln in res.json()["links"] if ln["rel"] == "next"), None)
        hrefs += [url] if url else []
    return seen, hrefs


@pytest.mark.parametrize("params", [
    {"limit": "70"},
    {"limit": "80", "sortby": "-numOfUnits"},  # ties and nulls: the key breaks them
    {"limit": "45", "sortby": "numOfUnits,-latitude"},
    {"limit": "33", "sortby": "-startDate,numOfUnits", "filter": "numOfUnits > 5 OR address IS NULL"},
    {"limit": "25", "bbox": "126.9,37.5,127.0,37.6", "sortby": "-latitude"},
])
def test_keyset_next_links_give_the_files_order(api: httpx.Client, params: dict[str, str]) -> None:
    live, live_links = _follow(api, "bikes_pg", params)
    loaded, loaded_links = _follow(api, "bikes_file", params)
    assert live == loaded and len(set(live)) == len(live)
    assert len(live) > 2 * int(params["limit"])  # several pages were followed
    for href in live_links + loaded_links:  # the file's import in the store pages by key too
        query = dict(parse_qsl(urlsplit(href).query))
        assert "cursor" in query and "offset" not in query, href
    assert len(live_links) == len(loaded_links)  # no empty page at the end


@pytest.mark.parametrize("sortby", ["", "weekday", "-weekday", "weekday,-id"])
def test_keyset_pages_of_a_large_table_match_offset_pages(api: httpx.Client, sortby: str) -> None:
    """A NOT NULL ascending sort key pages by one row comparison; the others by the expanded one."""
    params = {"limit": "700", "filter": "id < 60000"} | ({"sortby": sortby} if sortby else {})
    url = f"/collections/big/items?{urlencode(params)}"
    for n in range(4):
        assert n == 0 or "cursor=" in url
        doc = api.get(url).json()
        by_offset = _page(api, "big", {**params, "offset": str(700 * n)})
        assert [f["id"] for f in doc["features"]] == [f["id"] for f in by_offset["features"]], (sortby, n)
        url = next(ln["href"] for ln in doc["links"] if ln["rel"] == "next")


def test_explicit_offset_still_pages_by_offset(api: httpx.Client) -> None:
    doc = _page(api, "bikes_pg", {"limit": "50", "offset": "120", "sortby": "-numOfUnits"})
    nxt = dict(parse_qsl(urlsplit(next(ln["href"] for ln in doc["links"] if ln["rel"] == "next")).query))
    assert nxt["offset"] == "170" and "cursor" not in nxt
    all_ids = [f["id"] for f in _page(api, "bikes_file", {"limit": "400", "sortby": "-numOfUnits"})["features"]]
    assert [f["id"] for f in doc["features"]] == all_ids[120:170]


def _b64(doc: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "!!not base64!!", _b64([1, 2]), _b64({"s": [], "v": []}), _b64({"s": [], "v": [None]}),
    _b64({"s": ["numOfUnits"], "v": ["3", "17"]}),  # made for another sortby
    _b64({"s": [], "v": ["not-a-number"]}),  # the key is an integer
])
def test_malformed_cursor_is_400(api: httpx.Client, cursor: str) -> None:
    res = api.get("/collections/bikes_pg/items", params={"cursor": cursor})
    assert res.status_code == 400, res.text
    assert res.json()["description"].startswith("cursor: "), res.text


def test_cursor_needs_a_collection_paging_by_key(api: httpx.Client) -> None:
    first = _page(api, "bikes_pg", {"limit": "10"})
    href = next(ln["href"] for ln in first["links"] if ln["rel"] == "next")
    cursor = dict(parse_qsl(urlsplit(href).query))["cursor"]
    assert len(_page(api, "bikes_pg", {"cursor": cursor, "limit": "10"})["features"]) == 10
    # the file's import in the store pages by key too (its own: the row number)
    assert len(_page(api, "bikes_file", {"cursor": cursor, "limit": "10"})["features"]) == 10
    res = api.get("/collections/bikes_pg/items", params={"cursor": cursor, "offset": "10"})
    assert res.status_code == 400 and "cursor" in res.json()["description"], res.text
    # a collection that pages by offset (a SensorThings one) refuses a cursor
    res = api.get("/collections/things/items", params={"cursor": cursor})
    assert res.status_code == 400 and "cursor" in res.json()["description"], res.text


def test_queryables_come_from_the_columns(api: httpx.Client) -> None:
    props = api.get("/collections/bikes_pg/queryables", params={"f": "json"}).json()["properties"]
    assert props["numOfUnits"]["type"] == "integer" or props["numOfUnits"]["type"] == "number"
    assert props["latitude"]["type"] == "number"
    assert props["name"]["type"] == "string"
    assert "geom" not in props


def test_unknown_property_is_400(api: httpx.Client) -> None:
    for params in ({"filter": "nope = 1"}, {"filter": "\"name; DROP TABLE bikes\" = 'x'"}, {"sortby": "nope"},
                   {"properties": "nope"}, {"nope": "1"}, {"filter": "numOfUnits = 'ten'"},
                   {"filter": "name = 10"}, {"numOfUnits": "ten"}):
        res = api.get("/collections/bikes_pg/items", params=params)
        assert res.status_code == 400, (params, res.text)
    assert _page(api, "bikes_pg", {"resulttype": "hits"})["numberMatched"] == ROWS


def test_department_changes_show_at_once(api: httpx.Client, db: str) -> None:
    import psycopg

    before = api.get("/collections/scratch/items")
    assert before.headers["cache-control"] == "no-cache"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO scratch (id, name, \"numOfUnits\", geom) "
                     "VALUES (990001, 'new station', 3, ST_SetSRID(ST_MakePoint(126.98, 37.57), 4326))")
    found = api.get("/collections/scratch/items/990001")
    assert found.status_code == 200 and found.json()["properties"]["name"] == "new station"
    after = api.get("/collections/scratch/items")
    assert after.json()["numberMatched"] == before.json()["numberMatched"] + 1
    assert after.headers["etag"] != before.headers["etag"]
    assert api.get("/collections/scratch/items", headers={"if-none-match": after.headers["etag"]}).status_code == 304
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE scratch SET name = 'renamed' WHERE id = 990001")
    assert api.get("/collections/scratch/items/990001").json()["properties"]["name"] == "renamed"
    assert _page(api, "scratch", {"filter": "name = 'renamed'"})["numberMatched"] == 1
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DELETE FROM scratch WHERE id = 990001")
    assert api.get("/collections/scratch/items/990001").status_code == 404
    assert api.get("/collections/scratch/items").json()["numberMatched"] == before.json()["numberMatched"]


def test_dropped_table_is_503_naming_the_collection(api: httpx.Client, db: str) -> None:
    import psycopg

    assert api.get("/collections/scratch/items").status_code == 200
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TABLE scratch")
    for path in ("/collections/scratch/items", "/collections/scratch/items/1"):
        res = api.get(path)
        assert res.status_code == 503, res.text
        assert "scratch" in res.json()["description"] and res.headers["retry-after"]
    assert api.get("/collections/scratch/items", params={"f": "html"}).status_code == 503  # pygeoapi's page
    assert api.get("/collections/bikes_pg/items", params={"limit": "1"}).status_code == 200


def test_unreachable_database_is_503_naming_the_collection(ogc: Server, db: str, tmp_path: Path) -> None:
    """A department's whole database gone while serving (dropped, its connections cut): that collection answers
    503 naming it; the other collections (`ogc` made their table) and the SensorThings API on the main store go on."""
    import yaml

    gone, store = create_pg(PG_URL, "udp_gone"), create_pg(PG_URL)
    try:
        collections = {"doomed": {"source": _table(gone.url, "trees", _stations()[:30])},
                       "bikes_pg": {"source": f"{db}#public.bikes"}}
        (tmp_path / "config.yml").write_text(yaml.safe_dump({"title": "Gone", "collections": collections}))
        srv = start_server(store.url, "postgresql", ["--config", str(tmp_path / "config.yml")])
        try:
            api, sta = srv.http("/ogcapi"), srv.http("/v1.1")
            assert api.get("/collections/doomed/items").status_code == 200
            gone.drop()  # DROP DATABASE … WITH (FORCE): the pool's connections are terminated too
            for path in ("/collections/doomed/items", "/collections/doomed/items/1",
                         "/collections/doomed/items?limit=5&sortby=numOfUnits"):
                res = api.get(path)
                assert res.status_code == 503, res.text
                assert "doomed" in res.json()["description"] and res.headers["retry-after"]
            assert api.get("/collections/bikes_pg/items", params={"limit": "1"}).status_code == 200
            things = sta.get("/Things")
            assert things.status_code == 200 and "value" in things.json()
        finally:
            stop_server(srv)
    finally:
        gone.drop()
        store.drop()


def _serve_fails(tmp_path: Path, source: str) -> str:
    (tmp_path / "config.yml").write_text(f"collections:\n  depot:\n    source: '{source}'\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp_path / "config.yml"),
                          "--store", f"sqlite:///{tmp_path / 'u.db'}", "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    return out.stderr


def test_table_without_key_or_geometry_stops_start_up(db: str, tmp_path: Path) -> None:
    rows = _stations()[:5]
    no_key = _serve_fails(tmp_path, _table(db, "no_key", rows, key=False))
    assert "depot" in no_key and "key" in no_key
    no_geom = _serve_fails(tmp_path, _table(db, "no_geom", rows, geometry=False))
    assert "depot" in no_geom and "geometry" in no_geom
    missing = _serve_fails(tmp_path, f"{db}#public.not_there")
    assert "depot" in missing and "not_there" in missing


def test_udp_check_reads_the_table(db: str, tmp_path: Path) -> None:
    source = f"{db}#public.bikes"
    (tmp_path / "config.yml").write_text(f"collections:\n  depot:\n    source: '{source}'\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "check", "--config", str(tmp_path / "config.yml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "depot" in out.stdout and f"{ROWS}" in out.stdout


def test_gdal_reads_the_live_collection(ogc: Server) -> None:
    import pyogrio

    gdf = pyogrio.read_dataframe(f"OAPIF:{ogc.url}/ogcapi", layer="bikes_pg")
    assert len(gdf) == ROWS
    assert {"name", "numOfUnits"} <= set(gdf.columns)


def test_large_unfiltered_table_says_its_count_is_an_estimate(api: httpx.Client) -> None:
    from provider_plugins.postgis import ESTIMATE_ABOVE

    rows = ESTIMATE_ABOVE + 20_000
    page = _page(api, "big", {"limit": "500", "offset": str(rows - 700)})
    assert "numberMatched" not in page
    assert abs(page["numberMatchedEstimate"] - rows) < rows * 0.1
    assert [f["id"] for f in page["features"]] == list(range(rows - 699, rows - 199))
    assert any(link["rel"] == "next" for link in page["links"])  # a full page: there may be more
    last = _page(api, "big", {"limit": "500", "offset": str(rows - 200)})
    assert len(last["features"]) == 200 and not any(link["rel"] == "next" for link in last["links"])
    # counted exactly when asked for, or when filtered
    assert _page(api, "big", {"resulttype": "hits"})["numberMatched"] == rows
    assert _page(api, "big", {"filter": "weekday = 3", "limit": "1"})["numberMatched"] == rows // 7 + (rows % 7 >= 3)


def test_statement_timeout_is_400(ogc: Server, db: str, tmp_path: Path) -> None:
    """(`ogc` made the table `big`.)"""
    srv = serve_config(tmp_path, {"collections": {"big": {"source": f"{db}#public.big"}},
                                  "server": {"statement_timeout_s": 0.001}})
    try:
        res = srv.http("/ogcapi").get("/collections/big/items",
                                      params={"filter": "weekday * 3 + id / 7 > 5 AND NOT (weekday = 2)"})
        assert res.status_code == 400, res.text
        assert "statement_timeout_s" in res.json()["description"]
    finally:
        stop_server(srv)
