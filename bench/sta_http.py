"""SensorThings over HTTP: an istSOS4-style benchmark of a real `udp serve` process.

    python bench/sta_http.py [--store pg|sqlite] [--duration 10]
                             [--things 100 --datastreams-per-thing 3 --observations 200000]
                             [--writes-only [--deep-things 47 --deep-observations 1071 --deep-clients 2]]

It creates a fresh database (PostgreSQL: a new database on --pg; SQLite: a new file), starts
`udp serve --workers 2` on a free port, loads 100 Things (each with a Location and 3 Datastreams)
and ~200k Observations through POST /v1.1/CreateObservations (1,000 rows per request, timed: the
"ingest via dataArray" figure), times single POST /v1.1/Observations with concurrent clients, then
runs `wrk -t2 -c16 --latency` twice on each read endpoint, times deep paging, and prints a table
with the targets. With --writes-only it skips the reads and times, after the CreateObservations load,
single POSTs and deep inserts: --deep-things Things (47, like a real air-quality export), each posted with
its Location, a Datastream and --deep-observations hourly Observations embedded. The server is stopped
and the database dropped at the end. It prints figures only; it asserts nothing.

With --live (issue 17: reads that hold while devices write; use --observations 100000) it runs instead,
on each of `Things?$top=100`, `Observations` newest 100, a Datastream's newest 200 (a chart) and Things
with Locations and Datastreams each with its newest Observation: wrk quiet, then wrk while --live-threads
client threads pace --live-rate single `POST /v1.1/Observations` per second in all; it prints req/s quiet,
req/s under writes, their ratio and the writes stored per second (201s) of those offered, with where the cores
went and, per worker, what its GETs under writes waited for (`/health` `reads`: ms a GET for the versions, the
worker's POSTs in flight, the writer, another's computation, its own inline, a thread); then, while the
writers go on, the same read as a dashboard polling every few seconds may send it, with `Cache-Control:
max-stale=N` (--live-max-stale; 0 skips it): answers up to N seconds behind the data are good enough for it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import orjson
from harness import Database, Udp, create_pg, say  # bench/ is the script's own directory
from mqtt_ingest import CpuMeter, fmt_cpu, postgres_pids

from sensorthings.http.read_waits import WAITS

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=30)  # every Datastream's Observations spread over 30 days
ROWS_PER_REQUEST = 1000
SPREAD_ATTEMPTS = 50  # connections a CreateObservations client makes at most to reach a worker short of clients

LIVE_READS = [
    ("things", "Things?$top=100", "/Things?$top=100"),
    ("observations", "Observations newest 100", "/Observations?$top=100&$orderby=phenomenonTime desc"),
    ("chart", "a Datastream's newest 200", "/Datastreams({ds})/Observations?$top=200&$orderby=phenomenonTime desc"),
    ("expand", "Things+Locations+Datastreams+newest Observation",
     "/Things?$expand=Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"),
]
LIVE_TARGETS = {"things": 2500.0, "observations": 2500.0, "chart": 2500.0, "expand": 700.0}

TARGETS = {
    "things": 2500.0,
    "observations": 2500.0,
    "filtered": 1500.0,
    "expand": 700.0,
    "ingest": 50000.0,
    "posts": 1000.0,  # single POST Observations/s with 8 clients
    "deep": 10000.0,  # Observations/s embedded in deep-inserted Things
}


# -- helpers ---------------------------------------------------------------------------------------

def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"





def create_sqlite() -> Database:
    folder = Path(tempfile.mkdtemp(prefix="udp_bench_"))
    path = folder / "bench.db"

    def drop() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        say(f"removed {folder}")

    return Database(f"sqlite:///{path}", drop)


class Server(Udp):
    """`udp serve` as a subprocess in its own process group (uvicorn forks its workers into it)."""

    def __init__(self, store: str, workers: int, log_dir: Path, log_level: str = "warning",
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        log = log_dir / f"udp-bench-{uuid.uuid4().hex[:8]}.log"
        super().__init__("serve", "--store", store, "--workers", str(workers), "--log-level", log_level, *extra,
                         log=log, env=env)
        say(f"server: {' '.join(self.cmd)} (pid {self.pid}, log {self.log_path})")

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the `udp serve` process)."""
        try:
            out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True,
                                 text=True, check=False).stdout
        except OSError:
            return []
        # skip multiprocessing's resource tracker and `udp seed` (the tile seeder), which are children too
        return [int(line.split()[0]) for line in out.splitlines()
                if line.strip() and "resource_tracker" not in line and "udp.cli seed" not in line]

    def connection_split(self) -> dict[int, int]:
        """Established connections on the server port per worker pid (from `ss -tnp`)."""
        counts = {pid: 0 for pid in self.worker_pids()}
        if not shutil.which("ss"):
            return counts
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{self.port} )"],
                             capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            for pid in re.findall(r"pid=(\d+)", line):
                counts[int(pid)] = counts.get(int(pid), 0) + 1
                break
        return counts

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM to the process group, SIGKILL after `timeout` s; the exit code."""
        code = super().stop(timeout)
        say(f"server stopped (exit {code})")
        return code


# -- loading ---------------------------------------------------------------------------------------
def post(client: httpx.Client, url: str, body: object) -> httpx.Response:
    r = client.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
    if r.status_code not in (200, 201):
        raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:500]}")
    return r


def load_things(client: httpx.Client, sta: str, things: int, per_thing: int) -> list[int]:
    """Things with a Location and Datastreams (deep insert); returns the Datastream ids."""
    sensor = post(client, f"{sta}/Sensors", {
        "name": "PM sensor", "description": "particulate matter", "encodingType": "application/pdf",
        "metadata": "https://example.org/pm.pdf"}).json()["@iot.id"]
    props = [post(client, f"{sta}/ObservedProperties", {
        "name": f"property {k}", "definition": f"https://example.org/def/{k}",
        "description": f"observed property {k}"}).json()["@iot.id"] for k in range(per_thing)]
    rnd = random.Random(1)
    for i in range(things):
        lon, lat = 144.9 + rnd.random() * 0.1, -37.85 + rnd.random() * 0.1
        post(client, f"{sta}/Things", {
            "name": f"Thing {i}", "description": f"station {i}", "properties": {"n": i, "district": i % 7},
            "Locations": [{"name": f"Location {i}", "description": "", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [lon, lat]}}],
            "Datastreams": [{
                "name": f"Datastream {i}.{k}", "description": f"property {k} at station {i}",
                "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                "unitOfMeasurement": {"name": "unit", "symbol": "u", "definition": "https://example.org/u"},
                "Sensor": {"@iot.id": sensor}, "ObservedProperty": {"@iot.id": props[k]},
            } for k in range(per_thing)],
        })
    ids: list[int] = []
    url: str | None = f"{sta}/Datastreams?$select=id&$orderby=id&$top=10000"
    while url:
        page = client.get(url).json()
        ids += [d["@iot.id"] for d in page["value"]]
        url = page.get("@iot.nextLink")
    return ids


def dataarray_bodies(ds_ids: list[int], total: int) -> list[bytes]:
    """CreateObservations bodies of ROWS_PER_REQUEST rows each, rows ordered by Datastream then time
    (a request holds one to three Datastream groups), bodies pre-encoded so the client stays cheap."""
    rnd = random.Random(2)
    per = [total // len(ds_ids) + (1 if k < total % len(ds_ids) else 0) for k in range(len(ds_ids))]
    rows: list[tuple[int, str, float]] = []
    for ds, n in zip(ds_ids, per, strict=True):
        step = SPAN / max(n, 1)
        rows += [(ds, iso(T0 + step * i), round(rnd.uniform(0, 100), 3)) for i in range(n)]
    bodies = []
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        groups: dict[int, list[list[object]]] = {}
        for ds, t, v in rows[start:start + ROWS_PER_REQUEST]:
            groups.setdefault(ds, []).append([t, v])
        bodies.append(orjson.dumps([{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                                     "dataArray": data} for ds, data in groups.items()]))
    return bodies


def ingest(sta: str, bodies: list[bytes], clients: int, spread: int = 0) -> tuple[int, float, int]:  # noqa: C901
    """POST every body to CreateObservations with `clients` concurrent clients: (rows, seconds, errors).
    `spread`: the server's workers, to spread the clients over as evenly as they divide."""
    local = threading.local()
    rows_ok = [0]
    errors = [0]
    failed: list[str] = []
    lock = threading.Lock()
    workers: dict[int, int] = {}

    url = urlsplit(f"{sta}/CreateObservations")

    def send(body: bytes) -> None:
        # http.client, not httpx: httpx and its JSON decoding of the 1,000 links took a third of a core from the
        # server on the same 2 cores (37,000 rows/s with httpx, 50,000 with this, the same server)
        conn = getattr(local, "conn", None)
        if conn is None:
            # which worker this client's connection went to: the kernel hashes connections to them, and half the
            # time both clients of two workers land on one, whose interpreter then bounds the figure while the
            # other idles. With `spread`, a connection to a worker that has its share already is made again.
            share = -(-clients // spread) if spread else clients
            for attempt in range(SPREAD_ATTEMPTS):
                conn = local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
                conn.request("GET", "/health")
                served = orjson.loads(conn.getresponse().read()).get("worker")
                with lock:
                    if workers.get(served, 0) < share or attempt == SPREAD_ATTEMPTS - 1:
                        workers[served] = workers.get(served, 0) + 1
                        break
                conn.close()
        try:
            conn.request("POST", url.path, body, {"Content-Type": "application/json"})
            res = conn.getresponse()
            text = res.read()
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                failed.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            local.conn = None
            return
        if res.status != 201:
            with lock:
                failed.append(f"{res.status} {text[:300]!r}")
            return
        links = orjson.loads(text)
        with lock:
            rows_ok[0] += sum(1 for x in links if x != "error")
            errors[0] += sum(1 for x in links if x == "error")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    secs = time.perf_counter() - started
    if failed:
        say(f"  WARNING: {len(failed)} of {len(bodies)} CreateObservations requests failed, e.g. {failed[0]}")
    say(f"  clients per worker: {'/'.join(str(n) for _, n in sorted(workers.items()))} (workers {sorted(workers)})")
    return rows_ok[0], secs, errors[0]


def deep_things(things: int, per_thing: int) -> list[bytes]:
    """Things as another SensorThings server exports them for import: each with its Location and one Datastream
    carrying `per_thing` hourly Observations (pre-encoded bodies)."""
    rnd = random.Random(3)
    bodies = []
    for i in range(things):
        lon, lat = 126.9 + rnd.random() * 0.2, 37.45 + rnd.random() * 0.2
        obs = [{"phenomenonTime": iso(T0 + timedelta(hours=h)), "result": round(rnd.uniform(0, 150), 1)}
               for h in range(per_thing)]
        bodies.append(orjson.dumps({
            "name": f"air station {i}", "description": f"air quality station {i}", "properties": {"n": i},
            "Locations": [{"name": f"station {i}", "description": "", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [lon, lat]}}],
            "Datastreams": [{
                "name": f"PM10 at station {i}", "description": "hourly PM10",
                "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                "unitOfMeasurement": {"name": "microgram per cubic metre", "symbol": "ug/m3",
                                      "definition": "http://unitsofmeasure.org/ucum.html#ug/m3"},
                "Sensor": {"name": f"PM sensor {i}", "description": "beta attenuation",
                           "encodingType": "application/pdf", "metadata": "https://example.org/pm.pdf"},
                "ObservedProperty": {"name": "PM10", "definition": "https://example.org/def/pm10",
                                     "description": "particulate matter under 10 um"},
                "Observations": obs}]}))
    return bodies


def deep_inserts(sta: str, bodies: list[bytes], clients: int) -> tuple[int, float, int]:
    """POST every Thing body with `clients` concurrent clients: (requests created, seconds, failures)."""
    local = threading.local()
    done = [0, 0]
    lock = threading.Lock()

    def send(body: bytes) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=300)
        r = client.post(f"{sta}/Things", content=body, headers={"Content-Type": "application/json"})
        with lock:
            done[0 if r.status_code == 201 else 1] += 1
        if r.status_code != 201:
            say(f"  deep insert failed: {r.status_code} {r.text[:300]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return done[0], time.perf_counter() - started, done[1]


POST_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local ids = {%(ids)s}
init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) %% 100000)
end
request = function()
  local when = os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ", %(t0)d + math.random(0, %(span)d))
  local body = string.format('{"phenomenonTime":"%%s","result":%%.3f,"Datastream":{"@iot.id":%%d}}',
                             when, math.random() * 100, ids[math.random(#ids)])
  return wrk.format(nil, nil, nil, body)
end
"""


def stored_observations(sta: str) -> int:
    """How many Observations the store holds, counted exactly."""
    r = httpx.get(f"{sta}/Observations", params={"$count": "true", "$top": "0"},
                  headers={"Prefer": "count=exact"}, timeout=120)
    r.raise_for_status()
    return int(r.json()["@iot.count"])


def single_posts(server: Server, sta: str, ds_ids: list[int], seconds: float,
                 clients: int) -> tuple[int, int, WrkResult]:
    """Single POST /Observations from `clients` wrk connections for `seconds` (wrk, so that the figure is the
    server's: Python clients in threads of one process ran out of breath near 900/s, where wrk got 1,080):
    (Observations stored meanwhile, wrk's whole seconds, wrk's figures)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(POST_SCRIPT % {"ids": ", ".join(map(str, ds_ids)), "t0": int(T0.timestamp()),
                               "span": int(SPAN.total_seconds())})
    duration = max(1, round(seconds))
    try:
        before = stored_observations(sta)
        res = run_wrk(server, f"{sta}/Observations", duration, min(2, clients), clients, script=f.name)
        return stored_observations(sta) - before, duration, res
    finally:
        Path(f.name).unlink()


class PacedWriters:
    """`threads` clients that together offer `rate` single POST /Observations per second until stopped."""

    def __init__(self, sta: str, ds_ids: list[int], rate: float, threads: int) -> None:
        self.sta, self.ds_ids, self.rate, self.threads = sta, ds_ids, rate, threads
        self.stored = self.failed = self.offered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool: list[threading.Thread] = []
        self.seconds = 0.0

    def _run(self, k: int) -> None:
        rnd = random.Random(1000 + k)
        interval = self.threads / self.rate
        due = time.perf_counter() + interval * k / self.threads
        # http.client, not httpx: a POST cost httpx ~0.8 ms of CPU, a quarter of a core at 300/s taken from the
        # server on the same 2 cores, and the writers' own turns at the CPU lengthened every POST they timed
        url = urlsplit(f"{self.sta}/Observations")
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            while not self._stop.is_set():
                wait = due - time.perf_counter()
                if wait > 0 and self._stop.wait(wait):
                    break
                due += interval
                body = orjson.dumps({"phenomenonTime": iso(T0 + SPAN + timedelta(seconds=rnd.random() * 3600)),
                                     "result": round(rnd.uniform(0, 100), 3),
                                     "Datastream": {"@iot.id": rnd.choice(self.ds_ids)}})
                try:
                    conn.request("POST", url.path, body, {"Content-Type": "application/json"})
                    res = conn.getresponse()
                    res.read()
                    ok = res.status == 201
                except (OSError, http.client.HTTPException):
                    conn.close()  # opened again by the next request
                    ok = False
                with self._lock:
                    self.offered += 1
                    self.stored += ok
                    self.failed += not ok
        finally:
            conn.close()

    def __enter__(self) -> PacedWriters:
        self._started = time.perf_counter()
        self._pool = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.threads)]
        for t in self._pool:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._pool:
            t.join()
        self.seconds = time.perf_counter() - self._started


def worker_reads(base: str, pids: list[int]) -> dict[int, dict[str, float]]:
    """Each worker's `/health` `reads` (sensorthings/http/read_waits.py), asked on new connections until every
    worker has answered (the kernel hands each connection to either)."""
    found: dict[int, dict[str, float]] = {}
    for _ in range(200):
        body = httpx.get(f"{base}/health", timeout=30).json()
        found.setdefault(body["worker"], body["reads"])
        if set(pids) <= found.keys():
            break
    return found


def fmt_reads(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]) -> str:
    """Per worker, what its GETs between two `worker_reads` waited for: ms a GET on average for each kind, and how
    many were computed inline, in threads or joined another's computation."""
    parts = []
    for pid in sorted(after):
        a, b = after[pid], before.get(pid, {})
        gets = a["gets"] - b.get("gets", 0)
        if not gets:
            parts.append(f"{pid}: no GETs")
            continue
        ms = " ".join(f"{k} {(a[k + '_s'] - b.get(k + '_s', 0)) * 1000 / gets:.2f}" for k in WAITS)
        counts = "/".join(f"{int(a[k] - b.get(k, 0)):,}" for k in ("inline", "thread", "joined"))
        parts.append(f"{pid}: {gets:,} GETs, ms a GET: {ms}; computed inline/thread/joined {counts}")
    return "; ".join(parts)


def live_reads(server: Server, sta: str, ds_ids: list[int], args: argparse.Namespace, report: Report) -> None:
    """Each read quiet and while paced writers POST Observations: req/s, ratio, writes stored per second."""
    ds = ds_ids[len(ds_ids) // 2]
    client = httpx.Client(timeout=120)
    for key, name, path in LIVE_READS:
        if args.live_reads and key not in args.live_reads.split(","):
            continue
        url = encode(sta + path.format(ds=ds))
        r = client.get(url)
        if r.status_code != 200:
            report.add(name, f"FAILED ({r.status_code} {r.text[:200]})", "", "NO")
            continue
        quiet = run_wrk(server, url, args.duration, args.wrk_threads, args.wrk_connections)
        with PacedWriters(sta, ds_ids, args.live_rate, args.live_threads) as writers:
            time.sleep(1.0)  # the writers reach their pace
            # where the 2 cores go under writes: what is left for the reads is what the writes do not take
            meter = CpuMeter({"workers": server.worker_pids, "writers (this bench)": lambda: [os.getpid()],
                              **({"postgres": postgres_pids} if args.store == "pg" else {})})
            waited = worker_reads(server.url, server.worker_pids())
            meter.start()
            busy = run_wrk(server, url, args.duration, args.wrk_threads, args.wrk_connections)
            cpu = meter.stop()
            waits = fmt_reads(waited, worker_reads(server.url, server.worker_pids()))
        stored = writers.stored / writers.seconds
        stale, stale_stored = None, 0.0
        if args.live_max_stale:
            # writers of their own: those above, behind their pace, would catch up here and count it as this phase's
            with PacedWriters(sta, ds_ids, args.live_rate, args.live_threads) as stale_writers:
                time.sleep(1.0)
                stale = run_wrk(server, url, args.duration, args.wrk_threads, args.wrk_connections,
                                headers=(f"Cache-Control: max-stale={args.live_max_stale}",))
            stale_stored = stale_writers.stored / stale_writers.seconds
        ratio = busy.rps / quiet.rps if quiet.rps else float("nan")
        say(f"{name}: quiet {quiet.rps:,.0f} req/s (p99 {quiet.p99_ms:.1f} ms, connections per worker {quiet.split}), "
            f"under writes {busy.rps:,.0f} req/s (p99 {busy.p99_ms:.1f} ms, {busy.split}) = {ratio:.2f}x; "
            f"writes stored {stored:,.0f}/s of {args.live_rate:,.0f}/s offered ({writers.failed} failed)"
            + (f", NON-2XX {quiet.non2xx + busy.non2xx}" if quiet.non2xx + busy.non2xx else ""))
        say(f"  CPU under writes, wrk's own not counted: {fmt_cpu(cpu)}")
        say(f"  where the GETs' time went under writes (per worker): {waits}")
        target = LIVE_TARGETS[key]
        report.add(f"{name}: quiet", f"{quiet.rps:,.0f} req/s", f">= {target:,.0f} req/s", verdict(quiet.rps, target))
        report.add(f"{name}: under writes", f"{busy.rps:,.0f} req/s = {ratio:.2f}x quiet", ">= 0.50x",
                   verdict(ratio, 0.5))
        report.add(f"{name}: writes stored", f"{stored:,.0f}/s of {args.live_rate:,.0f}/s",
                   f">= {0.95 * args.live_rate:,.0f}/s", verdict(stored, 0.95 * args.live_rate))
        if stale is not None:
            ratio = stale.rps / quiet.rps if quiet.rps else float("nan")
            say(f"{name}: under writes with max-stale={args.live_max_stale} {stale.rps:,.0f} req/s (p99 "
                f"{stale.p99_ms:.1f} ms) = {ratio:.2f}x quiet; writes stored {stale_stored:,.0f}/s"
                + (f", NON-2XX {stale.non2xx}" if stale.non2xx else ""))
            report.add(f"{name}: under writes, max-stale={args.live_max_stale}",
                       f"{stale.rps:,.0f} req/s = {ratio:.2f}x quiet, writes {stale_stored:,.0f}/s", "", "")
    client.close()


def time_single_posts(report: Report, server: Server, sta: str, ds_ids: list[int], args: argparse.Namespace) -> None:
    """Single POSTs timed, said and added to the report: the figure is the Observations stored per second."""
    stored, secs, res = single_posts(server, sta, ds_ids, args.post_seconds, args.post_clients)
    rate = stored / secs
    say(f"single POST /Observations, {args.post_clients} connections (wrk), {secs}s: {res.rps:,.0f} req/s, "
        f"{stored} stored = {rate:,.0f}/s, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms"
        + (f", {res.non2xx} not 2xx" if res.non2xx else "") + (f", {res.errors}" if res.errors else ""))
    report.add(f"single POST Observations ({args.post_clients} clients)",
               f"{rate:,.0f} obs/s  p50 {res.p50_ms:.1f} ms  p99 {res.p99_ms:.1f} ms",
               f">= {TARGETS['posts']:,.0f} obs/s", verdict(rate, TARGETS["posts"]))


# -- wrk -------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int = 0
    errors: str = ""
    split: str = ""


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60_000}[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    err = re.search(r"Socket errors:.*", out)
    return WrkResult(float(rps.group(1)) if rps else float("nan"), _ms(p50.group(1)) if p50 else float("nan"),
                     _ms(p99.group(1)) if p99 else float("nan"), int(non.group(1)) if non else 0,
                     err.group(0) if err else "")


def run_wrk(server: Server, url: str, duration: int, threads: int, conns: int, script: str | None = None,
            headers: tuple[str, ...] = ()) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "30s",
           *(["-s", script] if script else []), *(a for h in headers for a in ("-H", h)), url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(min(1.0, duration / 2))
    split = server.connection_split()
    out, _ = proc.communicate()
    res = parse_wrk(out)
    res.split = "/".join(str(n) for _, n in sorted(split.items()))
    if res.rps != res.rps:  # nan: wrk failed
        say(out)
    return res


def encode(url: str) -> str:
    return quote(url, safe=":/?&=$(),;'*")


# -- main ------------------------------------------------------------------------------------------
@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, figure: str, target: str, verdict: str) -> None:
        self.rows.append((name, figure, target, verdict))

    def print(self) -> None:
        widths = [max(len(r[i]) for r in [("measure", "figure", "target", "")] + self.rows) for i in range(4)]
        head = ("measure", "figure", "target", "meets")
        line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        say(line)
        say("-" * len(line))
        for r in self.rows:
            say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def verdict(value: float, target: float | None) -> str:
    if target is None or value != value:
        return ""
    return "yes" if value >= target else "NO"


def hold(keep: bool, server: Server, db: Database) -> None:
    """With --keep, wait for Enter (or end of input) before cleaning up, e.g. to profile the server."""
    if not keep:
        return
    say(f"\nserver {server.url} (workers {server.worker_pids()}), store {db.url}; press Enter to clean up")
    try:
        input()
    except EOFError:
        pass


def finish(title: str, args: argparse.Namespace, datastreams: int, observations: int, report: Report,
           server: Server, db: Database, extra: str = "") -> None:
    """The closing table under a line naming the conditions; with --keep, wait before cleaning up."""
    say("")
    say(f"== SensorThings {title}: store {args.store}, {args.workers} workers, {args.things} Things, "
        f"{datastreams} Datastreams, {observations:,} Observations; wrk -t{args.wrk_threads} "
        f"-c{args.wrk_connections} -d{args.duration}s{extra} ==")
    report.print()
    hold(args.keep, server, db)


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", choices=("pg", "sqlite"), default="pg")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL of the PostgreSQL server (a new database is created next to it)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--things", type=int, default=100)
    ap.add_argument("--datastreams-per-thing", type=int, default=3)
    ap.add_argument("--observations", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ingest-clients", type=int, default=2,
                    help="concurrent CreateObservations clients (default 2: one per worker)")
    ap.add_argument("--any-worker", action="store_true",
                    help="leave the CreateObservations clients where the kernel puts them (default: spread evenly)")
    ap.add_argument("--post-seconds", type=float, default=5.0)
    ap.add_argument("--post-clients", type=int, default=8)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-connections", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2, help="wrk runs per endpoint")
    ap.add_argument("--paging-requests", type=int, default=50)
    ap.add_argument("--server-log-level", default="info",
                    help="`udp serve --log-level` (info shows uvicorn restarting workers that miss a healthcheck)")
    ap.add_argument("--no-analyze", action="store_true", help="skip ANALYZE after the load (PostgreSQL)")
    ap.add_argument("--ingest-only", action="store_true", help="load and time the ingest, skip the reads")
    ap.add_argument("--live", action="store_true", help="reads quiet and while single POSTs arrive (issue 17)")
    ap.add_argument("--live-rate", type=float, default=300.0, help="single POSTs per second offered with --live")
    ap.add_argument("--live-reads", default="", help="with --live, only these reads (comma-separated keys of "
                    f"{', '.join(k for k, _, _ in LIVE_READS)}; default all)")
    ap.add_argument("--live-threads", type=int, default=4, help="client threads pacing the --live writes")
    ap.add_argument("--live-max-stale", type=int, default=1,
                    help="with --live, each read under writes again with `Cache-Control: max-stale=N` (0: not)")
    ap.add_argument("--writes-only", action="store_true",
                    help="load and time the writes only: CreateObservations, single POSTs, deep inserts")
    ap.add_argument("--deep-things", type=int, default=47, help="Things posted with Observations embedded")
    ap.add_argument("--deep-observations", type=int, default=1071, help="Observations embedded in each Thing")
    ap.add_argument("--deep-clients", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="leave the server running and the database in place "
                                                          "until Enter is pressed (for profiling)")
    args = ap.parse_args(argv)
    if not shutil.which("wrk") and not args.ingest_only:
        say("wrk is not installed")
        return 2

    db = create_pg(args.pg, "udp_bench") if args.store == "pg" else create_sqlite()
    say(f"store: {db.url}")
    server: Server | None = None
    report = Report()
    try:
        # Create PostGIS and the schema once, before the workers start: `udp serve --workers 2` on an
        # empty database races (both workers run CREATE EXTENSION / CREATE TABLE; one can die).
        from sensorthings.store.base import Store

        Store.open(db.url).close()
        server = Server(db.url, args.workers, Path(tempfile.gettempdir()), args.server_log_level)
        server.wait()
        sta = f"{server.url}/v1.1"
        time.sleep(1.0)
        pids = server.worker_pids()
        say(f"workers: {pids}")
        if len(pids) != args.workers or "Traceback" in server.log_path.read_text():
            say(f"WARNING: {len(pids)} of {args.workers} workers running; see {server.log_path}")

        # -- load ------------------------------------------------------------------------------
        client = httpx.Client(timeout=120)
        t = time.perf_counter()
        ds_ids = load_things(client, sta, args.things, args.datastreams_per_thing)
        say(f"loaded {args.things} Things, {len(ds_ids)} Datastreams in {time.perf_counter() - t:.1f}s")
        bodies = dataarray_bodies(ds_ids, args.observations)
        say(f"CreateObservations: {len(bodies)} requests of <= {ROWS_PER_REQUEST} rows, "
            f"{args.ingest_clients} concurrent clients ...")
        n, secs, errs = ingest(sta, bodies, args.ingest_clients, 0 if args.any_worker else args.workers)
        ingest_rate = n / secs
        say(f"  {n} Observations in {secs:.2f}s = {ingest_rate:,.0f} Observations/s "
            f"({len(bodies) / secs:.1f} requests/s, {errs} rows refused)")
        report.add(f"ingest via dataArray ({args.store}, {args.ingest_clients} clients)",
                   f"{ingest_rate:,.0f} obs/s", f">= {TARGETS['ingest']:,.0f} obs/s",
                   verdict(ingest_rate, TARGETS["ingest"]))

        if args.writes_only:
            time_single_posts(report, server, sta, ds_ids, args)
            bodies = deep_things(args.deep_things, args.deep_observations)
            total = args.deep_things * args.deep_observations
            say(f"deep inserts: {args.deep_things} Things, each with {args.deep_observations} Observations "
                f"embedded, {args.deep_clients} clients ...")
            made, secs, failed = deep_inserts(sta, bodies, args.deep_clients)
            rate = made * args.deep_observations / secs
            say(f"  {made} Things ({made * args.deep_observations:,} Observations) in {secs:.2f}s = {rate:,.0f} "
                f"Observations/s" + (f", {failed} failed" if failed else ""))
            report.add(f"deep insert, {total:,} Observations in {args.deep_things} Things ({args.deep_clients} "
                       "clients)", f"{rate:,.0f} obs/s", f">= {TARGETS['deep']:,.0f} obs/s",
                       verdict(rate, TARGETS["deep"]))
            say("")
            report.print()
            hold(args.keep, server, db)
            return 0

        if args.store == "pg" and not args.no_analyze:
            import psycopg

            t = time.perf_counter()
            with psycopg.connect(db.url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            say(f"VACUUM ANALYZE in {time.perf_counter() - t:.1f}s (what autovacuum would do after the load)")

        if args.ingest_only:
            if server.log_path.read_text().count(" died"):
                say(f"WARNING: uvicorn restarted worker(s) during the ingest; see {server.log_path}")
            say("")
            report.print()
            hold(args.keep, server, db)
            return 0

        if args.live:
            live_reads(server, sta, ds_ids, args, report)
            finish("reads under writes", args, len(ds_ids), n, report, server, db,
                   f"; {args.live_threads} writer threads")
            return 0

        # -- reads -----------------------------------------------------------------------------
        ds = ds_ids[0]
        mid = iso(T0 + SPAN / 2)
        endpoints = [
            ("things", "1. GET Things (100 per page)", "/Things"),
            ("observations", "2. GET Observations $top=100 newest first",
             "/Observations?$top=100&$orderby=phenomenonTime desc"),
            ("filtered", f"3. GET Datastreams({ds})/Observations filtered",
             f"/Datastreams({ds})/Observations?$filter=result gt 50 and phenomenonTime ge {mid}"
             "&$orderby=phenomenonTime desc"),
            ("expand", "4. GET Things $expand Locations,Datastreams/newest Observation",
             "/Things?$expand=Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"),
        ]
        say("")
        say("checking every endpoint once:")
        healthy = {}
        for key, name, path in endpoints:
            url = encode(sta + path)
            r = client.get(url)
            ok = r.status_code == 200
            healthy[key] = ok
            extra = ""
            if ok:
                doc = r.json()
                extra = f"{len(doc.get('value', []))} entities, {len(r.content):,} bytes"
                if key == "expand" and doc.get("value"):
                    first = doc["value"][0]
                    got = sum(len(d.get("Observations", [])) for d in first.get("Datastreams", []))
                    extra += f", first Thing: {len(first.get('Locations', []))} Location(s), " \
                             f"{len(first.get('Datastreams', []))} Datastreams, {got} newest Observations"
            else:
                extra = r.text[:300]
            say(f"  {r.status_code} {name}: {extra}")
            say(f"      {url}")

        client.close()  # its keep-alive connections would count in the per-worker split
        client = httpx.Client(timeout=120)
        results: dict[str, list[WrkResult]] = {}
        for key, name, path in endpoints:
            if not healthy[key]:
                report.add(name, "FAILED (not 200)", f">= {TARGETS[key]:,.0f} req/s", "NO")
                continue
            url = encode(sta + path)
            results[key] = []
            for run in range(args.runs):
                res = run_wrk(server, url, args.duration, args.wrk_threads, args.wrk_connections)
                results[key].append(res)
                say(f"wrk {name} run {run + 1}: {res.rps:,.1f} req/s, p50 {res.p50_ms:.2f} ms, "
                    f"p99 {res.p99_ms:.2f} ms, connections per worker {res.split or '?'}"
                    + (f", NON-2XX {res.non2xx}" if res.non2xx else "") + (f", {res.errors}" if res.errors else ""))
            for run, res in enumerate(results[key]):
                fig = f"{res.rps:,.0f} req/s  p50 {res.p50_ms:.1f} ms  p99 {res.p99_ms:.1f} ms  split {res.split}"
                if res.non2xx:
                    fig += f"  non-2xx {res.non2xx}"
                report.add(f"{name} [run {run + 1}]", fig, f">= {TARGETS[key]:,.0f} req/s",
                           "NO" if res.non2xx else verdict(res.rps, TARGETS[key]))

        # -- deep paging -----------------------------------------------------------------------
        say("")
        skip_far = min(100_000, max(0, args.observations // 2))
        pages = {}
        for skip in (0, skip_far):
            url = encode(f"{sta}/Observations?$top=100&$skip={skip}")
            for _ in range(5):  # warm both workers' statement caches
                client.get(url)
            lat = []
            status = 200
            for _ in range(args.paging_requests):
                t = time.perf_counter()
                r = client.get(url)
                lat.append((time.perf_counter() - t) * 1000)
                status = r.status_code if r.status_code != 200 else status
            pages[skip] = statistics.median(lat)
            say(f"deep paging $skip={skip}: p50 {pages[skip]:.2f} ms over {len(lat)} sequential requests"
                + ("" if status == 200 else f" (status {status})"))
        ratio = pages[skip_far] / pages[0] if pages[0] else float("nan")
        say(f"deep paging ratio $skip={skip_far} / $skip=0: {ratio:.1f}x")
        report.add(f"Observations $top=100 $skip=0 vs $skip={skip_far} (p50)",
                   f"{pages[0]:.1f} ms vs {pages[skip_far]:.1f} ms = {ratio:.1f}x", "", "")

        # page N reached the way clients page: by following the server's nextLinks ($skiptoken)
        for order in ("", "&$orderby=phenomenonTime desc"):
            first = encode(f"{sta}/Observations?$top=100{order}")
            far_page = min(1000, max(1, args.observations // 100 - 1))
            link = first
            for _ in range(far_page - 1):
                link = client.get(link).json().get("@iot.nextLink") or link
            timed = {}
            for label, url in (("page 1", first), (f"page {far_page}", link)):
                for _ in range(5):
                    client.get(url)
                lat = []
                for _ in range(args.paging_requests):
                    t = time.perf_counter()
                    client.get(url)
                    lat.append((time.perf_counter() - t) * 1000)
                timed[label] = statistics.median(lat)
            p1, pn = timed["page 1"], timed[f"page {far_page}"]
            ratio = pn / p1 if p1 else float("nan")
            name = f"Observations{' newest first' if order else ''} page {far_page} by nextLink vs page 1 (p50)"
            say(f"{name}: {p1:.2f} ms vs {pn:.2f} ms = {ratio:.2f}x")
            report.add(name, f"{p1:.1f} ms vs {pn:.1f} ms = {ratio:.2f}x", "<= 2x", verdict(2.0, ratio))

        # -- single POSTs (last, so the reads see exactly the loaded dataset) ---------------------
        say("")
        time_single_posts(report, server, sta, ds_ids, args)

        restarts = server.log_path.read_text().count(" died")
        if restarts:
            say(f"WARNING: uvicorn restarted {restarts} worker(s) during the run (missed healthchecks); "
                f"see {server.log_path}")
        finish("HTTP benchmark", args, len(ds_ids), n, report, server, db)
        return 0
    finally:
        if server is not None:
            server.stop()
        db.drop()


if __name__ == "__main__":
    sys.exit(main())
