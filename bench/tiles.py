"""Vector tiles at city scale: the platform (PostGIS tables, and the same data as GeoPackages imported into the SQLite
store) against tipg on the same PostGIS tables, in one run, each server with 2 workers.

The platform serves the PostGIS tables twice: as they are (`pg`: each tile made when asked) and with
`changes: trigger` (`pg-tracked`: its writes logged by place, so `udp seed` makes the tiles ahead and keeps them
until a write reaches them); the bench waits for the seeder before it asks for tiles of a seeded kind.

The data is bench/city_bench.py's (1,000,000 street-tree points and 300,000 footprints around Seoul, cached under
--cache-dir). At z10, z12 and z14 it asks for the --tiles distinct WebMercatorQuad tiles nearest the data's
median place, each once (a tile asked again would come from the platform's tile cache, which tipg has not), and
prints per server p50 and max in ms, the tiles' median size, and how many features the median tile holds (MVT
features; a point with `point_count` stands for that many). tipg cuts a tile at 10,000 features by default
(TIPG_MAX_FEATURES_PER_TILE); the platform counts points per cell below z14 instead of cutting them.

    python bench/tiles.py [--points 1000000] [--polygons 300000] [--tiles 9] [--pg postgresql://…]
                          [--kinds pg,pg-tracked,gpkg]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import httpx
import mapbox_vector_tile
import morecantile
import numpy as np
from city_bench import city_layers, load_postgis, start_platform, start_tipg
from harness import Database, create_pg, say

ZOOMS = (10, 12, 14)
WEB = morecantile.tms.get("WebMercatorQuad")


def nearest_tiles(lon: float, lat: float, z: int, n: int) -> list[morecantile.Tile]:
    """The n tiles at zoom z nearest a place (its own first, then rings around it)."""
    centre = WEB.tile(lon, lat, z)
    out: list[morecantile.Tile] = []
    ring = 0
    while len(out) < n:
        for dx in range(-ring, ring + 1):
            for dy in range(-ring, ring + 1):
                if max(abs(dx), abs(dy)) == ring and len(out) < n:
                    out.append(morecantile.Tile(centre.x + dx, centre.y + dy, z))
        ring += 1
    return out


def time_tiles(url_of: callable, layer: str, tiles: list[morecantile.Tile]) -> tuple[list[float], list[int], list[int]]:
    """Each tile once: ms, bytes, and the features it stands for."""
    times, sizes, counts = [], [], []
    with httpx.Client(timeout=300) as client:
        for t in tiles:
            start = time.perf_counter()
            r = client.get(url_of(t))
            times.append((time.perf_counter() - start) * 1000)
            if r.status_code not in (200, 204):
                raise SystemExit(f"{r.url}: {r.status_code} {r.text[:200]}")
            sizes.append(len(r.content))
            layers = mapbox_vector_tile.decode(r.content) if r.content else {}
            features = next(iter(layers.values()))["features"] if layers else []
            counts.append(sum(int(f["properties"].get("point_count", 1)) for f in features))
    return times, sizes, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--polygons", type=int, default=300_000)
    ap.add_argument("--tiles", type=int, default=9, help="distinct tiles per zoom")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-dir", default="~/.cache/udp-bench-features")
    ap.add_argument("--pg", default=os.environ.get("UDP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--kinds", default="pg,pg-tracked,gpkg", help="the platform's runs, in order")
    args = ap.parse_args()
    cache, work, layers = city_layers(args.cache_dir, args.points, args.polygons, "tiles")
    db: Database = create_pg(args.pg, "udp_bench_tiles")
    rows: list[list[str]] = []
    try:
        for layer, _, tsv in layers.values():
            load_postgis(db.url, layer, tsv)
        centre = {name: (float(np.median(layer.lon)), float(np.median(layer.lat)))
                  for name, (layer, _, _) in layers.items()}
        servers = []
        for kind in args.kinds.split(","):
            pg = kind.startswith("pg")
            sources = {n: f"{db.url}#public.{n}" if pg else str(gpkg) for n, (_, gpkg, _) in layers.items()}
            server = start_platform(kind, work, sources, args.workers, "warning", args.start_timeout, seed=True,
                                    changes=kind == "pg-tracked")
            key = kind.replace("-", "_")
            if kind != "pg":  # imports and tracked tables have a tiles version: `udp seed` makes their tiles ahead
                wait_seeded(server, [f"{n}_{key}" for n in layers], args.start_timeout)
            servers.append((f"platform-{kind}", server, lambda s, n, t, k=key: (
                f"{s.base}/collections/{n}_{k}/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}")))
            measure(servers[-1], layers, centre, args.tiles, rows)
            server.stop()
        tipg = start_tipg(work, cache, db.url, list(layers), args.workers, args.start_timeout)
        tipg_url = "{base}/collections/public.{layer}/tiles/WebMercatorQuad/{z}/{x}/{y}"  # z/x/y: column first
        measure(("tipg", tipg, lambda s, n, t: tipg_url.format(base=s.base, layer=n, z=t.z, x=t.x, y=t.y)),
                layers, centre, args.tiles, rows)
        tipg.stop()
    finally:
        db.drop()
    say(f"\n== vector tiles, {args.tiles} distinct tiles per zoom, each asked once, {args.workers} workers ==")
    head = ["layer", "zoom", "server", "p50 ms", "max ms", "median KB", "median features"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    say("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


def wait_seeded(server: object, collections: list[str], timeout: float) -> None:
    """Until /health lists every collection as seeded; says how long it took."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        seeded = httpx.get(f"{server.process.url}/health", timeout=30).json().get("tiles", {}).get("seeded", [])
        if set(collections) <= set(seeded):
            say(f"  seeded by `udp seed` {time.perf_counter() - start:.0f} s after start-up: {', '.join(collections)}")
            return
        time.sleep(2)
    raise SystemExit(f"not seeded after {timeout:.0f} s: {collections}")


def measure(server: tuple, layers: dict, centre: dict, n: int, rows: list[list[str]]) -> None:
    name, srv, url = server
    for layer in layers:
        for z in ZOOMS:
            tiles = nearest_tiles(*centre[layer], z, n)
            times, sizes, counts = time_tiles(lambda t, lay=layer: url(srv, lay, t), layer, tiles)
            rows.append([layer, str(z), name, f"{statistics.median(times):,.1f}", f"{max(times):,.0f}",
                         f"{statistics.median(sizes) / 1024:,.0f}", f"{statistics.median(counts):,.0f}"])
            say("  " + "  ".join(rows[-1]))


if __name__ == "__main__":
    sys.exit(main())
