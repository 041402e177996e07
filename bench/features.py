"""OGC API Features: the platform's /ogcapi against stock pygeoapi 0.21, on the same 100,000 real points.

    python bench/features.py [--features 100000] [--requests 60] [--stock-requests 5] [--clients 1]
                             [--skip-ours] [--skip-stock] [--keep-files]
    python bench/features.py --scale city [--points 1000000] [--polygons 300000] [--requests 60] [--clients 1]
                             [--workers 2] [--skip pg|gpkg|tipg] [--cache-dir …]   (bench/city_bench.py)

It builds a point dataset from real Seoul locations (the Ttareungyi bike stations, Gangnam's CCTV
cameras and the S-DoT sensors, 4,154 points), repeated with small coordinate offsets (copy k is
shifted by (k % 5, k // 5) × 0.001°) until --features points, each with a unique integer `fid`, a
`name`, a `district` and an integer `units`; it writes them to a temp dir as a CSV (fid,name,district,
units,lon,lat) and as a GeoJSON FeatureCollection. Then, one server at a time:

1. ours: a platform config.yml with both files as collections (points_csv, points_geojson), served by
   `udp serve --workers 1` on a SQLite store under the temp dir, OGC API Features at /ogcapi;
2. stock: a pygeoapi config with the same files through pygeoapi's own CSV and GeoJSON providers
   (server.limits default_items 1000, max_items 10000), its OpenAPI document made by
   `pygeoapi openapi generate`, served by `uvicorn pygeoapi.starlette_app:APP` (one process).

For each server and collection it sends (httpx, `Accept: application/geo+json`) one warm-up request
and then --requests timed ones (stock: --stock-requests, as stock re-reads the whole file on every
request, 1-3 s each), sequentially or spread over --clients threads, of each query: the first page
(`items?limit=1000`), a deep page (`offset` = 90 % of the points), a bbox holding ~1 % of the points, a CQL2 filter
(`units > 20`; stock pygeoapi refuses `filter-lang=cql2-text`, so it is sent `cql-text` and ignores the
filter: compare numberMatched) and one item (`items/{fid}`). Every response is checked (200, the
number of features, numberMatched against the dataset; the warm-up's features against the query). It
prints p50/p99 latency per query as it goes, each server's time to start and peak RSS (VmHWM of its
process tree), and a table with the targets: ours p50 <= 50 ms for `items?limit=1000` and >= 10x
faster than stock. Errors (a 404 while /ogcapi does not exist, a server that dies) are reported per
query; the script carries on. It asserts nothing. The servers are stopped and the temp dir removed at
the end, also on Ctrl-C or an error (--keep-files keeps the dataset, configs and server logs).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import city_bench
import httpx
import orjson
import yaml
from harness import Ports, Process, Udp, say, tail  # bench/ is the script's own directory
from ogc_timing import (
    HEADERS,
    PAGE,
    Query,
    Result,
    Server,
    describe_error,
    features_of,
    fmt_ms,
    line_for,
    matched_text,
    print_table,
    run_query,
)
from seoul_places import BIKES, CCTV, SDOT, real_points

COLLECTIONS = ("points_csv", "points_geojson")
FILTER = "units > 20"
OFFSET_STEP = 0.001  # degrees between copies of the real points

TARGET_P50_MS = 50.0  # ours, items?limit=1000
TARGET_RATIO = 10.0  # stock p50 / ours p50, items?limit=1000


# -- the dataset -----------------------------------------------------------------------------------
@dataclass
class Point:
    """One row of the benchmark dataset."""

    fid: int
    name: str
    district: str
    units: int
    lon: float
    lat: float


def build_points(n: int) -> tuple[list[Point], int]:
    """`n` points: the real ones, then copies shifted by multiples of OFFSET_STEP; and how many are real."""
    real = real_points()
    if not real:
        raise RuntimeError(f"no points in {BIKES}, {CCTV} or {SDOT}")
    points = []
    for i in range(n):
        k, (name, district, units, lon, lat) = divmod(i, len(real))[0], real[i % len(real)]
        dx, dy = (k % 5) * OFFSET_STEP, (k // 5) * OFFSET_STEP
        points.append(Point(i + 1, name if k == 0 else f"{name} #{k}", district, units,
                            round(lon + dx, 7), round(lat + dy, 7)))
    return points, len(real)


def write_csv(points: list[Point], path: Path) -> None:
    """The points as CSV: fid,name,district,units,lon,lat (UTF-8, no BOM)."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fid", "name", "district", "units", "lon", "lat"])
        for p in points:
            w.writerow([p.fid, p.name, p.district, p.units, p.lon, p.lat])


def write_geojson(points: list[Point], path: Path) -> None:
    """The points as a GeoJSON FeatureCollection (fid both as the Feature id and as a property)."""
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": p.fid, "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
         "properties": {"fid": p.fid, "name": p.name, "district": p.district, "units": p.units}}
        for p in points]}
    path.write_bytes(orjson.dumps(doc))


def one_percent_bbox(points: list[Point]) -> tuple[list[float], int]:
    """A square around the median point holding ~1 % of the points, and how many it holds exactly."""
    lons, lats = sorted(p.lon for p in points), sorted(p.lat for p in points)
    cx, cy = lons[len(lons) // 2], lats[len(lats) // 2]
    dist = sorted(max(abs(p.lon - cx), abs(p.lat - cy)) for p in points)
    half = dist[max(0, len(points) // 100 - 1)] + 1e-7
    bbox = [round(cx - half, 6), round(cy - half, 6), round(cx + half, 6), round(cy + half, 6)]
    inside = sum(1 for p in points if bbox[0] <= p.lon <= bbox[2] and bbox[1] <= p.lat <= bbox[3])
    return bbox, inside


# -- the servers -----------------------------------------------------------------------------------
def start_ours(work: Path, csv_path: Path, geojson_path: Path, log_level: str) -> Server:
    """`udp serve --workers 1` with both files as collections, on a SQLite store in `work`."""
    config = work / "udp-config.yml"
    config.write_text(yaml.safe_dump({
        "title": "Features benchmark",
        "collections": {
            "points_csv": {"title": "Points (CSV)", "source": str(csv_path), "x": "lon", "y": "lat", "id": "fid"},
            "points_geojson": {"title": "Points (GeoJSON)", "source": str(geojson_path), "id": "fid"},
        },
    }, allow_unicode=True, sort_keys=False), encoding="utf-8")
    udp = Udp("serve", "--config", str(config), "--store", f"sqlite:///{work / 'udp.db'}", "--workers", "1",
              "--log-level", log_level, log=work / "udp-serve.log")
    udp.name = "ours"
    server = Server(udp, udp.port, "/ogcapi")
    server.ready(f"{udp.url}/health", 300)
    return server


def pygeoapi_config(port: int, csv_path: Path, geojson_path: Path, bbox: list[float]) -> dict[str, Any]:
    """A minimal pygeoapi 0.21 configuration with the two files as collections (stock providers)."""
    def collection(title: str, provider: dict[str, Any]) -> dict[str, Any]:
        extents = {"spatial": {"bbox": list(bbox), "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}}
        return {"type": "collection", "title": title, "description": f"{title}: benchmark points in Seoul",
                "keywords": ["points"], "extents": extents,
                "providers": [{"type": "feature", "id_field": "fid", **provider}]}

    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": port},
            "url": f"http://127.0.0.1:{port}",
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "language": "en-US",
            "cors": False,
            "pretty_print": False,
            # without limits pages hold at most 10 features (max_items defaults to 10)
            "limits": {"default_items": PAGE, "max_items": 10 * PAGE},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OpenStreetMap"},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {"title": "Features benchmark (stock pygeoapi)", "description": "benchmark",
                               "keywords": ["benchmark"], "keywords_type": "theme", "terms_of_service": "",
                               "url": "https://example.org"},
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "benchmark", "url": "https://example.org"},
            "contact": {"name": "benchmark", "email": "bench@example.org"},
        },
        "resources": {
            "points_csv": collection("Points (CSV)", {"name": "CSV", "data": str(csv_path),
                                                      "geometry": {"x_field": "lon", "y_field": "lat"}}),
            "points_geojson": collection("Points (GeoJSON)", {"name": "GeoJSON", "data": str(geojson_path)}),
        },
    }


def start_stock(work: Path, csv_path: Path, geojson_path: Path, bbox: list[float]) -> Server:
    """Stock pygeoapi (its CSV and GeoJSON providers) under uvicorn, one process."""
    ports = Ports(1)
    port = ports[0]
    config = work / "pygeoapi-config.yml"
    config.write_text(yaml.safe_dump(pygeoapi_config(port, csv_path, geojson_path, bbox), sort_keys=False),
                      encoding="utf-8")
    openapi = work / "pygeoapi-openapi.yml"
    env = dict(os.environ, PYGEOAPI_CONFIG=str(config), PYGEOAPI_OPENAPI=str(openapi),
               PYTHONUTF8="1")  # the CSV provider opens the file in the locale's encoding
    exe = shutil.which("pygeoapi")
    if exe:
        gen = subprocess.run([exe, "openapi", "generate", str(config), "--output-file", str(openapi)], env=env,
                             capture_output=True, text=True, check=False)
        if gen.returncode != 0 or not openapi.exists():
            raise RuntimeError(f"pygeoapi openapi generate failed ({gen.returncode}):\n{gen.stdout}{gen.stderr}")
    else:
        from pygeoapi.openapi import generate_openapi_document

        openapi.write_text(generate_openapi_document(config, "yaml"), encoding="utf-8")
    cmd = [sys.executable, "-m", "uvicorn", "pygeoapi.starlette_app:APP", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = Server(Process(cmd, work / "pygeoapi.log", env, "stock", ports), port, "")
    server.ready(f"{server.url}/collections", 120)
    return server


# -- the queries -----------------------------------------------------------------------------------
def prop(feature: dict[str, Any], name: str) -> Any:
    """A property of a feature (the id from `id` when it is not a property)."""
    props = feature.get("properties") or {}
    if name in props:
        return props[name]
    return feature.get("id") if name == "fid" else None


def make_queries(points: list[Point], bbox: list[float], bbox_count: int) -> list[Query]:
    """The five queries, with what the dataset says they should match."""
    n = len(points)
    offset = min(n * 9 // 10, max(0, n - PAGE))
    item = points[n // 2].fid
    units_over = sum(1 for p in points if p.units > 20)
    ids = {p.fid for p in points}

    def page_check(lo: int) -> Callable[[dict[str, Any]], str]:
        def check(doc: dict[str, Any]) -> str:
            got = [str(prop(f, "fid")) for f in features_of(doc)]
            want = [str(points[i].fid) for i in range(lo, min(n, lo + PAGE))]
            return "" if got == want else "not the dataset's rows in file order"
        return check

    def bbox_check(doc: dict[str, Any]) -> str:
        bad = 0
        for f in features_of(doc):
            lon, lat = ((f.get("geometry") or {}).get("coordinates") or [None, None])[:2]
            if lon is None or not (bbox[0] <= lon <= bbox[2] and bbox[1] <= lat <= bbox[3]):
                bad += 1
        return f"{bad} features outside the bbox" if bad else ""

    def filter_check(doc: dict[str, Any]) -> str:
        bad = sum(1 for f in features_of(doc) if not (isinstance(prop(f, "units"), int | float)
                                                       and prop(f, "units") > 20))
        return f"{bad} features with units <= 20 (filter ignored?)" if bad else ""

    def item_check(doc: dict[str, Any]) -> str:
        if doc.get("type") != "Feature":
            return f"type {doc.get('type')!r}, not Feature"
        fid = prop(doc, "fid")
        return "" if str(fid) == str(item) and int(fid) in ids else f"fid {fid!r}, not {item}"

    return [
        Query("first", f"items?limit={PAGE}", "/items", {"limit": str(PAGE)}, n, page_check(0)),
        Query("deep", f"items?limit={PAGE}&offset={offset}", "/items", {"limit": str(PAGE), "offset": str(offset)},
              n, page_check(offset)),
        Query("bbox", f"items?bbox=…&limit={PAGE} (~1 %)", "/items",
              {"bbox": ",".join(f"{v:.6f}" for v in bbox), "limit": str(PAGE)}, bbox_count, bbox_check),
        Query("filter", f"items?filter={FILTER}", "/items",
              {"filter": FILTER, "filter-lang": "cql2-text", "limit": str(PAGE)}, units_over, filter_check),
        Query("item", "items/{fid}", f"/items/{item}", {}, None, item_check),
    ]


def bench_server(server: Server, name: str, queries: list[Query], requests: int, clients: int,
                 timeout: float) -> dict[tuple[str, str], Result]:
    """Every query on every collection of one server."""
    out: dict[tuple[str, str], Result] = {}
    for coll in COLLECTIONS:
        for q in queries:
            params = dict(q.params)
            if name == "stock" and params.get("filter-lang") == "cql2-text":
                params["filter-lang"] = "cql-text"  # pygeoapi 0.21 refuses cql2-text (and ignores the filter)
            res = run_query(f"{server.base}/collections/{coll}{q.path}", params, q, requests, clients, timeout)
            out[(coll, q.key)] = res
            say(line_for(name, coll, q, res, clients))
            if server.proc.poll() is not None:
                say(f"{name}: the server exited ({server.proc.returncode}):\n{tail(server.log_path)}")
                return out
    return out


def probe_stock_cql2(server: Server, timeout: float) -> str:
    """What stock pygeoapi answers to filter-lang=cql2-text."""
    try:
        r = httpx.get(f"{server.base}/collections/{COLLECTIONS[0]}/items", headers=HEADERS, timeout=timeout,
                      params={"filter": FILTER, "filter-lang": "cql2-text", "limit": "1"})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return describe_error(r) if r.status_code != 200 else "200 (accepted)"


# -- the table -------------------------------------------------------------------------------------
def figure(res: Result | None, ran: bool) -> str:
    """p50/p99 of a result, or what went wrong."""
    if res is None:
        return "not run" if ran else "skipped"
    if res.status != "ok":
        return "error " + res.status.split(" ")[0].rstrip(":")
    if not res.lat_ms:
        return "FAILED"
    return f"{fmt_ms(res.p50)} / {fmt_ms(res.p99)}" + ("  CHECK" if res.problems or res.failed else "")



def report(queries: list[Query], ours: dict[tuple[str, str], Result] | None,
           stock: dict[tuple[str, str], Result] | None) -> None:
    """The summary table with the targets."""
    rows = []
    for q in queries:
        for coll in COLLECTIONS:
            o = ours.get((coll, q.key)) if ours is not None else None
            s = stock.get((coll, q.key)) if stock is not None else None
            ok_o = o is not None and o.status == "ok" and bool(o.lat_ms)
            ok_s = s is not None and s.status == "ok" and bool(s.lat_ms)
            ratio = s.p50 / o.p50 if ok_o and ok_s and o.p50 > 0 else float("nan")
            target = meets = ""
            if q.key == "first":
                target = f"ours <= {TARGET_P50_MS:.0f} ms, >= {TARGET_RATIO:.0f}x"
                verdicts = []
                if ours is not None:
                    verdicts.append("yes" if ok_o and o.p50 <= TARGET_P50_MS else "NO")
                if ours is not None and stock is not None:
                    verdicts.append("yes" if ratio >= TARGET_RATIO else "NO")
                meets = "/".join(verdicts)
            expected = "-" if q.expected is None else f"{q.expected:,}"
            shown = "-" if ratio != ratio else f"{ratio:,.1f}x"
            if ratio == ratio and o.matched != s.matched:  # stock ignored the filter: not the same work
                shown += " (not like for like)"
            rows.append([q.label, coll, figure(o, ours is not None), figure(s, stock is not None), shown,
                         matched_text(o), matched_text(s), expected, target, meets])
    print_table(rows, ["query", "collection", "ours p50/p99 ms", "stock p50/p99 ms", "stock/ours",
                       "matched ours", "matched stock", "dataset", "target", "meets"])


# -- main ------------------------------------------------------------------------------------------
def interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C: clean up and stop."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    """Build the dataset, run both servers one after the other, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=100_000, help="points in the dataset")
    ap.add_argument("--requests", type=int, default=60, help="timed requests per query on our server")
    ap.add_argument("--stock-requests", type=int, default=5,
                    help="timed requests per query on stock pygeoapi (1-3 s each at 100,000 points)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent client threads")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--skip-ours", action="store_true", help="do not run our server")
    ap.add_argument("--skip-stock", action="store_true", help="do not run stock pygeoapi")
    ap.add_argument("--server-log-level", default="warning", help="`udp serve --log-level`")
    ap.add_argument("--keep-files", action="store_true", help="keep the temp dir (dataset, configs, server logs)")
    ap.add_argument("--scale", choices=["demo", "city"], default="demo",
                    help="demo: --features points against stock pygeoapi; city: the platform against tipg with "
                         "--points and --polygons from PostGIS and GeoPackage (see bench/city_bench.py)")
    city_bench.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.scale == "city":
        return city_bench.run_city(args)
    if args.features < 1:
        ap.error("--features must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="udp_bench_features_"))
    servers: list[Server] = []
    failed = False
    signal.signal(signal.SIGTERM, interrupt)
    try:
        t = time.perf_counter()
        points, real = build_points(args.features)
        csv_path, geojson_path = work / "points.csv", work / "points.geojson"
        write_csv(points, csv_path)
        write_geojson(points, geojson_path)
        bbox, inside = one_percent_bbox(points)
        lons, lats = [p.lon for p in points], [p.lat for p in points]
        extent = [min(lons), min(lats), max(lons), max(lats)]
        say(f"dataset: {len(points):,} points from {real:,} real ones (bike stations, CCTV, S-DoT), "
            f"{-(-len(points) // real)} copies; CSV {csv_path.stat().st_size / 2**20:.1f} MiB, "
            f"GeoJSON {geojson_path.stat().st_size / 2**20:.1f} MiB in {work} ({time.perf_counter() - t:.1f}s)")
        say(f"  extent {extent}; bbox {bbox} holds {inside:,} points "
            f"({100 * inside / len(points):.2f} %); units > 20: {sum(p.units > 20 for p in points):,} points")
        queries = make_queries(points, bbox, inside)

        ours: dict[tuple[str, str], Result] | None = None
        stock: dict[tuple[str, str], Result] | None = None
        info: list[str] = []
        if not args.skip_ours:
            say("")
            server = start_ours(work, csv_path, geojson_path, args.server_log_level)
            servers.append(server)
            ours = bench_server(server, "ours", queries, args.requests, args.clients, args.timeout)
            main_mb, tree_mb, nproc = server.peak_rss()
            info.append(f"ours:  ready after {server.startup:.1f}s; peak RSS (VmHWM) {main_mb:,.0f} MB serve process, "
                        f"{tree_mb:,.0f} MB over {nproc} process{'es' if nproc > 1 else ''}; "
                        f"{args.requests} timed requests per query")
            say(info[-1])
            server.stop()
            servers.remove(server)
        if not args.skip_stock:
            say("")
            server = start_stock(work, csv_path, geojson_path, extent)
            servers.append(server)
            refused = probe_stock_cql2(server, args.timeout)
            say(f"stock: filter-lang=cql2-text → {refused}; the filter query is sent with filter-lang=cql-text, "
                "which pygeoapi parses and then ignores for the CSV and GeoJSON providers (see numberMatched)")
            stock = bench_server(server, "stock", queries, args.stock_requests, args.clients, args.timeout)
            main_mb, tree_mb, nproc = server.peak_rss()
            info.append(f"stock: ready after {server.startup:.1f}s; peak RSS (VmHWM) {main_mb:,.0f} MB uvicorn "
                        f"process ({nproc} process{'es' if nproc > 1 else ''}); {args.stock_requests} timed requests "
                        f"per query; cql2-text → {refused}")
            say(info[-1])
            server.stop()
            servers.remove(server)

        say("")
        say(f"== OGC API Features benchmark: {args.features:,} points, {args.clients} client"
            f"{'s' if args.clients > 1 else ''}, Accept: application/geo+json; "
            f"ours = udp serve --workers 1 (/ogcapi), stock = pygeoapi 0.21 CSV/GeoJSON providers under uvicorn ==")
        report(queries, ours, stock)
        say("")
        for line in info:
            say(line)
        say("stock's filter row: pygeoapi 0.21 ignores the CQL filter for these providers (numberMatched = all points)")
        return 0
    except BaseException as exc:
        failed = True
        if isinstance(exc, KeyboardInterrupt):
            say("\ninterrupted: cleaning up")
            return 130
        say(f"\nERROR: {type(exc).__name__}: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        for server in servers:
            server.stop()
        if args.keep_files:
            say(f"files kept in {work}" + (" (the run failed)" if failed else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)
            say(f"removed {work}")


if __name__ == "__main__":
    sys.exit(main())
