"""OGC API Features through a running platform: every source format, CRS, CQL2, paging, errors, and the
real clients (GDAL's OAPIF driver through pyogrio, OWSLib, the request sequence QGIS sends)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from tests.conftest import (
    DEMO_DATA,
    PG_URL,
    ROOT,
    TEST_DATA,
    Server,
    _pg_database,
    create_pg,
    start_server,
    stop_server,
    wait_until,
)

SEOUL_SHP = DEMO_DATA / "seoul_municipalities.shp"
BIKES = DEMO_DATA / "ttareungyi_bike_stations.csv"
SUBWAY = DEMO_DATA / "subway_station_master.csv"
STADTTEILE = TEST_DATA / "cosi_two_stadtteile_epsg25832.json"
POSTCODES = DEMO_DATA / "hamburg_postcode_areas.geojson"
DONGS = DEMO_DATA / "seoul_dongs.json"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/"


def _sources(tmp: Path) -> dict[str, Any]:
    """Real data written in every format the issue names."""
    stadtteile = pyogrio.read_dataframe(STADTTEILE)
    stadtteile = stadtteile.set_crs(25832, allow_override=True)
    pyogrio.write_dataframe(stadtteile, tmp / "stadtteile.gml", driver="GML")
    dongs = pyogrio.read_dataframe(DONGS)
    pyogrio.write_dataframe(dongs, tmp / "dongs.gpkg", driver="GPKG", layer="dongs")
    pyogrio.write_dataframe(pyogrio.read_dataframe(POSTCODES), tmp / "postcodes.fgb", driver="FlatGeobuf")
    bikes = pyogrio.read_dataframe(BIKES)  # the CSV as text columns, for a WKT copy
    rows = ["id,name,numOfUnits,wkt"]
    for _, r in bikes.iterrows():
        if r["latitude"]:
            rows.append(f'{r["id"]},"{r["name"].strip()}",{r["numOfUnits"]},"POINT ({r["longitude"]} {r["latitude"]})"')
    (tmp / "bikes_wkt.csv").write_text("\n".join(rows), encoding="utf-8")
    return {
        "districts": {"title": "Seoul districts", "source": str(SEOUL_SHP), "encoding": "cp949", "crs": "EPSG:5174"},
        "stadtteile": {"title": "Hamburg Stadtteile (GML, EPSG:25832)", "source": "stadtteile.gml"},
        "dongs": {"title": "Seoul dongs (GeoPackage)", "source": "dongs.gpkg", "layer": "dongs"},
        "postcodes": {"title": "Hamburg postcodes (FlatGeobuf)", "source": "postcodes.fgb"},
        "bikes": {"title": "Bike-share stations", "source": str(BIKES), "x": "longitude", "y": "latitude",
                  "keywords": ["mobility"]},
        "bikes_timed": {"title": "Bike-share stations by start date", "source": str(BIKES), "x": "longitude",
                        "y": "latitude", "time": "startDate"},
        "subway": {"title": "Subway stations", "source": str(SUBWAY), "encoding": "cp949", "x": "경도", "y": "위도"},
        "bikes_wkt": {"title": "Bike stations (WKT)", "source": "bikes_wkt.csv", "wkt": "wkt", "id": "id"},
    }


def _postgis_table(url: str) -> str:
    """Seoul's districts as a PostGIS table in EPSG:5174."""
    import sqlalchemy

    gdf = pyogrio.read_dataframe(SEOUL_SHP, encoding="cp949").set_crs(5174, allow_override=True)
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.exec_driver_sql("CREATE TABLE public.gu (gid serial PRIMARY KEY, code text, name text, "
                             "name_eng text, geom geometry(MultiPolygon, 5174))")
        for _, r in gdf.iterrows():
            geom = shapely.geometry.MultiPolygon([r.geometry]) if r.geometry.geom_type == "Polygon" else r.geometry
            conn.exec_driver_sql("INSERT INTO public.gu (code, name, name_eng, geom) VALUES "
                                 "(%s, %s, %s, ST_GeomFromText(%s, 5174))", (r.code, r["name"], r.name_eng, geom.wkt))
    engine.dispose()
    return f"{url}#public.gu"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ogc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform serving every source format, imported into each store (SQLite; PostGIS with UDP_TEST_PG)."""
    import yaml

    if request.param == "postgresql" and not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: the files imported into PostGIS are not tested")
    tmp = tmp_path_factory.mktemp("features")
    collections = _sources(tmp)
    pg = None
    if PG_URL:
        pg = _pg_database()
        collections["gu_postgis"] = {"title": "Seoul districts (PostGIS)", "source": _postgis_table(next(pg)),
                                     "id": "gid"}
    (tmp / "config.yml").write_text(yaml.safe_dump({"title": "Test city", "collections": collections},
                                                   allow_unicode=True), encoding="utf-8")
    store = None if request.param == "sqlite" else create_pg(PG_URL)
    try:
        srv = start_server(f"sqlite:///{tmp / 'udp.db'}" if store is None else store.url, request.param,
                           ["--config", str(tmp / "config.yml")])
        srv.collections = collections  # type: ignore[attr-defined]
        try:
            yield srv
        finally:
            stop_server(srv)
    finally:
        if pg is not None:
            pg.close()
        if store is not None:
            store.drop()


@pytest.fixture
def api(ogc: Server) -> httpx.Client:
    return httpx.Client(base_url=ogc.url + "/ogcapi", timeout=60)


def items(api: httpx.Client, cid: str, **params: Any) -> dict[str, Any]:
    r = api.get(f"/collections/{cid}/items", params=params)
    assert r.status_code == 200, r.text
    return r.json()


# -- the documents QGIS and GDAL read first --------------------------------------------------------
def test_landing_conformance_and_openapi(api: httpx.Client, ogc: Server) -> None:
    landing = api.get("/", headers={"Accept": "application/json"})
    assert landing.status_code == 200 and landing.headers["content-type"].startswith("application/json")
    rels = {ln["rel"]: ln for ln in landing.json()["links"]}
    assert rels["service-desc"]["type"] == "application/vnd.oai.openapi+json;version=3.0"
    assert rels["data"]["href"] == ogc.url + "/ogcapi/collections"
    assert rels["conformance"]["href"] == ogc.url + "/ogcapi/conformance"
    conf = set(api.get("/conformance").json()["conformsTo"])
    for needed in ("ogcapi-features-3/1.0/conf/filter", "ogcapi-features-3/1.0/conf/features-filter",
                   "cql2/1.0/conf/basic-cql2", "cql2/1.0/conf/cql2-text", "cql2/1.0/conf/cql2-json",
                   "cql2/1.0/conf/basic-spatial-functions", "ogcapi-features-3/1.0/conf/queryables",
                   "ogcapi-features-2/1.0/conf/crs", "ogcapi-features-1/1.0/conf/geojson"):
        assert any(c.endswith(needed) for c in conf), needed
    assert not any("create-replace-delete" in c for c in conf)  # no transactions: not declared
    oas = api.get(rels["service-desc"]["href"])
    assert oas.status_code == 200
    doc = oas.json()
    limit = doc["components"]["parameters"]["limit"]["schema"]
    assert limit["maximum"] == 10_000 and limit["default"] == 100
    assert '"$ref": "http' not in oas.text and '"$ref":"http' not in oas.text  # no remote references
    # the landing page's own link to the platform's landing page
    assert any(ln["href"].endswith("/ogcapi") for ln in httpx.get(ogc.url + "/").json()["links"])


def test_collections_crs_and_trailing_slash(api: httpx.Client, ogc: Server) -> None:
    listed = {c["id"]: c for c in api.get("/collections").json()["collections"]}
    sta_views = {"things", "locations", "features_of_interest", "latest_values"}
    assert set(listed) == set(ogc.collections) | sta_views | {"catalogue"}  # type: ignore[attr-defined]
    for cid in listed:
        one = api.get(f"/collections/{cid}")
        slash = api.get(f"/collections/{cid}/")
        assert one.status_code == slash.status_code == 200
        doc = one.json()
        if doc["itemType"] == "record":  # the catalogue: records in CRS84 only
            continue
        assert doc["crs"][0] == CRS84
        for code in (4326, 3857, 25832, 5186, 5179):
            assert f"{EPSG}{code}" in doc["crs"]
        assert doc["storageCrs"] in doc["crs"]
        q = api.get(f"/collections/{cid}/queryables")
        assert q.status_code == 200 and "geometry" in q.json()["properties"]
    assert listed["stadtteile"]["storageCrs"] == f"{EPSG}25832"
    assert listed["districts"]["storageCrs"] == f"{EPSG}5174"
    west, south, east, north = listed["districts"]["extent"]["spatial"]["bbox"][0]
    assert 126.7 < west < east < 127.3 and 37.4 < south < north < 37.8  # reprojected from Bessel TM, in Seoul


def test_every_collection_read_in_full_by_gdal(api: httpx.Client, ogc: Server) -> None:
    for cid in ogc.collections:  # type: ignore[attr-defined]
        matched = items(api, cid, limit=1)["numberMatched"]
        gdf = pyogrio.read_dataframe(f"OAPIF:{ogc.url}/ogcapi", layer=cid)
        assert len(gdf) == matched, cid
    districts = pyogrio.read_dataframe(f"OAPIF:{ogc.url}/ogcapi", layer="districts")
    assert "강남구" in set(districts["name"])  # CP949 decoded


def test_owslib(ogc: Server) -> None:
    from owslib.ogcapi.features import Features

    w = Features(ogc.url + "/ogcapi")
    ids = {c["id"] for c in w.collections()["collections"]}
    assert "bikes" in ids
    page = w.collection_items("bikes", limit=5)
    assert len(page["features"]) == 5 and page["numberMatched"] == 1541
    boxed = w.collection_items("bikes", bbox=[126.9, 37.5, 127.0, 37.6], limit=1000)
    for f in boxed["features"]:
        lon, lat = f["geometry"]["coordinates"]
        assert 126.9 <= lon <= 127.0 and 37.5 <= lat <= 37.6
    assert w.collection_queryables("bikes")["properties"]["numOfUnits"]["type"] == "integer"


def test_qgis_request_sequence(ogc: Server) -> None:
    qgis = httpx.Client(base_url=ogc.url + "/ogcapi", timeout=60, headers={"User-Agent": "QGIS/32200"})
    assert qgis.get("/", headers={"Accept": "application/json"}).status_code == 200
    assert qgis.get("/openapi", headers={"Accept": "application/vnd.oai.openapi+json;version=3.0"}).status_code == 200
    assert qgis.get("/collections/stadtteile", headers={"Accept": "application/json"}).status_code == 200
    assert qgis.get("/collections/stadtteile/", headers={"Accept": "application/json"}).status_code == 200
    assert qgis.get("/conformance", headers={"Accept": "application/json"}).status_code == 200
    queryables = qgis.get("/collections/stadtteile/queryables", headers={"Accept": "application/schema+json"})
    assert queryables.status_code == 200
    r = qgis.get("/collections/stadtteile/items?limit=10", headers={"Accept": "application/geo+json, application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    opt = qgis.options("/collections/stadtteile/items")
    assert "GET" in opt.headers["allow"]
    # a filter drawn in EPSG:25832, a bbox in EPSG:25832, output in EPSG:25832
    feats = r.json()["features"]
    centre = shapely.geometry.shape(feats[0]["geometry"]).representative_point()
    to_utm = Transformer.from_crs("OGC:CRS84", "EPSG:25832", always_xy=True)
    x, y = to_utm.transform(centre.x, centre.y)
    got = qgis.get("/collections/stadtteile/items", params={
        "filter": f"S_INTERSECTS(geometry, POINT({x} {y}))", "filter-lang": "cql2-text",
        "filter-crs": f"{EPSG}25832", "bbox": f"{x - 10},{y - 10},{x + 10},{y + 10}", "bbox-crs": f"{EPSG}25832",
        "crs": f"{EPSG}25832", "limit": 1000}, headers={"Accept": "application/geo+json, application/json"})
    assert got.status_code == 200, got.text
    assert got.headers["content-crs"] == f"<{EPSG}25832>"
    body = got.json()
    assert body["numberMatched"] == 1 and body["features"][0]["id"] == feats[0]["id"]
    ring = body["features"][0]["geometry"]["coordinates"][0]
    assert 550_000 < (ring[0][0] if isinstance(ring[0][0], float) else ring[0][0][0]) < 600_000  # easting first


# -- filters ---------------------------------------------------------------------------------------
def test_cql2_on_csv_and_gml(api: httpx.Client) -> None:
    big = items(api, "bikes", filter="numOfUnits >= 20 AND place = '마포구'", limit=1000)
    assert big["numberMatched"] == len(big["features"]) > 0
    assert all(f["properties"]["numOfUnits"] >= 20 and f["properties"]["place"] == "마포구" for f in big["features"])
    total = items(api, "bikes", filter="place = '마포구'", limit=1)["numberMatched"]
    assert total > big["numberMatched"]
    liked = items(api, "bikes", filter="name LIKE '%합정%'", limit=100)
    assert liked["numberMatched"] == 4 and all("합정" in f["properties"]["name"] for f in liked["features"])
    gml = items(api, "stadtteile", limit=10)
    name_col = next(k for k, v in gml["features"][0]["properties"].items() if isinstance(v, str) and v)
    first = gml["features"][0]["properties"][name_col]
    one = items(api, "stadtteile", filter=f"{name_col} = '{first}'")
    assert one["numberMatched"] == 1 and one["features"][0]["properties"][name_col] == first
    as_json = api.get("/collections/bikes/items", params={
        "filter-lang": "cql2-json", "limit": 1000,
        "filter": '{"op": "and", "args": [{"op": ">=", "args": [{"property": "numOfUnits"}, 20]},'
                  ' {"op": "=", "args": [{"property": "place"}, "마포구"]}]}'}).json()
    assert as_json["numberMatched"] == big["numberMatched"]
    spatial = items(api, "bikes", limit=1000, filter="S_INTERSECTS(geometry, POLYGON((126.9 37.5, 127.0 37.5, "
                                                     "127.0 37.6, 126.9 37.6, 126.9 37.5)))")
    assert spatial["numberMatched"] == items(api, "bikes", bbox="126.9,37.5,127.0,37.6", limit=1)["numberMatched"]
    wkt = items(api, "bikes_wkt", filter="numOfUnits > 30", limit=100)
    assert wkt["numberMatched"] > 0 and all(f["properties"]["numOfUnits"] > 30 for f in wkt["features"])
    within = items(api, "bikes", limit=10, filter="S_WITHIN(geometry, POLYGON((126.9 37.5, 127.0 37.5, "
                                                  "127.0 37.6, 126.9 37.6, 126.9 37.5)))")
    assert within["numberMatched"] == spatial["numberMatched"]
    prop_eq = items(api, "bikes", place="마포구", limit=1)
    assert prop_eq["numberMatched"] == total


def test_crs_output_axis_order(api: httpx.Client) -> None:
    base = items(api, "bikes", limit=1, sortby="id")["features"][0]
    lon, lat = base["geometry"]["coordinates"]
    r = api.get("/collections/bikes/items", params={"limit": 1, "sortby": "id", "crs": f"{EPSG}4326"})
    assert r.headers["content-crs"] == f"<{EPSG}4326>"
    assert r.json()["features"][0]["geometry"]["coordinates"] == pytest.approx([lat, lon])  # latitude first
    for code, check in ((3857, lambda x, y: 14_000_000 < x < 14_200_000),
                        (25832, lambda x, y: True),
                        (5186, lambda n, e: 500_000 < n < 600_000 and 150_000 < e < 250_000),  # northing first
                        (5179, lambda n, e: 1_900_000 < n < 2_000_000 and 900_000 < e < 1_000_000)):
        got = items(api, "bikes", limit=1, sortby="id", crs=f"{EPSG}{code}")["features"][0]["geometry"]
        x, y = got["coordinates"]
        assert check(x, y), (code, x, y)
        back = Transformer.from_crs(f"EPSG:{code}", "OGC:CRS84")
        assert back.transform(x, y) == pytest.approx((lon, lat), abs=1e-6)
    own = items(api, "districts", limit=1, crs=f"{EPSG}5174")["features"][0]["geometry"]
    first = np.array(own["coordinates"][0][0])
    shp = pyogrio.read_dataframe(SEOUL_SHP, encoding="cp949")
    orig = np.array(shp.geometry.iloc[0].exterior.coords[0])
    assert np.allclose(first[::-1], orig, atol=0.01)  # EPSG:5174 is northing first; the file easting first


def test_paging_sorting_selection(api: httpx.Client) -> None:
    page = items(api, "subway", limit=400)
    seen = [f["id"] for f in page["features"]]
    while next((ln for ln in page["links"] if ln["rel"] == "next"), None):
        page = httpx.get(next(ln["href"] for ln in page["links"] if ln["rel"] == "next"), timeout=30).json()
        seen += [f["id"] for f in page["features"]]
    assert len(seen) == len(set(seen)) == page["numberMatched"]
    desc = items(api, "bikes", sortby="-numOfUnits,name", limit=3)["features"]
    assert [f["properties"]["numOfUnits"] for f in desc] == sorted((f["properties"]["numOfUnits"] for f in desc),
                                                                   reverse=True)
    slim = items(api, "bikes", properties="name,numOfUnits", skipGeometry="true", limit=2)["features"]
    assert set(slim[0]["properties"]) == {"name", "numOfUnits"} and slim[0]["geometry"] is None
    hits = items(api, "bikes", resulttype="hits", filter="numOfUnits > 20")
    assert hits["features"] == [] and hits["numberMatched"] > 0
    one = api.get("/collections/subway/items/" + str(seen[0]))
    assert one.status_code == 200 and one.json()["id"] == seen[0]
    assert api.get("/collections/subway/items/nope").status_code == 404


def test_datetime_on_a_time_column(api: httpx.Client) -> None:
    since = items(api, "bikes_timed", datetime="2018-01-01T00:00:00Z/..", limit=1000)
    assert since["numberMatched"] > 0
    assert all(f["properties"]["startDate"] >= "2018-01-01" for f in since["features"])
    before = items(api, "bikes_timed", datetime="../2017-12-31T23:59:59Z", limit=1)["numberMatched"]
    dated = items(api, "bikes_timed", filter="startDate IS NOT NULL", limit=1)["numberMatched"]
    assert since["numberMatched"] + before == dated
    day = items(api, "bikes_timed", datetime="2015-09-06", limit=1000)
    assert day["numberMatched"] > 0 and {f["properties"]["startDate"] for f in day["features"]} == {
        "2015-09-06T00:00:00Z"}
    assert api.get("/collections/bikes_timed/items", params={"datetime": "2019-01-01/2018-01-01"}).status_code == 400


def test_etag_and_cache_headers(api: httpx.Client) -> None:
    r = api.get("/collections/bikes/items", params={"limit": 5})
    assert r.headers["etag"] and "max-age" in r.headers["cache-control"]
    again = api.get("/collections/bikes/items", params={"limit": 5}, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(("params", "reason"), [
    ({"foo": "1"}, "foo: unknown query parameter"),
    ({"limit": "unlimited"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "100000"}, "limit"),
    ({"filter": "numOfUnits >"}, "filter"),
    ({"filter": "nope = 1"}, "unknown property 'nope'"),
    ({"filter": "numOfUnits > 'many'"}, "numbers"),
    ({"filter": "x", "filter-lang": "sql"}, "filter-lang"),
    ({"bbox": "1,2,3"}, "bbox"),
    ({"bbox": "1,2,3,north"}, "bbox"),
    ({"bbox": "127,38,126,37"}, "bbox"),
    ({"crs": "EPSG:99999"}, "crs"),
    ({"crs": f"{EPSG}2154"}, "not offered"),
    ({"bbox-crs": f"{EPSG}4326"}, "bbox-crs"),
    ({"properties": "nope"}, "properties"),
    ({"sortby": "nope"}, "sortby"),
    ({"datetime": "2020-01-01T00:00:00Z"}, "no time property"),
    ({"resulttype": "all"}, "resulttype"),
    ({"skipGeometry": "maybe"}, "skipGeometry"),
])
def test_bad_input_is_a_400_with_the_reason(api: httpx.Client, params: dict[str, str], reason: str) -> None:
    r = api.get("/collections/bikes/items", params=params)
    assert r.status_code == 400, r.text
    assert reason in r.json()["description"]


def test_links_follow_the_public_url(api: httpx.Client) -> None:
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "data.city.example", "X-Forwarded-Prefix": "/udp"}
    landing = api.get("/", headers=proxy).json()
    own = [ln for ln in landing["links"] if ln["rel"] in ("self", "data", "conformance", "service-desc")]
    assert len(own) == 4 and all(ln["href"].startswith("https://data.city.example/udp/ogcapi") for ln in own)
    page = api.get("/collections/bikes/items", params={"limit": 1}, headers=proxy).json()
    assert {ln["rel"] for ln in page["links"]} >= {"self", "next", "collection"}
    assert all(ln["href"].startswith("https://data.city.example/udp/ogcapi/") for ln in page["links"])


def test_other_endpoints_refuse_unknown_parameters(api: httpx.Client) -> None:
    assert api.get("/collections", params={"nope": 1}).status_code == 400
    assert api.get("/collections/bikes", params={"nope": 1}).status_code == 400
    assert api.get("/collections/nope/items").status_code == 404


def test_unreadable_source_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    (tmp_path / "config.yml").write_text("collections:\n  parks:\n    source: broken.gpkg\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp_path / "config.yml"),
                          "--store", f"sqlite:///{tmp_path / 'u.db'}", "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode != 0
    assert "parks" in out.stderr and "broken.gpkg" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_collection_config_names_the_key(tmp_path: Path) -> None:
    for body, message in (("collections:\n  parks:\n    source: x.csv\n    crs: EPSG:99999\n",
                           "collections.parks.crs: unknown CRS"),
                          ("collections:\n  parks:\n    sorce: x.csv\n", "collections.parks.sorce: unknown key")):
        (tmp_path / "config.yml").write_text(body, encoding="utf-8")
        out = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp_path / "config.yml"),
                              "--store", f"sqlite:///{tmp_path / 'u.db'}", "--port", "0"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode != 0 and message in out.stderr, out.stderr


# -- SensorThings entities as collections (both stores) --------------------------------------------
def test_sensorthings_collections_follow_the_store(server: Server, sta: httpx.Client) -> None:
    from tests.conftest import unique

    name = unique("aq")
    om = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
    r = sta.post("Things", json={
        "name": name, "description": "air quality station",
        "Locations": [{"name": f"{name} site", "description": "x", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [127.047, 37.517]}}],
        "Datastreams": [{"name": f"{name} PM10", "description": "pm", "observationType": om,
                         "unitOfMeasurement": {"name": "microgram per cubic metre", "symbol": "ug/m3",
                                               "definition": "x"},
                         "ObservedProperty": {"name": f"{name} PM10", "description": "pm10", "definition": "x"},
                         "Sensor": {"name": "s", "description": "s", "encodingType": "text/plain", "metadata": "x"},
                         "Observations": [{"phenomenonTime": "2026-11-27T10:00:00Z", "result": 31}]}]})
    assert r.status_code == 201, r.text
    api = httpx.Client(base_url=server.url + "/ogcapi", timeout=30)
    for cid in ("things", "locations", "features_of_interest", "latest_values"):
        got = items(api, cid, filter=f"name LIKE '{name}%'", limit=10)
        assert got["numberMatched"] >= 1, cid
        assert got["features"][0]["geometry"]["coordinates"] == [127.047, 37.517], cid
    filt = f"observedProperty = '{name} PM10' AND S_INTERSECTS(geometry, POLYGON((127 37.5, 127.1 37.5, " \
           "127.1 37.6, 127 37.6, 127 37.5)))"
    latest = api.get("/collections/latest_values/items", params={"filter": filt})
    feature = latest.json()["features"][0]
    assert feature["properties"]["result"] == 31 and feature["properties"]["unit"] == "ug/m3"
    assert feature["properties"]["selfLink"].startswith(server.url + "/v1.1/Datastreams(")
    far = items(api, "latest_values", filter=f"observedProperty = '{name} PM10'", bbox="0,0,1,1")
    assert far["numberMatched"] == 0
    # a new Observation shows at once, and the ETag changes with it
    ds = feature["properties"]["selfLink"]
    posted = sta.post(ds + "/Observations", json={"phenomenonTime": "2026-11-27T11:00:00Z", "result": 42})
    assert posted.status_code == 201
    again = api.get("/collections/latest_values/items", params={"filter": filt},
                    headers={"If-None-Match": latest.headers["etag"]})
    assert again.status_code == 200 and again.json()["features"][0]["properties"]["result"] == 42
    # the ETag is the data's, not the response's: its timeStamp a second later does not change it
    second = int(time.time())
    wait_until(lambda: int(time.time()) > second, 3, "the next second", 0.02)
    same = api.get("/collections/latest_values/items", params={"filter": filt},
                   headers={"If-None-Match": again.headers["etag"]})
    assert same.status_code == 304
    recent = items(api, "latest_values", filter=f"observedProperty = '{name} PM10'",
                   datetime="2026-11-27T10:30:00Z/..")
    assert recent["numberMatched"] == 1
    old = items(api, "latest_values", filter=f"observedProperty = '{name} PM10'", datetime="../2026-11-27T09:00:00Z")
    assert old["numberMatched"] == 0
    korea = items(api, "things", filter=f"name = '{name}'", crs=f"{EPSG}5186")["features"][0]["geometry"]
    assert 500_000 < korea["coordinates"][0] < 600_000  # northing first
    bad = api.get("/collections/things/items", params={"filter": "nope = 1"})
    assert bad.status_code == 400 and "nope" in bad.json()["description"]
