"""OGC API Features at city scale (`python bench/features.py --scale city`): the platform against tipg on the same
PostGIS tables, and the platform on the same data as GeoPackages, in one run.

Two layers, made with numpy from a fixed seed and cached under --cache-dir (a second run rebuilds nothing):
`trees` (--points, default 1,000,000 Seoul street-tree-like points: the real Seoul locations features.py uses,
repeated with offsets; `id` int, `species` text, `height` float, `planted` date) and `buildings` (--polygons,
default 300,000 small square footprints around the same places; `id`, `usage` text, `floors` int, `height`
float, `built` date). Each is COPYed into a throw-away PostgreSQL database (GiST index, primary key, ANALYZE)
and written once as a GeoPackage (pyogrio).

Then, one server at a time, each with 2 workers: the platform with the PostGIS tables as collections
(`source: postgresql://…#public.trees`), the platform with the GeoPackages, and tipg 1.6 (its own virtual
environment under --cache-dir, made when missing) on the same tables. Per collection it times a page of 1,000,
page 901 of 1,000 (offset = 90 %), 1,000 items in a bbox holding 1 % (at least 2,000), a CQL2 filter
(`species='Ginkgo' AND height>24`, `usage='office' AND height>24`) with limit=100 and an exact numberMatched,
and one item by id; every warm-up answer is checked against the data. It prints p50/p99 per request and server
with the ratios, each server's start-up time (until every collection answers) and the RSS of every process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from harness import Database, Ports, Process, Udp, create_pg, say
from ogc_timing import (
    Query,
    Result,
    Server,
    features_of,
    fmt_ms,
    line_for,
    matched_text,
    print_table,
    run_query,
    status_mb,
)
from seoul_places import real_points

SEED = 13
PAGE = 1000
FILTER_LIMIT = 100
COPY_STEP = 0.002  # degrees between copies of the real locations
CACHE_VERSION = 1  # bump when the generated data changes
TIPG_VERSION = "tipg>=1.6,<1.7"


# -- the data ----------------------------------------------------------------------------------------------------
@dataclass
class Layer:
    """One generated layer: its columns (numpy arrays, `id` first), centres and how to filter it."""

    name: str
    geometry: str  # Point or Polygon
    columns: dict[str, np.ndarray]
    lon: np.ndarray
    lat: np.ndarray
    half: np.ndarray | None  # polygons: half the side of each square, degrees
    text: tuple[str, str]  # the CQL2 filter: column = value …
    above: tuple[str, float]  # … AND column > value

    @property
    def size(self) -> int:
        """Rows."""
        return len(self.lon)

    @property
    def cql2(self) -> str:
        """The CQL2 text filter."""
        return f"{self.text[0]}='{self.text[1]}' AND {self.above[0]}>{self.above[1]:g}"

    def filtered(self) -> np.ndarray:
        """The rows the filter matches."""
        return (self.columns[self.text[0]] == self.text[1]) & (self.columns[self.above[0]] > self.above[1])

    def in_bbox(self, bbox: list[float]) -> np.ndarray:
        """The rows whose geometry intersects the bbox."""
        h = self.half if self.half is not None else 0.0
        return ((self.lon - h <= bbox[2]) & (self.lon + h >= bbox[0])
                & (self.lat - h <= bbox[3]) & (self.lat + h >= bbox[1]))


def centres(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` places: the real Seoul locations, then copies shifted by multiples of COPY_STEP, a few metres of jitter."""
    real = np.array([(p[3], p[4]) for p in real_points()], dtype=np.float64)
    i = np.arange(n)
    k, j = i // len(real), i % len(real)
    lon = real[j, 0] + (k % 16) * COPY_STEP + rng.normal(0, 0.00005, n)
    lat = real[j, 1] + (k // 16) * COPY_STEP + rng.normal(0, 0.00005, n)
    return lon.round(7), lat.round(7)


def days(rng: np.random.Generator, n: int, first: str, last: str) -> np.ndarray:
    """`n` dates between two days."""
    lo, hi = np.datetime64(first, "D"), np.datetime64(last, "D")
    return lo + rng.integers(0, int((hi - lo).astype(int)), n).astype("timedelta64[D]")


def choice(rng: np.random.Generator, n: int, shares: dict[str, float]) -> np.ndarray:
    """`n` values drawn with the given shares."""
    p = np.array(list(shares.values()))
    return rng.choice(np.array(list(shares), dtype=object), n, p=p / p.sum())


# Seoul's street trees are mostly ginkgo and plane trees; with heights ~N(11, 6.7) about 0.8 % of all trees
# are ginkgos over 24 m (8,000 of 1,000,000)
SPECIES = {"Ginkgo": 0.30, "Platanus": 0.22, "Zelkova": 0.13, "Prunus": 0.12, "Styphnolobium": 0.07,
           "Metasequoia": 0.04, "Acer": 0.04, "Pinus": 0.03, "Tilia": 0.03, "other": 0.02}
USAGE = {"residential": 0.55, "commercial": 0.15, "office": 0.08, "industrial": 0.06, "public": 0.05,
         "school": 0.03, "other": 0.08}


def make_trees(n: int) -> Layer:
    """The street-tree points."""
    rng = np.random.default_rng(SEED)
    lon, lat = centres(n, rng)
    cols = {"id": np.arange(1, n + 1, dtype=np.int64), "species": choice(rng, n, SPECIES),
            "height": np.clip(rng.normal(11, 6.7, n), 1, 40).round(1), "planted": days(rng, n, "1970-01-01",
                                                                                        "2024-12-31")}
    return Layer("trees", "Point", cols, lon, lat, None, ("species", "Ginkgo"), ("height", 24.0))


def make_buildings(n: int) -> Layer:
    """The building footprints: squares of 8-30 m around the same places (shifted half a copy step)."""
    rng = np.random.default_rng(SEED + 1)
    lon, lat = centres(n, rng)
    floors = np.clip(rng.geometric(0.25, n), 1, 60).astype(np.int64)
    cols = {"id": np.arange(1, n + 1, dtype=np.int64), "usage": choice(rng, n, USAGE), "floors": floors,
            "height": (floors * 3.2 + rng.uniform(0, 3, n)).round(1), "built": days(rng, n, "1950-01-01",
                                                                                       "2024-12-31")}
    half = rng.uniform(0.00004, 0.00015, n).round(6)
    return Layer("buildings", "Polygon", cols, lon + COPY_STEP / 2, lat + COPY_STEP / 2, half,
                 ("usage", "office"), ("height", 24.0))


def geometries(layer: Layer) -> np.ndarray:
    """The layer's shapely geometries (EPSG:4326)."""
    import shapely

    if layer.half is None:
        geoms = shapely.points(layer.lon, layer.lat)
    else:
        geoms = shapely.box(layer.lon - layer.half, layer.lat - layer.half, layer.lon + layer.half,
                            layer.lat + layer.half)
    return shapely.set_srid(geoms, 4326)


def cached_files(layer: Layer, cache: Path) -> tuple[Path, Path]:
    """The layer as a GeoPackage and as COPY text (tab-separated, hex EWKB), written once into `cache`."""
    import pandas as pd
    import pyogrio
    import shapely

    gpkg, tsv = cache / f"{layer.name}.gpkg", cache / f"{layer.name}.tsv"
    if gpkg.exists() and tsv.exists():
        return gpkg, tsv
    t = time.perf_counter()
    geoms = geometries(layer)
    frame = pd.DataFrame(layer.columns)
    frame["geom"] = shapely.to_wkb(geoms, hex=True, include_srid=True)
    frame.to_csv(tsv.with_suffix(".tmp"), sep="\t", header=False, index=False)
    tsv.with_suffix(".tmp").rename(tsv)
    fields = [c for c in layer.columns if c != "id"]
    data = [layer.columns[c].astype("datetime64[ms]") if layer.columns[c].dtype.kind == "M" else layer.columns[c]
            for c in fields]
    tmp = gpkg.with_name(gpkg.stem + ".tmp.gpkg")
    tmp.unlink(missing_ok=True)
    # the id column is the GeoPackage's own fid, the key the platform and GDAL use
    pyogrio.raw.write(str(tmp), shapely.to_wkb(geoms), [layer.columns["id"], *data], ["id", *fields],
                      driver="GPKG", layer=layer.name, geometry_type=layer.geometry, crs="EPSG:4326",
                      layer_options={"FID": "fid"})
    tmp.rename(gpkg)
    say(f"  {layer.name}: wrote {gpkg.name} ({gpkg.stat().st_size / 2**20:,.0f} MiB) and {tsv.name} "
        f"in {time.perf_counter() - t:.1f}s")
    return gpkg, tsv


def load_postgis(url: str, layer: Layer, tsv: Path) -> float:
    """COPY the layer into a table of its name, then its primary key, GiST index and statistics; the seconds."""
    import psycopg

    types = {"i": "bigint", "f": "double precision", "M": "date", "O": "text"}
    cols = ", ".join(f"{c} {types[a.dtype.kind]}" for c, a in layer.columns.items())
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute(f"CREATE TABLE {layer.name} ({cols}, geom geometry({layer.geometry}, 4326) NOT NULL)")
        with conn.cursor() as cur, cur.copy(f"COPY {layer.name} FROM STDIN") as copy, tsv.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                copy.write(chunk)
        conn.execute(f"ALTER TABLE {layer.name} ADD PRIMARY KEY (id)")
        conn.execute(f"CREATE INDEX ON {layer.name} USING gist (geom)")
        conn.execute(f"ANALYZE {layer.name}")
    return time.perf_counter() - t


def layer_data(name: str, n: int, cache_root: Path) -> tuple[Layer, Path, Path]:
    """A layer and its files, from the cache when they are there."""
    cache = cache_root / f"{name}-{n}-seed{SEED}-v{CACHE_VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    layer = (make_trees if name == "trees" else make_buildings)(n)
    say(f"  {name}: {n:,} rows generated in {time.perf_counter() - t:.1f}s")
    return layer, *cached_files(layer, cache)


def city_layers(cache_dir: str, points: int, polygons: int, run: str) -> tuple[Path, Path, dict[str, tuple]]:
    """The cache, a work directory of this run in it (`run`-pid), and the two layers with their files."""
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"{run}-{os.getpid()}"
    work.mkdir()
    return cache, work, {name: layer_data(name, n, cache) for name, n in (("trees", points), ("buildings", polygons))}


# -- the queries -------------------------------------------------------------------------------------------------
def bbox_for(layer: Layer) -> list[float]:
    """A square around the median place holding 1 % of the rows, and at least two pages."""
    cx, cy = float(np.median(layer.lon)), float(np.median(layer.lat))
    dist = np.sort(np.maximum(np.abs(layer.lon - cx), np.abs(layer.lat - cy)))
    half = float(dist[min(layer.size, max(2 * PAGE, layer.size // 100)) - 1]) + 1e-7
    return [round(cx - half, 6), round(cy - half, 6), round(cx + half, 6), round(cy + half, 6)]


def queries_for(layer: Layer) -> list[Query]:
    """The five requests, with what the data says they match."""
    n = layer.size
    offset = min(n * 9 // 10, max(0, n - PAGE))
    item = n // 2
    bbox = bbox_for(layer)
    inside = int(layer.in_bbox(bbox).sum())
    text_col, text_value = layer.text
    num_col, threshold = layer.above

    def page_check(lo: int) -> Callable[[dict[str, Any]], str]:
        def check(doc: dict[str, Any]) -> str:
            got = [int(f.get("id", -1)) for f in features_of(doc)]
            return "" if got == list(range(lo + 1, min(n, lo + PAGE) + 1)) else "not ids in order"
        return check

    def filter_check(doc: dict[str, Any]) -> str:
        bad = sum(1 for f in features_of(doc) if (f.get("properties") or {}).get(text_col) != text_value
                  or not (f.get("properties") or {}).get(num_col, 0) > threshold)
        return f"{bad} features the filter does not match" if bad else ""

    def item_check(doc: dict[str, Any]) -> str:
        return "" if str(doc.get("id")) == str(item) else f"id {doc.get('id')!r}, not {item}"

    return [
        Query("first", f"items?limit={PAGE}", "/items", {"limit": str(PAGE)}, n, page_check(0)),
        Query("deep", f"items?limit={PAGE}&offset={offset}", "/items", {"limit": str(PAGE), "offset": str(offset)},
              n, page_check(offset)),
        Query("bbox", f"items?bbox=…&limit={PAGE}", "/items",
              {"bbox": ",".join(f"{v:.6f}" for v in bbox), "limit": str(PAGE)}, inside, lambda doc: ""),
        Query("filter", f"CQL2 {layer.cql2} limit={FILTER_LIMIT}", "/items",
              {"filter": layer.cql2, "filter-lang": "cql2-text", "limit": str(FILTER_LIMIT)},
              int(layer.filtered().sum()), filter_check),
        Query("item", "items/{id}", f"/items/{item}", {}, None, item_check),
    ]


# -- the servers -------------------------------------------------------------------------------------------------
def wait_ready(server: Server, urls: list[str], timeout: float) -> None:
    """Until every url answers 200 (both workers have loaded their sources when each collection answers twice)."""
    for url in urls:
        server.process.wait_http(url, timeout)
        server.process.wait_http(url, timeout)
    server.startup = time.perf_counter() - server.process.started
    say(f"{server.name}: ready after {server.startup:.1f}s")


def start_platform(kind: str, work: Path, sources: dict[str, str], workers: int, log_level: str,
                   timeout: float, store: str | None = None, seed: bool = False, changes: bool = False) -> Server:
    """`udp serve --workers N` with one collection per layer (`sources`: layer → PostGIS URL or file), on a SQLite
    store of its own or `store`; `seed`: with `udp seed` making the tiles ahead (off: nothing runs beside the
    workers that the features figures did not have); `changes`: PostGIS tables with `changes: trigger`."""
    config = work / f"udp-{kind}.yml"
    collections = {f"{name}_{kind.replace('-', '_')}": {"title": f"{name} ({kind})", "source": source, "id": "id",
                                                        **({"changes": "trigger"} if changes else {})}
                   for name, source in sources.items()}
    config.write_text(yaml.safe_dump({"title": "City-scale features benchmark", "collections": collections},
                                     sort_keys=False), encoding="utf-8")
    # files: `udp load` imports them into the store (the first-import time); PostGIS tables: `udp check` reflects
    # and counts them. Then the server starts from a store already loaded.
    store = store or f"sqlite:///{work / f'udp-{kind}.db'}"
    step = (["check", "--config", str(config)] if kind.startswith("pg")
            else ["load", "--config", str(config), "--store", store])
    t = time.perf_counter()
    with (work / f"udp-{step[0]}-{kind}.log").open("w") as log:
        code = subprocess.run([sys.executable, "-m", "udp.cli", *step], stdout=log, stderr=subprocess.STDOUT).returncode
    check = time.perf_counter() - t
    say(f"platform-{kind}: udp {step[0]} --config {config.name}: {check:.1f}s (exit {code})")
    udp = Udp("serve", "--config", str(config), "--store", store, "--workers", str(workers),
              "--log-level", log_level, *([] if seed else ["--no-seed"]), log=work / f"udp-serve-{kind}.log")
    udp.name = f"platform-{kind}"
    server = Server(udp, udp.port, "/ogcapi")
    server.check = check
    wait_ready(server, [f"{udp.url}/health"] + [f"{server.base}/collections/{c}/items?limit=1" for c in collections],
               timeout)
    return server


def tipg_python(cache: Path) -> Path:
    """tipg's virtual environment under the cache dir (made when missing); its python."""
    venv = cache / "tipg-venv"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "uvicorn").exists() or subprocess.run(
            [str(python), "-c", "import tipg.main"], capture_output=True).returncode:
        say(f"tipg: making {venv} (pip install {TIPG_VERSION} uvicorn)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TIPG_VERSION, "uvicorn"], check=True)
    return python


def start_tipg(work: Path, cache: Path, db_url: str, tables: list[str], workers: int, timeout: float) -> Server:
    """tipg on the PostGIS database under uvicorn with `workers` workers."""
    python = tipg_python(cache)
    version = subprocess.run([str(python), "-c", "import tipg; print(tipg.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    ports = Ports(1)
    port = ports[0]
    cmd = [str(python), "-m", "uvicorn", "tipg.main:app", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    env = {"DATABASE_URL": db_url, "TIPG_MAX_FEATURES_PER_QUERY": str(10 * PAGE), "TIPG_DB_SCHEMAS": '["public"]'}
    server = Server(Process(cmd, work / "tipg.log", env, f"tipg-{version}", ports), port, "")
    wait_ready(server, [f"{server.base}/collections/public.{t}/items?limit=1" for t in tables], timeout)
    return server


def started_s(pid: int) -> float:
    """When a process started, in seconds since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


def memory(server: Server) -> list[str]:
    """The RSS and peak RSS of every process of a server, when it started (a late worker is a restarted one:
    uvicorn kills a worker that does not answer its ping for 5 s), and the sums."""
    lines, rss_sum, hwm_sum, largest = [], 0.0, 0.0, 0.0
    for pid in server.process.tree():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            after = started_s(pid) - started_s(server.process.pid)
        except (OSError, IndexError, ValueError):
            continue
        rss, hwm = status_mb(pid, "VmRSS"), status_mb(pid, "VmHWM")
        rss_sum, hwm_sum = rss_sum + (rss if rss == rss else 0), hwm_sum + (hwm if hwm == hwm else 0)
        largest = max(largest, rss if rss == rss else 0)
        lines.append(f"    pid {pid:>7}: RSS {rss:7,.0f} MB, peak {hwm:7,.0f} MB, started at +{after:5.1f}s  "
                     f"{cmd[:90]}")
    lines.append(f"    sum: RSS {rss_sum:,.0f} MB, peak {hwm_sum:,.0f} MB over {len(lines)} processes; "
                 f"the largest holds {largest:,.0f} MB")
    return lines


# -- the run -----------------------------------------------------------------------------------------------------
def bench(server: Server, collections: dict[str, str], queries: dict[str, list[Query]], args: argparse.Namespace,
          results: dict[tuple[str, str, str], Result]) -> None:
    """Every query on the server's collection of each layer (`collections`: layer → collection id)."""
    for layer, coll in collections.items():
        for q in queries[layer]:
            res = run_query(f"{server.base}/collections/{coll}{q.path}", dict(q.params), q, args.requests,
                            1, args.timeout)
            results[(server.name, layer, q.key)] = res
            say(line_for(server.name[:5], coll, q, res, 1))
        if args.clients > 1:
            q = queries[layer][0]
            res = run_query(f"{server.base}/collections/{coll}{q.path}", dict(q.params), q, args.requests * 2,
                            args.clients, args.timeout)
            results[(server.name, layer, "concurrent")] = res
            say(line_for(server.name[:5], coll, q, res, args.clients))


def cell(res: Result | None) -> str:
    """p50 / p99 of a result, or what went wrong."""
    if res is None:
        return "-"
    if res.status != "ok" or not res.lat_ms:
        return "error " + res.status.split(" ")[0].rstrip(":")
    return f"{fmt_ms(res.p50)} / {fmt_ms(res.p99)}" + ("  CHECK" if res.problems or res.failed else "")


def ratio(a: Result | None, b: Result | None) -> str:
    """b's p50 / a's p50."""
    if a is None or b is None or not a.lat_ms or not b.lat_ms or a.p50 <= 0:
        return "-"
    return f"{b.p50 / a.p50:,.1f}x"


def table(layer: Layer, queries: list[Query], names: list[str], results: dict[tuple[str, str, str], Result],
          clients: int) -> None:
    """One collection's figures: each server's p50/p99 and numberMatched, tipg's p50 over the platform's."""
    tipg = next((n for n in names if n.startswith("tipg")), None)
    platforms = [n for n in names if n != tipg]
    keys = [(q.key, q.label, q.expected) for q in queries]
    if clients > 1:
        keys.append(("concurrent", f"{queries[0].label}, {clients} clients", queries[0].expected))
    rows = []
    for key, label, expected in keys:
        got = [results.get((n, layer.name, key)) for n in names]
        row = [label, "-" if expected is None else f"{expected:,}"]
        row += [cell(r) for r in got]
        row += [ratio(results.get((p, layer.name, key)), results.get((tipg, layer.name, key))) for p in platforms
                if tipg]
        row.append(" ".join(matched_text(r) for r in got))
        rows.append(row)
    head = ["request", "matches", *[f"{n} p50/p99 ms" for n in names],
            *[f"tipg/{p}" for p in platforms if tipg], "numberMatched " + " ".join(names)]
    say(f"\n== {layer.name}: {layer.size:,} {layer.geometry.lower()}s ==")
    print_table(rows, head)


def run_city(args: argparse.Namespace) -> int:
    """The city-scale comparison (`--scale city`)."""
    cache = Path(args.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"run-{os.getpid()}"
    work.mkdir()
    admin = args.pg
    servers: list[Server] = []
    db: Database | None = None
    results: dict[tuple[str, str, str], Result] = {}
    info: list[str] = []
    try:
        say(f"data (cache {cache}):")
        layers = {}
        for name, n in (("trees", args.points), ("buildings", args.polygons)):
            if n > 0:
                layers[name] = layer_data(name, n, cache)
        queries = {name: queries_for(layer) for name, (layer, _, _) in layers.items()}
        for name, (layer, _, _) in layers.items():
            q = {x.key: x for x in queries[name]}
            say(f"  {name}: bbox holds {q['bbox'].expected:,}; {layer.cql2}: {q['filter'].expected:,}")
        db = create_pg(admin, "udp_bench_city")
        for name, (layer, _, tsv) in layers.items():
            secs = load_postgis(db.url, layer, tsv)
            info.append(f"PostGIS {name}: COPY + primary key + GiST + ANALYZE of {layer.size:,} rows in {secs:.1f}s")
            say(info[-1])
        names = []
        for kind in ("pg", "gpkg"):
            if kind in args.skip:
                continue
            say("")
            sources = {name: f"{db.url}#public.{name}" if kind == "pg" else str(gpkg)
                       for name, (_, gpkg, _) in layers.items()}
            server = start_platform(kind, work, sources, args.workers, args.server_log_level, args.start_timeout)
            servers.append(server)
            bench(server, {name: f"{name}_{kind}" for name in layers}, queries, args, results)
            first = "udp check" if kind == "pg" else "first import (udp load)"
            info.append(f"{server.name}: {first} {server.check:.1f}s; ready after {server.startup:.1f}s")
            info.extend(memory(server))
            names.append(server.name)
            server.stop()
            servers.remove(server)
        if "tipg" not in args.skip:
            say("")
            server = start_tipg(work, cache, db.url, list(layers), args.workers, args.start_timeout)
            servers.append(server)
            bench(server, {name: f"public.{name}" for name in layers}, queries, args, results)
            info.append(f"{server.name}: ready after {server.startup:.1f}s")
            info.extend(memory(server))
            names.append(server.name)
            server.stop()
            servers.remove(server)
        say(f"\n== OGC API Features at city scale: {args.workers} workers each, {args.requests} sequential requests "
            "per query (p50 / p99 ms), Accept: application/geo+json ==")
        for name, (layer, _, _) in layers.items():
            table(layer, queries[name], names, results, args.clients)
        say("")
        for line in info:
            say(line)
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
        return 130
    except Exception as exc:  # report and clean up; the script asserts nothing
        say(f"\nERROR: {type(exc).__name__}: {exc}")
        return 1
    finally:
        for server in servers:
            server.stop()
        if db is not None:
            db.drop()
        if args.keep_files:
            say(f"configs and server logs kept in {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of `--scale city`."""
    city = ap.add_argument_group("--scale city")
    city.add_argument("--points", type=int, default=1_000_000, help="street-tree points")
    city.add_argument("--polygons", type=int, default=300_000, help="building footprints")
    city.add_argument("--workers", type=int, default=2, help="workers of each server")
    city.add_argument("--cache-dir", default="~/.cache/udp-bench-features",
                      help="the generated data and tipg's virtual environment")
    city.add_argument("--pg", default=os.environ.get("UDP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                      help="a PostgreSQL with PostGIS; the benchmark's database is made next to it and dropped")
    city.add_argument("--skip", action="append", default=[], choices=["pg", "gpkg", "tipg"],
                      help="a server not to run (repeatable)")
    city.add_argument("--start-timeout", type=float, default=900, help="seconds a server may take to start")
