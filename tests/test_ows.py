"""WMS 1.3.0 and WFS 2.0 (MapServer behind /wms and /wfs) on both stores, read by real clients: OWSLib's
WebMapService and WebFeatureService and GDAL's WFS driver. Maps are checked by their pixels (a tree is drawn
where it stands, in every CRS, with the right axis order), features by their ids and values."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pyogrio
import pytest
import yaml
from owslib.fes2 import PropertyIsGreaterThan
from owslib.wfs import WebFeatureService
from owslib.wms import WebMapService
from PIL import Image
from pyproj import Transformer

from ows import mapserver
from tests.conftest import Server, add_station, serve_on

pytestmark = pytest.mark.skipif(mapserver.mapserv() is None,
                                reason="MapServer is not installed (Debian: cgi-mapserver): WMS/WFS tests skipped")

N = 400  # a 20 × 20 grid of trees, 0.005° apart, from (9.9025, 53.5025)
COLOUR = (18, 52, 86)  # #123456, the trees' colour in config.yml
SEOUL = [(1, 126.978, 37.5665), (2, 127.0276, 37.4979), (3, 126.9246, 37.5563)]


def _tree(i: int) -> tuple[float, float]:
    return 9.9025 + (i % 20) * 0.005, 53.5025 + (i // 20) * 0.005


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ows")
    rows = ["fid,name,height,lon,lat"] + [f"{i},tree {i},{i % 30},{_tree(i)[0]},{_tree(i)[1]}" for i in range(N)]
    (tmp / "trees.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "sites.csv").write_text("id,name,lon,lat\n" + "".join(f"{i},site {i},{x},{y}\n" for i, x, y in SEOUL),
                                   encoding="utf-8")
    square = [[9.90, 53.50], [10.00, 53.50], [10.00, 53.60], [9.90, 53.60], [9.90, 53.50]]
    (tmp / "areas.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": "A", "name": "Altona"},
         "geometry": {"type": "Polygon", "coordinates": [square]}}]}), encoding="utf-8")
    (tmp / "config.yml").write_text(yaml.safe_dump({
        "title": "Map city", "publisher": {"name": "City of Maps"},
        "contact": {"name": "GIS team", "email": "gis@example.org"},
        "collections": {
            "trees": {"source": "trees.csv", "x": "lon", "y": "lat", "id": "fid", "title": "Street trees",
                      "style": {"colour": "#123456"}},
            "sites": {"source": "sites.csv", "x": "lon", "y": "lat", "id": "id"},
            "areas": {"source": "areas.geojson", "id": "code"}}}), encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml"), "--workers", "2"])


def _image(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body)).convert("RGBA")


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True)) and pixel[3] > 200


def test_wms_capabilities_list_every_collection_in_the_services_crs(city: Server) -> None:
    wms = WebMapService(f"{city.url}/wms", version="1.3.0", timeout=60)
    assert wms.identification.title == "Map city"
    # (OWSLib 0.35 looks for the e-mail address outside the WMS namespace and never finds it)
    assert (wms.provider.contact.name, wms.provider.contact.organization) == ("GIS team", "City of Maps")
    assert {"trees", "sites", "areas", "things", "latest_values"} <= set(wms.contents)
    trees = wms["trees"]
    assert trees.title == "Street trees" and trees.queryable
    assert {"EPSG:4326", "EPSG:3857", "EPSG:25832", "EPSG:5186"} <= set(trees.crsOptions)
    assert trees.boundingBoxWGS84 == pytest.approx((9.9025, 53.5025, 9.9975, 53.5975), abs=1e-6)
    assert {"image/png", "image/jpeg"} <= set(wms.getOperationByName("GetMap").formatOptions)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:25832", "CRS:84"])
def test_getmap_draws_a_tree_where_it_stands_in_each_crs(city: Server, crs: str) -> None:
    """A 64 × 64 map centred on one tree, in a box of 100 m: its colour at the centre, nothing in the corners."""
    wms = WebMapService(f"{city.url}/wms", version="1.3.0", timeout=60)
    x, y = _tree(210)
    if crs in ("EPSG:4326", "CRS:84"):
        d = 0.0005
        box = (x - d, y - d, x + d, y + d)
    else:
        cx, cy = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(x, y)
        box = (cx - 50, cy - 50, cx + 50, cy + 50)
    # OWSLib writes the box in the CRS's axis order (latitude first for EPSG:4326 in WMS 1.3.0)
    img = wms.getmap(layers=["trees"], styles=[""], srs=crs, bbox=box, size=(64, 64), format="image/png",
                     transparent=True)
    picture = _image(img.read())
    assert picture.size == (64, 64)
    assert _near(picture.getpixel((32, 32)), COLOUR), picture.getpixel((32, 32))
    assert picture.getpixel((2, 2))[3] == 0  # transparent where nothing stands


def test_getmap_in_korea_2000_and_as_jpeg(city: Server) -> None:
    """EPSG:5186 (Korea 2000 / Central Belt 2010) is northing first: the box as MapServer reads it, a site at the
    centre; JPEG has no transparency, so the ground is white."""
    _, x, y = SEOUL[0]
    north, east = Transformer.from_crs("EPSG:4326", "EPSG:5186").transform(y, x)
    for order in ((north - 50, east - 50, north + 50, east + 50), (east - 50, north - 50, east + 50, north + 50)):
        r = httpx.get(f"{city.url}/wms", params={
            "SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": "sites", "STYLES": "",
            "CRS": "EPSG:5186", "BBOX": ",".join(map(str, order)), "WIDTH": 64, "HEIGHT": 64,
            "FORMAT": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        picture = _image(r.content)
        if order[0] == north - 50:  # the axis order EPSG defines: the site at the centre
            assert not _near(picture.getpixel((32, 32)), (255, 255, 255), 10)
        else:  # the other order is a box 80 km away: all white
            assert all(_near(picture.getpixel((i, j)), (255, 255, 255), 10) for i in (5, 32, 58) for j in (5, 32, 58))


def test_getfeatureinfo_names_the_tree_clicked(city: Server) -> None:
    x, y = _tree(210)
    d = 0.0005
    for info_format in ("application/vnd.ogc.gml", "text/plain", "geojson"):
        layers = "trees" if info_format == "geojson" else "trees,areas"  # GeoJSON holds one layer
        r = httpx.get(f"{city.url}/wms", params={
            "SERVICE": "WMS", "REQUEST": "GetFeatureInfo", "VERSION": "1.3.0", "LAYERS": layers,
            "QUERY_LAYERS": layers, "STYLES": "", "CRS": "EPSG:4326",
            "BBOX": f"{y - d},{x - d},{y + d},{x + d}", "WIDTH": 64, "HEIGHT": 64, "FORMAT": "image/png",
            "INFO_FORMAT": info_format, "I": 32, "J": 32, "FEATURE_COUNT": 5}, timeout=60)
        assert r.status_code == 200, r.text
        if info_format == "geojson":
            assert [(f["id"], f["properties"]["name"]) for f in r.json()["features"]] == [(210, "tree 210")]
        else:
            assert "tree 210" in r.text and "Altona" in r.text and "tree 211" not in r.text, r.text


def test_getlegendgraphic_is_a_png_in_the_layers_colour(city: Server) -> None:
    r = httpx.get(f"{city.url}/wms", params={"SERVICE": "WMS", "REQUEST": "GetLegendGraphic", "VERSION": "1.3.0",
                                             "LAYER": "trees", "FORMAT": "image/png", "SLD_VERSION": "1.1.0"},
                  timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    picture = _image(r.content)
    assert any(_near(picture.getpixel((i, j)), COLOUR) for i in range(min(24, picture.width))
               for j in range(picture.height))


@pytest.mark.parametrize(("params", "code"), [
    ({"LAYERS": "nope"}, "LayerNotDefined"),
    ({"CRS": "EPSG:999999"}, "InvalidCRS"),
    ({"BBOX": "1,2,3"}, None),
    ({"WIDTH": "100000"}, None),
    ({"FORMAT": "image/nope"}, "InvalidFormat"),
])
def test_wms_errors_are_exception_reports_never_500(city: Server, params: dict[str, str], code: str | None) -> None:
    asked = {"SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": "trees", "STYLES": "",
             "CRS": "EPSG:4326", "BBOX": "53.5,9.9,53.6,10.0", "WIDTH": "64", "HEIGHT": "64", "FORMAT": "image/png"}
    r = httpx.get(f"{city.url}/wms", params=asked | params, timeout=60)
    assert r.status_code < 500 and "xml" in r.headers["content-type"], r.text
    report = ElementTree.fromstring(r.content)
    assert report.tag.endswith("ServiceExceptionReport")
    found = report.find("{http://www.opengis.net/ogc}ServiceException")
    assert found is not None and (code is None or found.get("code") == code), r.text


def test_the_mapfile_cannot_be_chosen_or_changed_by_the_client(city: Server) -> None:
    base = {"SERVICE": "WMS", "REQUEST": "GetCapabilities", "VERSION": "1.3.0"}
    for extra in ({"map": "/etc/passwd"}, {"map.layer[trees]": "STATUS OFF"}, {"MAP": "/tmp/x.map"}):
        r = httpx.get(f"{city.url}/wms", params=base | extra, timeout=60)
        assert r.status_code == 200 and b"<Name>trees</Name>" in r.content
    assert mapserver.safe_query("map=/x&LAYERS=a&map.web=x&SLD=http://evil/&service=WFS", "WMS") == \
        "SERVICE=WMS&LAYERS=a"


def test_wfs_capabilities_and_features_through_owslib(city: Server) -> None:
    wfs = WebFeatureService(f"{city.url}/wfs", version="2.0.0", timeout=60)
    assert {"udp:trees", "udp:sites", "udp:areas"} <= set(wfs.contents) or {"trees", "sites", "areas"} <= {
        name.split(":")[-1] for name in wfs.contents}
    name = next(n for n in wfs.contents if n.split(":")[-1] == "trees")
    # BBOX (WFS 2.0 with EPSG:4326: latitude first), the features inside it exactly
    box = (9.9170, 53.5170, 9.9330, 53.5330)  # OWSLib writes it in the CRS's axis order
    body = wfs.getfeature(typename=[name], bbox=box + ("urn:ogc:def:crs:EPSG::4326",),
                          outputFormat="geojson").read()
    got = {f["id"] for f in json.loads(body)["features"]}
    want = {i for i in range(N) if box[0] < _tree(i)[0] < box[2] and box[1] < _tree(i)[1] < box[3]}
    assert got == want and len(want) == 16
    # a FES 2.0 filter
    flt = PropertyIsGreaterThan(propertyname="height", literal="27")
    from owslib.etree import etree
    from owslib.fes2 import Filter

    xml = etree.tostring(Filter(flt).toXML()).decode()
    # (OWSLib sends a filter by GET as a `query` parameter of its own; by POST as WFS 2.0 has it)
    body = wfs.getfeature(typename=[name], filter=xml, outputFormat="geojson", method="POST").read()
    heights = [f["properties"]["height"] for f in json.loads(body)["features"]]
    assert sorted(set(heights)) == [28, 29] and len(heights) == sum(1 for i in range(N) if i % 30 > 27)


def _wfs(city: Server, **params: Any) -> httpx.Response:
    return httpx.get(f"{city.url}/wfs", params={"SERVICE": "WFS", "VERSION": "2.0.0",
                                                "REQUEST": "GetFeature"} | params, timeout=60)


def test_wfs_resource_id_paging_gml_and_errors(city: Server) -> None:
    one = _wfs(city, TYPENAMES="trees", RESOURCEID="trees.7", OUTPUTFORMAT="geojson").json()["features"]
    assert [(f["id"], f["properties"]["name"]) for f in one] == [(7, "tree 7")]
    pages = [_wfs(city, TYPENAMES="trees", COUNT=150, STARTINDEX=s, OUTPUTFORMAT="geojson").json()["features"]
             for s in (0, 150, 300)]
    assert [len(p) for p in pages] == [150, 150, 100]
    assert len({f["id"] for p in pages for f in p}) == N
    gml = _wfs(city, TYPENAMES="trees", COUNT=2)
    assert gml.status_code == 200 and "gml/3.2" in gml.text
    root = ElementTree.fromstring(gml.content)
    assert root.get("numberReturned") == "2"
    hits = _wfs(city, TYPENAMES="trees", RESULTTYPE="hits")
    assert ElementTree.fromstring(hits.content).get("numberMatched") == str(N)
    bad = _wfs(city, TYPENAMES="nope")
    assert bad.status_code == 400 and "ExceptionReport" in bad.text
    # DescribeFeatureType names the properties with their types
    schema = httpx.get(f"{city.url}/wfs", params={"SERVICE": "WFS", "VERSION": "2.0.0",
                                                  "REQUEST": "DescribeFeatureType", "TYPENAMES": "trees"}, timeout=60)
    assert 'name="height"' in schema.text and 'name="name"' in schema.text


def test_wfs_post_with_a_filter_document(city: Server) -> None:
    body = """<wfs:GetFeature service="WFS" version="2.0.0" outputFormat="geojson"
        xmlns:wfs="http://www.opengis.net/wfs/2.0" xmlns:fes="http://www.opengis.net/fes/2.0">
      <wfs:Query typeNames="trees">
        <fes:Filter><fes:PropertyIsEqualTo><fes:ValueReference>name</fes:ValueReference>
          <fes:Literal>tree 42</fes:Literal></fes:PropertyIsEqualTo></fes:Filter>
      </wfs:Query>
    </wfs:GetFeature>"""
    r = httpx.post(f"{city.url}/wfs", content=body, headers={"Content-Type": "application/xml"}, timeout=60)
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["features"]] == [42]


def test_gdal_reads_the_wfs(city: Server) -> None:
    frame = pyogrio.read_dataframe(f"WFS:{city.url}/wfs?VERSION=2.0.0", layer="udp:trees")
    assert len(frame) == N and {"name", "height"} <= set(frame.columns)
    assert frame.total_bounds == pytest.approx((9.9025, 53.5025, 9.9975, 53.5975), abs=1e-6)
    info = pyogrio.read_info(f"WFS:{city.url}/wfs?VERSION=2.0.0", layer="udp:areas")
    assert info["features"] == 1 and info["geometry_type"] == "MultiPolygon"


def test_the_live_layer_follows_new_observations(city: Server) -> None:
    client = city.client
    ds = add_station(client, "ows station", "ows temp", 9.951, 53.551)
    for value in (21.5, 22.5):
        assert client.post(f"/v1.1/Datastreams({ds})/Observations", json={"result": value}).status_code == 201
        deadline = time.monotonic() + 20
        seen: list[Any] = []
        while time.monotonic() < deadline:
            features = _wfs(city, TYPENAMES="latest_values", OUTPUTFORMAT="geojson").json()["features"]
            seen = [f["properties"].get("result") for f in features if f["properties"].get("name") == "ows temp"]
            if seen == [value]:
                break
            time.sleep(0.5)
        assert seen == [value]


def test_a_crowded_point_layer_is_drawn_from_an_overview_that_looks_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small-scale map of many points reads a grid-thinned copy (one point per cell no bigger than a pixel, with
    `point_count`) and draws what the full layer draws; a large-scale one reads the layer itself."""
    import asyncio

    import numpy as np

    import ows.snapshot as snapshot_mod
    from features.spec import CollectionSpec
    from ows.mapfile import MapLayer, ServiceInfo, render
    from ows.view import parse_view
    from provider_plugins.imports import import_source
    from provider_plugins.stored import StoredSource
    from sensorthings.store.base import Store

    monkeypatch.setattr(snapshot_mod, "OVERVIEW_MIN", 1000)
    rng = np.random.default_rng(7)
    # along 40 streets each way, as trees stand: many to a cell of the coarse grids
    along, street = rng.random(20_000), rng.integers(0, 40, 20_000)
    xs = np.where(street % 2 == 0, 9.9 + along * 0.2, 9.9 + street / 40 * 0.2)
    ys = np.where(street % 2 == 0, 53.5 + street / 40 * 0.1, 53.5 + along * 0.1)
    (tmp_path / "p.csv").write_text("fid,lon,lat\n" + "".join(f"{i},{x},{y}\n" for i, (x, y) in enumerate(
        zip(xs, ys, strict=True))), encoding="utf-8")
    store = Store.open(f"sqlite:///{tmp_path / 'udp.db'}")
    try:
        spec = CollectionSpec("p", "p", str(tmp_path / "p.csv"), x="lon", y="lat", id_column="fid")
        import_source(store, spec)
        source = StoredSource(spec, store)
        snap = snapshot_mod.Snapshots(tmp_path / "ows").current(source)
        assert snap.count == 20_000 and snap.overviews
        # another worker, or the platform restarted: the files of this data version are used, the data not read
        monkeypatch.setattr(source, "tile_features", lambda *a, **k: pytest.fail("read the data again"))
        assert snapshot_mod.Snapshots(tmp_path / "ows").current(source) == snap
        for o in snap.overviews:
            frame = pyogrio.read_dataframe(o.path)
            assert len(frame) == o.count < 10_000 and frame["point_count"].sum() == 20_000
        layer = MapLayer(source, snap, "#123456", snap.overviews)
        params = {"SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": "p", "STYLES": "",
                  "CRS": "EPSG:4326", "BBOX": "53.5,9.9,53.6,10.1", "WIDTH": "256", "HEIGHT": "128",
                  "FORMAT": "image/png"}
        small = parse_view(params)
        chosen = layer.overview_for(small)
        assert chosen is not None and chosen.cell <= 2 * small.pixel()
        assert layer.overview_for(parse_view(params | {"BBOX": "53.55,9.95,53.551,9.951"})) is None
        assert layer.overview_for(parse_view(params | {"REQUEST": "GetFeatureInfo"})) is None
        pictures = []
        server = mapserver.MapServer(tmp_path / "ows", processes=1)
        for view in (small, None):  # from the overview, then from every point
            text = render(ServiceInfo("t"), "http://x", [layer], None, view)
            assert (str(chosen.path) in text) == (view is not None)
            mapfile = tmp_path / "ows" / f"{len(pictures)}.map"
            mapfile.write_text(text)
            out = asyncio.run(server.run(mapfile, "&".join(f"{k}={v}" for k, v in params.items())))
            assert out.headers["Content-Type"] == "image/png", out.body[:500]
            pictures.append(np.asarray(_image(out.body))[:, :, 3] > 0)
        server.close()
        differ = (pictures[0] != pictures[1]).mean()
        assert pictures[1].mean() > 0.5 and differ < 0.02, differ
    finally:
        store.close()


def test_a_killed_map_server_is_started_again(city: Server) -> None:
    """MapServer's processes killed (a crash): the next requests are answered, by new ones."""
    import subprocess

    params = {"SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": "trees", "STYLES": "",
              "CRS": "EPSG:4326", "BBOX": "53.5,9.9,53.6,10.0", "WIDTH": "64", "HEIGHT": "64", "FORMAT": "image/png"}
    for _ in range(4):  # each worker has started its programs
        assert httpx.get(f"{city.url}/wms", params=params, timeout=60).headers["content-type"] == "image/png"
    assert subprocess.run(["pkill", "-KILL", "-x", "mapserv"]).returncode == 0
    for _ in range(4):
        r = httpx.get(f"{city.url}/wms", params=params, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_a_live_postgis_table_gets_overviews_that_follow_its_writes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A live table has no data version; PostgreSQL's statistics tell that it was written, and its overviews are
    made again (at most every OVERVIEWS_EVERY_S; here at once)."""
    import psycopg

    import ows.snapshot as snapshot_mod
    from features.spec import CollectionSpec
    from provider_plugins.postgis import PostgisSource
    from tests.conftest import PG_URL, create_pg

    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL tests skipped")
    monkeypatch.setattr(snapshot_mod, "OVERVIEW_MIN", 1000)
    monkeypatch.setattr(snapshot_mod, "OVERVIEWS_EVERY_S", 0.0)
    db = create_pg(PG_URL)
    try:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            conn.execute("CREATE TABLE pts AS SELECT g AS id, ST_SetSRID(ST_MakePoint(9.9 + (g % 40) * 0.005, "
                         "53.5 + (g % 37) * 0.0025), 4326) AS geom FROM generate_series(1, 5000) g")
            conn.execute("ALTER TABLE pts ADD PRIMARY KEY (id)")
        source = PostgisSource(CollectionSpec("pts", "pts", f"{db.url}#public.pts"))
        table = source.database_table()
        assert table is not None and table.kind == "point" and "udp_geom" in table.select
        snapshots = snapshot_mod.Snapshots(tmp_path)
        first = snapshots.current(source, whole=False)
        assert first.path is None and first.overviews and first.count == 5000
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("INSERT INTO pts SELECT g, ST_SetSRID(ST_MakePoint(10.2, 53.7), 4326) "
                         "FROM generate_series(5001, 5500) g")
        deadline = time.monotonic() + 15  # the statistics are counted a little after the commit
        while snapshots.current(source, whole=False).count != 5500 and time.monotonic() < deadline:
            time.sleep(0.3)
        again = snapshots.current(source, whole=False)
        assert again.count == 5500 and again.stem != first.stem
        assert sum(pyogrio.read_dataframe(again.overviews[0].path)["point_count"]) == 5500
    finally:
        db.drop()
