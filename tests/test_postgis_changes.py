"""A department's PostGIS table with `changes: trigger` (provider_plugins/postgis_changes.py): its vector tiles
are kept and seeded like an import's, and a write by the department's own role (no rights on the platform's log)
reaches exactly the tiles of its region at once, whether it inserts, updates, deletes or truncates."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mapbox_vector_tile
import morecantile
import pytest

from tests.conftest import PG_URL, Server, serve_config, stop_server

pytestmark = pytest.mark.skipif(not PG_URL, reason="UDP_TEST_PG is not set: PostGIS sources need PostgreSQL")

WEB = morecantile.tms.get("WebMercatorQuad")
HERE, THERE = (126.9780, 37.5665), (127.0276, 37.4979)  # City Hall and Gangnam: 8 km apart, other z14 tiles


def _tile_path(cid: str, lonlat: tuple[float, float], z: int = 14) -> str:
    t = WEB.tile(*lonlat, z)
    return f"/collections/{cid}/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}"


def _names(res: httpx.Response, cid: str) -> set[str]:
    layers = mapbox_vector_tile.decode(res.content) if res.content else {}
    return {f["properties"]["name"] for f in layers.get(cid, {}).get("features", [])}


@pytest.fixture(scope="module")
def writer(db: str) -> Iterator[str]:
    """The department's own role: it may write its table and nothing of the platform's."""
    import psycopg

    role = f"dept_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    try:
        yield role
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _places(db: str, name: str, rows: list[tuple[int, str, tuple[float, float]]], role: str | None = None) -> str:
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, name text, geom geometry(Point, 4326))")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {name} VALUES (%s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326))",
                            [(i, n, *p) for i, n, p in rows])
        if role:
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {name} TO {role}")
    return f"{db}#public.{name}"


def _as(db: str, role: str, sql: str, *args: Any) -> None:
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        conn.execute(sql, args or None)


@pytest.fixture(scope="module")
def served(db: str, writer: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("changes")
    near = [(i, f"here {i}", (HERE[0] + i * 1e-4, HERE[1])) for i in range(5)]
    far = [(100 + i, f"there {i}", (THERE[0] + i * 1e-4, THERE[1])) for i in range(5)]
    srv = serve_config(tmp, {"title": "Tracked", "collections": {
        "places": {"source": _places(db, "places", near + far, writer), "changes": "trigger"},
        "untracked": {"source": _places(db, "untracked", near)}}})
    try:
        yield srv
    finally:
        stop_server(srv)


def test_a_write_reaches_the_tiles_of_its_region_only(served: Server, db: str, writer: str) -> None:
    api = served.http("/ogcapi")
    here, there = _tile_path("places", HERE), _tile_path("places", THERE)
    first_here, first_there = api.get(here), api.get(there)
    assert _names(first_here, "places") == {f"here {i}" for i in range(5)}
    assert _names(first_there, "places") == {f"there {i}" for i in range(5)}
    tag_here, tag_there = first_here.headers["etag"], first_there.headers["etag"]
    assert api.get(here).headers["etag"] == tag_here  # kept: the same version
    assert api.get(here, headers={"if-none-match": tag_here}).status_code == 304

    def changed(sql: str, *args: Any) -> httpx.Response:
        """After the department's write: its region's tile is new, the other one is still the one kept."""
        nonlocal tag_here
        _as(db, writer, sql, *args)
        now = api.get(here)
        assert now.status_code in (200, 204) and now.headers["etag"] != tag_here
        tag_here = now.headers["etag"]
        assert api.get(there, headers={"if-none-match": tag_there}).status_code == 304
        return now

    after = changed("INSERT INTO places VALUES (50, 'new', ST_SetSRID(ST_MakePoint(%s, %s), 4326))", *HERE)
    assert "new" in _names(after, "places")
    after = changed("UPDATE places SET name = 'renamed' WHERE id = 50")  # an attribute only: the same place
    assert "renamed" in _names(after, "places") and "new" not in _names(after, "places")
    after = changed("DELETE FROM places WHERE id = 50")
    assert _names(after, "places") == {f"here {i}" for i in range(5)}
    # a feature moved from there to here changes both
    _as(db, writer, "UPDATE places SET geom = ST_SetSRID(ST_MakePoint(%s, %s), 4326) WHERE id = 100", *HERE)
    moved_here, moved_there = api.get(here), api.get(there)
    assert "there 0" in _names(moved_here, "places") and "there 0" not in _names(moved_there, "places")
    assert moved_there.headers["etag"] != tag_there
    tag_here, tag_there = moved_here.headers["etag"], moved_there.headers["etag"]
    # a statement that touches no row changes nothing
    _as(db, writer, "DELETE FROM places WHERE id = 999")
    assert api.get(here, headers={"if-none-match": tag_here}).status_code == 304
    # an untracked table: made each time, the ETag from the body
    untracked = _tile_path("untracked", HERE)
    assert api.get(untracked).headers["etag"] == api.get(untracked).headers["etag"]
    _as(db, "postgres", "UPDATE untracked SET name = 'seen' WHERE id = 1")
    assert "seen" in _names(api.get(untracked), "untracked")


def test_truncate_reaches_every_tile(served: Server, db: str, writer: str) -> None:
    api = served.http("/ogcapi")
    here, there = _tile_path("places", HERE), _tile_path("places", THERE)
    tags = [api.get(p).headers["etag"] for p in (here, there)]
    _as(db, writer, "TRUNCATE places")
    for path, tag in zip((here, there), tags, strict=True):
        res = api.get(path, headers={"if-none-match": tag})
        assert res.status_code == 204 and res.headers["etag"] != tag


def test_kept_files_follow_the_regions_and_the_seeder_seeds_a_tracked_table(db: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeder seeds a big tracked table like an import; after a write, the written region's tile is kept under
    its new version (its earlier file gone) and every other tile's file stays as seeded."""
    import udp.seed as seed
    from features.spec import parse_collections
    from features.tile_files import SEED_ZOOM, TileFiles, tile_version
    from features.tiles import make_tile, parse_tile
    from provider_plugins.postgis import PostgisSource

    monkeypatch.setattr(seed, "SEED_MIN", 10)
    rows = [(i, f"p{i}", (HERE[0] + (i % 10) * 0.01, HERE[1] + (i // 10) * 0.01)) for i in range(100)]
    specs = parse_collections({"grid": {"source": _places(db, "grid", rows), "changes": "trigger"}}, tmp_path)
    source = PostgisSource(specs["grid"])
    files = TileFiles(tmp_path / "tiles")
    assert seed.seed_once({"grid": source}, files) == ["grid"]
    assert seed.seed_once({"grid": source}, files) == []
    folder = files.current(source)
    assert folder is not None and files.seeded(folder)
    before = {p: p.stat().st_mtime_ns for p in folder.glob("WebMercatorQuad/*/*/*.mvt")}
    assert {int(p.parts[-3]) for p in before} == set(range(SEED_ZOOM + 1))
    _as(db, "postgres", "UPDATE grid SET name = 'edited' WHERE id = 0")
    assert seed.seed_once({"grid": source}, files) == []  # still seeded: the log keeps the pyramid
    t = WEB.tile(*rows[0][2], SEED_ZOOM)
    req = parse_tile("WebMercatorQuad", str(SEED_ZOOM), str(t.y), str(t.x))
    made = files.tile(source, tile_version(source, req), req)
    assert made == make_tile(source, req) and b"edited" in made
    after = {p: p.stat().st_mtime_ns for p in folder.glob("WebMercatorQuad/*/*/*.mvt")}
    gone, new = set(before) - set(after), set(after) - set(before)
    assert len(gone) == len(new) == 1 and next(iter(new)).parts[-3:-1] == ("14", str(t.y))
    assert all(after[p] == before[p] for p in after if p in before)


def test_triggers_dropped_while_away_are_made_again_and_trust_nothing_kept(db: str, tmp_path: Path) -> None:
    import psycopg

    from features.spec import parse_collections
    from provider_plugins.postgis import PostgisSource

    specs = parse_collections({"again": {"source": _places(db, "again", [(1, "a", HERE)]), "changes": "trigger"}},
                              tmp_path)
    first = PostgisSource(specs["again"])
    box = (THERE[0] - 0.01, THERE[1] - 0.01, THERE[0] + 0.01, THERE[1] + 0.01)  # nothing was ever written there
    marker = first.region_version(box)
    assert PostgisSource(specs["again"]).region_version(box) == marker  # installed already: nothing to distrust
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TRIGGER udp_changes_update ON again")
        conn.execute("UPDATE again SET name = 'unlogged'")  # the platform was away: nobody logged it
    assert PostgisSource(specs["again"]).region_version(box) != marker


def test_changes_trigger_is_refused_where_it_cannot_work(db: str, tmp_path: Path) -> None:
    import psycopg

    from features.spec import SpecError, parse_collections
    from provider_plugins.postgis import PostgisSource
    from provider_plugins.table import SourceError

    (tmp_path / "p.csv").write_text("id,x,y\n1,1,1\n", encoding="utf-8")
    with pytest.raises(SpecError, match="collections.f.changes: trigger is for a PostGIS table"):
        parse_collections({"f": {"source": "p.csv", "x": "x", "y": "y", "changes": "trigger"}}, tmp_path)
    with pytest.raises(SpecError, match="collections.f.changes: must be trigger or none"):
        parse_collections({"f": {"source": f"{db}#public.x", "changes": "always"}}, tmp_path)
    _places(db, "base", [(1, "a", HERE)])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE VIEW seen AS SELECT * FROM base")
    specs = parse_collections({"v": {"source": f"{db}#public.seen", "id": "id", "changes": "trigger"}}, tmp_path)
    with pytest.raises(SourceError, match="changes: trigger needs the table's owner"):
        PostgisSource(specs["v"])
    # the untracked view serves as before
    assert PostgisSource(parse_collections({"v": {"source": f"{db}#public.seen", "id": "id"}}, tmp_path)["v"])
