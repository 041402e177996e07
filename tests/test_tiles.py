"""Vector tiles (OGC API Tiles, MVT) on both stores: a file source imported into the store, the live sensor layer
and the dataset tiles; exact at z14, generalised and bounded below, 404 outside the matrix, ETags that follow the
data, and the documents (tilesets, tile matrix sets, conformance, links)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mapbox_vector_tile
import morecantile
import pytest
import yaml

from features.tiles import MAX_TILE_BYTES
from tests.conftest import PG_URL, Server, add_station, create_pg, serve_on

MVT = "application/vnd.mapbox-vector-tile"
WEB = morecantile.tms.get("WebMercatorQuad")
N = 2500  # a 50 × 50 grid of points, 0.002° apart, from (9.9005, 53.5005)


def _point(i: int) -> tuple[float, float]:
    return 9.9005 + (i % 50) * 0.002, 53.5005 + (i // 50) * 0.002


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tiles")
    lines = ["fid,name,height,lon,lat"] + [f"{i},tree {i},{i % 30},{_point(i)[0]},{_point(i)[1]}" for i in range(N)]
    (tmp / "trees.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp / "config.yml").write_text(yaml.safe_dump({"title": "Tile city", "collections": {
        "trees": {"source": "trees.csv", "x": "lon", "y": "lat", "id": "fid",
                  "style": {"colour": "#123456", "label": "name"}},
        "named": {"source": "trees.csv", "x": "lon", "y": "lat", "id": "fid",
                  "style": {"properties": ["name"]}}}}), encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml"), "--workers", "2"])


def _tile(srv: Server, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{srv.url}/ogcapi/{path}", headers=headers, timeout=30)


def _decode(body: bytes) -> dict[str, Any]:
    return mapbox_vector_tile.decode(body, default_options={"y_coord_down": True}) if body else {}


def test_a_z14_tile_holds_exactly_the_features_inside_it(served: Server) -> None:
    tile = WEB.tile(9.95, 53.55, 14)
    r = _tile(served, f"collections/trees/tiles/WebMercatorQuad/14/{tile.y}/{tile.x}")
    assert r.status_code == 200 and r.headers["content-type"] == MVT
    layer = _decode(r.content)["trees"]
    assert layer["extent"] == 4096
    b = WEB.bounds(tile)
    inside = {i for i in range(N) if b.left < _point(i)[0] < b.right and b.bottom < _point(i)[1] < b.top}
    assert len(inside) > 10
    shown = {f["id"] for f in layer["features"]
             if all(0 <= c <= 4096 for c in f["geometry"]["coordinates"])}
    assert shown == inside
    one = next(f for f in layer["features"] if f["id"] in inside)
    assert one["properties"]["name"] == f"tree {one['id']}" and one["properties"]["height"] == one["id"] % 30
    # placed where it is: the pixel of its own coordinates
    x, y = WEB.xy(*_point(one["id"]))
    xy = WEB.xy_bounds(tile)
    px = (x - xy.left) / (xy.right - xy.left) * 4096
    py = (xy.top - y) / (xy.top - xy.bottom) * 4096
    gx, gy = one["geometry"]["coordinates"]
    assert abs(gx - px) <= 1 and abs(gy - py) <= 1


def test_a_low_zoom_tile_is_generalised_and_bounded(served: Server) -> None:
    tile = WEB.tile(9.95, 53.55, 6)
    r = _tile(served, f"collections/trees/tiles/WebMercatorQuad/6/{tile.y}/{tile.x}")
    assert r.status_code == 200 and len(r.content) <= MAX_TILE_BYTES
    features = _decode(r.content)["trees"]["features"]
    # the 2,500 points fall into a few cells, each one point carrying how many it stands for
    assert 0 < len(features) < N
    assert sum(f["properties"].get("point_count", 1) for f in features) == N
    # in WorldCRS84Quad too
    world = morecantile.tms.get("WorldCRS84Quad")
    t = world.tile(9.95, 53.55, 6)
    r = _tile(served, f"collections/trees/tiles/WorldCRS84Quad/6/{t.y}/{t.x}")
    assert r.status_code == 200
    assert sum(f["properties"].get("point_count", 1) for f in _decode(r.content)["trees"]["features"]) == N


@pytest.mark.parametrize("path", ["WebMercatorQuad/3/8/0", "WebMercatorQuad/3/0/8", "WebMercatorQuad/-1/0/0",
                                  "WebMercatorQuad/30/0/0", "WebMercatorQuad/a/0/0", "NoSuchQuad/1/0/0",
                                  "WorldCRS84Quad/0/1/0"])
def test_tiles_outside_the_matrix_are_404(served: Server, path: str) -> None:
    r = _tile(served, f"collections/trees/tiles/{path}")
    assert r.status_code == 404 and r.json()["code"] == "NotFound"


def test_no_tiles_for_what_is_not_a_feature_collection(served: Server) -> None:
    assert _tile(served, "collections/nope/tiles/WebMercatorQuad/0/0/0").status_code == 404


def test_an_empty_tile_is_204_and_an_etag_answers_304(served: Server) -> None:
    r = _tile(served, "collections/trees/tiles/WebMercatorQuad/14/0/0")
    assert r.status_code == 204 and r.content == b""
    tile = WEB.tile(9.95, 53.55, 12)
    path = f"collections/trees/tiles/WebMercatorQuad/12/{tile.y}/{tile.x}"
    first = _tile(served, path)
    assert first.headers["etag"] and "max-age" in first.headers["cache-control"]
    assert _tile(served, path, **{"If-None-Match": first.headers["etag"]}).status_code == 304


def test_the_live_sensor_tile_follows_new_observations(served: Server) -> None:
    client = served.client
    ds = add_station(client, "station", "temp", 9.951, 53.551)
    tile = WEB.tile(9.951, 53.551, 15)
    path = f"collections/latest_values/tiles/WebMercatorQuad/15/{tile.y}/{tile.x}"
    values = []
    for result in (11.5, 12.5):
        assert client.post(f"/v1.1/Datastreams({ds})/Observations", json={"result": result}).status_code == 201
        r = _tile(served, path)
        assert r.status_code == 200
        values.append((r.headers["etag"], [f["properties"]["result"] for f in _decode(r.content)["latest_values"]
                                           ["features"] if f["properties"].get("name") == "temp"]))
    assert values[0][1] == [11.5] and values[1][1] == [12.5] and values[0][0] != values[1][0]


def test_dataset_tiles_hold_a_layer_per_collection(served: Server) -> None:
    tile = WEB.tile(9.95, 53.55, 14)
    r = _tile(served, f"tiles/WebMercatorQuad/14/{tile.y}/{tile.x}?collections=trees,latest_values")
    assert r.status_code == 200 and "trees" in _decode(r.content)
    assert _tile(served, "tiles/WebMercatorQuad/14/0/0?collections=nope").status_code == 400
    doc = _tile(served, "tiles/WebMercatorQuad?collections=trees").json()
    assert [layer["id"] for layer in doc["layers"]] == ["trees"]


def test_tilesets_matrix_sets_conformance_and_links(served: Server) -> None:
    sets = _tile(served, "collections/trees/tiles").json()["tilesets"]
    assert {s["tileMatrixSetURI"].rsplit("/", 1)[1] for s in sets} == {"WebMercatorQuad", "WorldCRS84Quad"}
    item = next(link for link in sets[0]["links"] if link["rel"] == "item")
    assert item["href"].endswith("/{tileMatrix}/{tileRow}/{tileCol}") and item["type"] == MVT
    tileset = _tile(served, "collections/trees/tiles/WebMercatorQuad").json()
    assert tileset["dataType"] == "vector" and tileset["layers"][0]["id"] == "trees"
    assert "height" in tileset["layers"][0]["propertiesSchema"]["properties"]
    assert tileset["boundingBox"]["lowerLeft"][0] == pytest.approx(9.9005)
    tms = _tile(served, "tileMatrixSets/WebMercatorQuad").json()
    assert tms["id"] == "WebMercatorQuad" and len(tms["tileMatrices"]) > 14
    assert {"WebMercatorQuad", "WorldCRS84Quad"} == {t["id"] for t in _tile(served, "tileMatrixSets").json()[
        "tileMatrixSets"]}
    conformance = _tile(served, "conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt" in conformance
    rels = [link["rel"] for link in _tile(served, "collections/trees").json()["links"]]
    assert "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector" in rels
    landing = httpx.get(f"{served.url}/ogcapi/", params={"f": "json"}, timeout=30, follow_redirects=True).json()
    assert any(link["href"].endswith("/ogcapi/tileMatrixSets") for link in landing["links"])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_crowded_low_zoom_tile_is_counted_per_cell_in_the_database(kind: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `DETAILED` rows a generalised tile's rows are counted per grid cell by the store, not read one by one."""
    import provider_plugins.sql_table as sql_table
    from features.spec import CollectionSpec
    from features.tiles import encode_tile, parse_tile
    from provider_plugins.imports import import_source
    from provider_plugins.stored import StoredSource
    from sensorthings.store.base import Store

    db = None
    if kind == "postgresql":
        if not PG_URL:
            pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
        db = create_pg(PG_URL)
    lines = ["fid,lon,lat"] + [f"{i},{_point(i)[0]},{_point(i)[1]}" for i in range(N)]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = Store.open(db.url if db else f"sqlite:///{tmp_path / 'udp.db'}")
    try:
        spec = CollectionSpec("p", "p", str(tmp_path / "p.csv"), x="lon", y="lat", id_column="fid")
        import_source(store, spec)
        source = StoredSource(spec, store)
        tile = WEB.tile(9.95, 53.55, 8)
        req = parse_tile("WebMercatorQuad", "8", str(tile.y), str(tile.x))
        detailed = source.tile_features(req.crs84_bounds(), 100_000, 256)
        assert len(detailed.ids) == N and "point_count" not in detailed.properties[0]
        monkeypatch.setattr(sql_table, "DETAILED", 100)
        counted = source.tile_features(req.crs84_bounds(), 100_000, 256)
        assert 0 < len(counted.ids) < N and sum(p["point_count"] for p in counted.properties) == N
        features = _decode(encode_tile("p", req, counted))["p"]["features"]
        assert sum(f["properties"].get("point_count", 1) for f in features) == N
        # PostGIS generalises in the database alike: every point counted once, as clusters or alone
        for detailed_rows in (100, 100_000):
            monkeypatch.setattr(sql_table, "DETAILED", detailed_rows)
            native = source.vector_tile("p", "WebMercatorQuad", 8, tile.y, tile.x, 64, 16)
            assert (native is None) == (kind == "sqlite")
            if native is not None:
                shown = _decode(native)["p"]["features"]
                assert 0 < len(shown) < N and sum(f["properties"].get("point_count", 1) for f in shown) == N
                lone = [f for f in shown if "point_count" not in f["properties"]]
                assert all(f["properties"]["fid"] == f["id"] for f in lone)
        # a complete tile: PostGIS makes it itself (ST_AsMVT), the same features as the encoder here
        z14 = WEB.tile(9.95, 53.55, 14)
        native = source.vector_tile("p", "WebMercatorQuad", 14, z14.y, z14.x, 64)
        assert (native is None) == (kind == "sqlite")
        if native is not None:
            req14 = parse_tile("WebMercatorQuad", "14", str(z14.y), str(z14.x))
            ours = _decode(encode_tile("p", req14, source.tile_features(req14.crs84_bounds(), 100_000)))["p"]
            theirs = _decode(native)["p"]
            assert sorted(f["id"] for f in theirs["features"]) == sorted(f["id"] for f in ours["features"])
            assert {f["id"]: f["geometry"]["coordinates"] for f in theirs["features"]} == pytest.approx(
                {f["id"]: f["geometry"]["coordinates"] for f in ours["features"]}, abs=1)
    finally:
        store.close()
        if db is not None:
            db.drop()


def test_tilejson_and_the_maplibre_style_come_from_config(served: Server) -> None:
    doc = _tile(served, "collections/trees/tiles/WebMercatorQuad/tilejson.json").json()
    assert doc["tilejson"] == "3.0.0" and doc["vector_layers"][0]["id"] == "trees"
    assert doc["tiles"] == [f"{served.url}/ogcapi/collections/trees/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}"]
    assert doc["vector_layers"][0]["fields"]["height"] in ("number", "integer")
    assert doc["bounds"][0] == pytest.approx(9.9005)
    assert _tile(served, "collections/trees/tiles/WorldCRS84Quad/tilejson.json").status_code == 404
    r = _tile(served, "styles/default?collections=trees")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.mapbox.style+json")
    style = r.json()
    assert style["version"] == 8
    assert style["sources"]["udp"]["tiles"] == [
        f"{served.url}/ogcapi/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}?collections=trees"]
    point = next(layer for layer in style["layers"] if layer["id"] == "trees-point")
    assert point["paint"]["circle-color"] == "#123456" and point["metadata"]["udp:label"] == "name"
    # the template the style names serves the tile
    tile = WEB.tile(9.95, 53.55, 14)
    url = style["sources"]["udp"]["tiles"][0].format(z=14, y=tile.y, x=tile.x)
    assert "trees" in _decode(httpx.get(url, timeout=30).content)
    every = _tile(served, "styles/default").json()
    assert {layer["source-layer"] for layer in every["layers"] if "source-layer" in layer} >= {"trees", "latest_values"}
    assert _tile(served, "styles/nope").status_code == 404


@pytest.mark.parametrize("style, message", [({"colour": "green"}, "collections.t.style.colour"),
                                            ({"size": 3}, "collections.t.style"), ("red", "collections.t.style")])
def test_a_bad_style_names_its_key(style: Any, message: str, tmp_path: Path) -> None:
    from features.spec import SpecError, parse_collections

    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        parse_collections({"t": {"source": "t.csv", "style": style}}, tmp_path)


def test_a_layer_carries_the_properties_config_chooses(served: Server) -> None:
    for z in (14, 8):  # complete, and generalised (clusters keep their count)
        tile = WEB.tile(9.95, 53.55, z)
        features = _decode(_tile(served, f"collections/named/tiles/WebMercatorQuad/{z}/{tile.y}/{tile.x}").content)[
            "named"]["features"]
        assert features and all(set(f["properties"]) <= {"name", "point_count"} for f in features)
        assert any("name" in f["properties"] for f in features) or z < 14
    assert set(_tile(served, "collections/named/tiles/WebMercatorQuad").json()["layers"][0]["propertiesSchema"][
        "properties"]) == {"name"}
    doc = _tile(served, "collections/named/tiles/WebMercatorQuad/tilejson.json").json()
    assert set(doc["vector_layers"][0]["fields"]) == {"name"}


def test_a_style_naming_no_property_stops_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "t.csv").write_text("fid,lon,lat\n1,9.9,53.5\n", encoding="utf-8")
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"title": "x", "collections": {"t": {
        "source": "t.csv", "x": "lon", "y": "lat", "style": {"properties": ["height"]}}}}), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp_path / "config.yml"),
                          "--store", f"sqlite:///{tmp_path / 'u.db'}", "--port", "0", "--mqtt-port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "'t'" in out.stderr and "height" in out.stderr


def test_the_seeder_makes_a_big_collections_tiles_ahead_and_keeps_them(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`udp seed` makes every non-empty WebMercatorQuad tile down to z14 of a big collection once per data
    version, on disk where the workers read them; the tiles are those a worker makes itself."""
    import udp.seed as seed
    from features.tile_files import SEED_ZOOM, TileFiles
    from features.tiles import make_tile, parse_tile
    from sensorthings.store.base import Store
    from udp.config import load_config
    from udp.load import bring_in
    from udp.sources import load_sources

    monkeypatch.setattr(seed, "SEED_MIN", 1000)
    lines = ["fid,name,height,lon,lat"] + [f"{i},tree {i},{i % 30},{_point(i)[0]},{_point(i)[1]}" for i in range(N)]
    (tmp_path / "trees.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "small.csv").write_text("fid,lon,lat\n1,9.9,53.5\n", encoding="utf-8")
    (tmp_path / "config.yml").write_text(yaml.safe_dump({
        "store": f"sqlite:///{tmp_path / 'udp.db'}",
        "collections": {"trees": {"source": "trees.csv", "x": "lon", "y": "lat", "id": "fid"},
                        "small": {"source": "small.csv", "x": "lon", "y": "lat", "id": "fid"}}}), encoding="utf-8")
    config = load_config(tmp_path / "config.yml")
    store = Store.open(config.store)
    try:
        bring_in(store, config.collections, show=False)
        sources = load_sources(config.collections, store)
        files = TileFiles(tmp_path / "tiles")
        assert seed.seed_once(sources, files) == ["trees"]  # the small one is made when asked
        assert seed.seed_once(sources, files) == []  # its data have not changed
        folder = files.folder(sources["trees"], sources["trees"].etag())
        assert folder is not None and files.seeded(folder)
        kept = sorted(folder.glob("WebMercatorQuad/*/*/*.mvt"))
        zooms = {int(p.parts[-3]) for p in kept}
        assert zooms == set(range(SEED_ZOOM + 1))
        # every z14 tile holding a tree is there, and holds what a worker would make
        wanted = {(t.y, t.x) for t in (WEB.tile(*_point(i), SEED_ZOOM) for i in range(N))}
        at14 = {(int(p.parts[-2]), int(p.stem)) for p in kept if int(p.parts[-3]) == SEED_ZOOM and p.stat().st_size}
        assert at14 == wanted
        row, col = next(iter(wanted))
        req = parse_tile("WebMercatorQuad", str(SEED_ZOOM), str(row), str(col))
        assert files.get(folder, req) == make_tile(sources["trees"], req)
        assert files.folder(sources["small"], sources["small"].etag()) is not None
        assert not (files.folder(sources["small"], sources["small"].etag())).exists()
    finally:
        store.close()


def test_serve_runs_the_seeder_beside_its_workers_and_stops_it(tmp_path: Path) -> None:
    """`udp serve` starts `udp seed` on its store (it seeds once the platform answers), and it stops with the
    platform."""
    import subprocess
    import time

    from tests.conftest import serve_config, stop_server

    def seeders(store: str) -> list[str]:
        found = subprocess.run(["pgrep", "-f", f"udp.cli seed --store {store}"], capture_output=True, text=True)
        return found.stdout.split()

    srv = serve_config(tmp_path, {"title": "seeding", "collections": {}})
    try:
        deadline = time.monotonic() + 30
        while not seeders(srv.store) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seeders(srv.store)
        assert srv.client.get("/health").json()["tiles"] == {"seeded": []}
    finally:
        stop_server(srv)
    deadline = time.monotonic() + 15
    while seeders(srv.store) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seeders(srv.store) == []
