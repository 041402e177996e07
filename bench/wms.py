"""WMS and WFS at city scale: MapServer behind /wms and /wfs on bench/city_bench.py's 1,000,000 street-tree points
and 300,000 footprints (cached under --cache-dir), in one run, each server with 2 workers:

- `pg`: the layers as live PostGIS tables (MapServer reads them in place; no overviews: they have no version);
- `gpkg`: the GeoPackages imported into the SQLite store (FlatGeobuf snapshots with overviews);
- `gpkg-pgstore`: the GeoPackages imported into a PostgreSQL store (read in place, overviews as snapshots).

Per server it times the first GetCapabilities (the snapshots and overviews are written then), then each request
--repeat times: a 256 × 256 GetMap of the whole of each layer and one of a neighbourhood (the box holding 1 % of
the rows), and a WFS GetFeature of 1,000 features in that box as GeoJSON. The same GetMaps are also run by
MapServer's program as a CGI program directly on the mapfile the platform wrote (a process per request, no
HTTP, no platform): the baseline of the choice between CGI and the FastCGI processes the platform runs.
Prints p50 and max in ms.

    python bench/wms.py [--points 1000000] [--polygons 300000] [--repeat 9] [--pg postgresql://…]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
from city_bench import bbox_for, city_layers, load_postgis, start_platform
from harness import Database, create_pg, say

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ows import mapserver  # noqa: E402  (the repository's package, after the path above)


def getmap(layer: str, box: list[float]) -> dict[str, str]:
    """A 256 × 256 PNG GetMap in EPSG:4326 (WMS 1.3.0: latitude first)."""
    return {"SERVICE": "WMS", "REQUEST": "GetMap", "VERSION": "1.3.0", "LAYERS": layer, "STYLES": "",
            "CRS": "EPSG:4326", "BBOX": f"{box[1]},{box[0]},{box[3]},{box[2]}", "WIDTH": "256", "HEIGHT": "256",
            "FORMAT": "image/png"}


def timed(client: httpx.Client, url: str, params: dict[str, str], repeat: int, want: str) -> list[float]:
    """ms of each of `repeat` requests (after one not counted), each answer checked."""
    out = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        r = client.get(url, params=params)
        ms = (time.perf_counter() - start) * 1000
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith(want):
            raise SystemExit(f"{r.url}: {r.status_code} {r.headers.get('content-type')} {r.text[:300]}")
        if i:
            out.append(ms)
    return out


def direct(mapfile: Path, config: Path, params: dict[str, str], repeat: int) -> list[float]:
    """ms of MapServer's program run directly on a mapfile, as the platform runs it."""
    env = {"PATH": os.environ["PATH"], "MAPSERVER_CONFIG_FILE": str(config), "MS_MAPFILE": str(mapfile),
           "REQUEST_METHOD": "GET", "QUERY_STRING": urlencode(params)}
    out = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        done = subprocess.run([mapserver.mapserv()], env=env, capture_output=True)
        ms = (time.perf_counter() - start) * 1000
        if b"image/png" not in done.stdout[:200]:
            raise SystemExit(f"mapserv {params}: {done.stdout[:300]!r}")
        if i:
            out.append(ms)
    return out


def latest_mapfile(view_layer: str) -> tuple[Path, Path] | None:
    """The newest mapfile the platform wrote (under the system's temp directory) naming the layer, and its
    MapServer config."""
    found = sorted(Path("/tmp").glob("udp-*/ows/*.map"), key=lambda p: p.stat().st_mtime, reverse=True)
    for m in found:
        if f'NAME "{view_layer}"' in m.read_text():
            return m, m.parent / "mapserver.conf"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--polygons", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-dir", default="~/.cache/udp-bench-features")
    ap.add_argument("--pg", default=os.environ.get("UDP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--start-timeout", type=float, default=900)
    ap.add_argument("--kinds", default="pg,gpkg,gpkg-pgstore", help="which of the three servers to run")
    args = ap.parse_args()
    if mapserver.mapserv() is None:
        raise SystemExit("MapServer is not installed (Debian: cgi-mapserver)")
    cache, work, layers = city_layers(args.cache_dir, args.points, args.polygons, "wms")
    db: Database = create_pg(args.pg, "udp_bench_wms")
    store_db: Database = create_pg(args.pg, "udp_bench_wms_store")
    rows: list[list[str]] = []
    try:
        for layer, _, tsv in layers.values():
            load_postgis(db.url, layer, tsv)
        for kind in args.kinds.split(","):
            sources = {n: f"{db.url}#public.{n}" if kind == "pg" else str(gpkg) for n, (_, gpkg, _) in layers.items()}
            server = start_platform(kind, work, sources, args.workers, "warning", args.start_timeout,
                                    store=store_db.url if kind == "gpkg-pgstore" else None)
            try:
                measure(kind, server.process.url, layers, args.repeat, rows)
            finally:
                server.stop()
    finally:
        db.drop()
        store_db.drop()
    say(f"\n== WMS and WFS through MapServer, {args.repeat} requests each, {args.workers} workers ==")
    head = ["server", "request", "p50 ms", "max ms"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    say("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


def measure(kind: str, base: str, layers: dict, repeat: int, rows: list[list[str]]) -> None:
    """One server's figures into rows."""
    def add(what: str, times: list[float]) -> None:
        rows.append([kind, what, f"{statistics.median(times):,.1f}", f"{max(times):,.0f}"])
        say("  " + "  ".join(rows[-1]))

    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        r = client.get(f"{base}/wms", params={"SERVICE": "WMS", "REQUEST": "GetCapabilities"})
        add("first GetCapabilities (snapshots written)", [(time.perf_counter() - start) * 1000])
        assert r.status_code == 200, r.text[:300]
        add("GetCapabilities", timed(client, f"{base}/wms", {"SERVICE": "WMS", "REQUEST": "GetCapabilities"},
                                     repeat, "text/xml"))
        for name, (layer, _, _) in layers.items():
            collection = f"{name}_{kind.replace('-', '_')}"
            whole = [float(layer.lon.min()), float(layer.lat.min()), float(layer.lon.max()), float(layer.lat.max())]
            near = bbox_for(layer)
            for label, box in (("whole", whole), ("1 %", near)):
                params = getmap(collection, box)
                add(f"GetMap {name} {label}", timed(client, f"{base}/wms", params, repeat, "image/png"))
                found = latest_mapfile(collection)
                if found is not None:
                    add(f"  MapServer as CGI alone, {name} {label}", direct(*found, params, repeat))
            wfs = {"SERVICE": "WFS", "REQUEST": "GetFeature", "VERSION": "2.0.0", "TYPENAMES": collection,
                   "COUNT": "1000", "OUTPUTFORMAT": "geojson",
                   "BBOX": f"{near[1]},{near[0]},{near[3]},{near[2]},urn:ogc:def:crs:EPSG::4326"}
            add(f"WFS {name} 1,000 in 1 %", timed(client, f"{base}/wfs", wfs, repeat, "application/geo+json"))


if __name__ == "__main__":
    sys.exit(main())
