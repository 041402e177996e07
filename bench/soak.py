"""Soak: device messages at a steady rate through Mosquitto and the bridge, with readers, for a long time.

    python bench/soak.py [--duration 600] [--rate 1000] [--readers 4] [--store pg|sqlite]
                         [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--sensors 100] [--interval 30]
                         [--workers 1] [--timeout 10] [--keep-logs]

It starts a private Mosquitto on a free port, a fresh store (PostgreSQL: a new database next to --pg, dropped
at the end; SQLite: a file in a temp dir), and `udp serve --mqtt … --config …` with one bridge rule
(`soak/{sensor}/count` → Datastream "soak {sensor}", result $.count, phenomenonTime $.time, parameters
{seq: $.seq}); it creates --sensors Things with a Location and a Datastream each over HTTP. Then, for
--duration seconds:

- one publisher process sends --rate QoS 1 messages/s round-robin over the sensors (a unique seq each,
  at most --window unacknowledged);
- --readers threads read back to back, in turn: the latest Observations
  (`/v1.1/Observations?$orderby=phenomenonTime desc&$top=20`), one Datastream's Observations of the last
  minute (`$filter=phenomenonTime ge …`) and `/ogcapi/collections/latest_values/items`.

Every --interval seconds it prints: elapsed, messages published and acknowledged by Mosquitto, Observations
stored and the backlog (acknowledged, not stored yet), reader requests/s with p50/p99 latency, errors
(HTTP >= 500, other HTTP errors, timeouts, connection errors, paho refusals, dead letters), the rows in
the bridge's table of message fingerprints (bridge_seen_messages: it must stay flat), the RSS of the serve
process tree (serve + workers + bridge) and of Mosquitto, the response cache's size and the load average.
At the end it waits for the backlog to drain and prints a summary: RSS growth first → last,
totals, latency per query, CPU per component, and messages lost or duplicated (by seq). It asserts
nothing. It cleans up (server, Mosquitto, database, temp dir) on exit, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Database, Mosquitto, Udp, create_pg, process_tree, say, tail  # bench/: the script's directory
from mqtt_ingest import CpuMeter, broker_for_bench, pct, postgres_pids, start_server

from mqtt_bridge.deadletters import KEEP_SEEN

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
RULES = """title: Soak
bridge:
  - topic: soak/{sensor}/count
    datastream: "soak {sensor}"
    result: $.count
    phenomenonTime: $.time
    parameters: {seq: $.seq}
"""
QUERIES = ("latest observations", "datastream last minute", "ogc latest_values")


def iso(t: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


# -- processes and their memory --------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    """Resident set size of one process in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def label(pid: int, root: int) -> str:
    """What a process of the serve tree is: serve itself, a spawned child (bridge, workers) or the tracker."""
    if pid == root:
        return "serve"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "resource_tracker" in cmd:
        return "tracker"
    return "child"


def tree_rss(root: int) -> dict[str, int]:
    """RSS in kB of each process of the serve tree, keyed `label:pid`."""
    return {f"{label(pid, root)}:{pid}": rss_kb(pid) for pid in process_tree(root)}


def mb(kb: float) -> str:
    """kB as MB with one decimal."""
    return f"{kb / 1024:.1f}"


def split(rss: dict[str, int]) -> str:
    """The serve tree's RSS in MB as `total=serve+child+…` (the tracker left out of the parts)."""
    parts = [mb(v).split(".")[0] for k, v in rss.items() if not k.startswith("tracker")]
    return f"{mb(sum(rss.values())).split('.')[0]}={'+'.join(parts)}"


# -- the platform ----------------------------------------------------------------------------------
def create_sensors(sta: str, sensors: list[str]) -> list[int]:
    """One Thing per sensor with a Location and a Datastream "soak <sensor>"; the Datastream ids."""
    import httpx

    with httpx.Client(timeout=60) as client:
        def post(path: str, body: object) -> dict:
            r = client.post(f"{sta}/{path}", json=body)
            if r.status_code != 201:
                raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
            return r.json()

        sensor_id = post("Sensors", {"name": "soak counter", "description": "soak device",
                                     "encodingType": "text/html", "metadata": "none"})["@iot.id"]
        prop_id = post("ObservedProperties", {"name": "count", "definition": "https://example.org/count",
                                              "description": "a count"})["@iot.id"]
        for k, name in enumerate(sensors):
            lon, lat = 9.9 + (k % 10) * 0.01, 53.5 + (k // 10) * 0.01
            post("Things", {
                "name": f"soak {name}", "description": "soak device",
                "Locations": [{"name": f"soak {name}", "description": "", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [lon, lat]}}],
                "Datastreams": [{"name": f"soak {name}", "description": f"count of {name}",
                                 "observationType": OM + "OM_Measurement",
                                 "unitOfMeasurement": {"name": "count", "symbol": "1",
                                                       "definition": "https://example.org/count"},
                                 "Sensor": {"@iot.id": sensor_id}, "ObservedProperty": {"@iot.id": prop_id}}],
            })
        r = client.get(f"{sta}/Datastreams", params={"$filter": "startswith(name, 'soak ')", "$select": "id",
                                                     "$top": "10000"})
        return [d["@iot.id"] for d in r.json()["value"]]


class StoreCounter:
    """Counts in the store on a connection of its own (PostgreSQL or SQLite)."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgres")
        if self.pg:
            import psycopg

            self.conn: Any = psycopg.connect(url, autocommit=True)
            self.seq = "(parameters->>'seq')::bigint"
        else:
            import sqlite3

            path = url[len("sqlite:///"):]
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            self.seq = "CAST(json_extract(parameters, '$.seq') AS INTEGER)"

    def scalar(self, sql: str) -> int:
        """The first column of the first row."""
        return int(self.conn.execute(sql).fetchone()[0])

    def observations(self) -> int:
        """Rows in the Observations table."""
        return self.scalar("SELECT count(*) FROM observations")

    def optional_count(self, table: str) -> int:
        """Rows in a table the bridge makes when it starts (0 before it exists)."""
        try:
            return self.scalar(f"SELECT count(*) FROM {table}")
        except Exception:  # noqa: BLE001
            if self.pg:
                self.conn.rollback()
            return 0

    def dead_letters(self) -> int:
        """Rows in the dead-letter table."""
        return self.optional_count("dead_letters")

    def fingerprints(self) -> int:
        """Rows in the bridge's table of committed messages' fingerprints."""
        return self.optional_count("bridge_seen_messages")

    def seqs(self, below: int) -> tuple[int, int]:
        """(rows, distinct seq) of the Observations with seq in [0, below)."""
        row = self.conn.execute(f"SELECT count(*), count(DISTINCT {self.seq}) FROM observations "
                                f"WHERE {self.seq} >= 0 AND {self.seq} < {int(below)}").fetchone()
        return int(row[0]), int(row[1])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


# -- the publisher (a process of its own) ----------------------------------------------------------
def publisher_main(port: int, topics: list[str], rate: float, window: int, sent: Any, acked: Any, refused: Any,
                   stop: Any, ready: Any, out: Any) -> None:
    """Publish QoS 1 messages at `rate`/s round-robin over `topics` until `stop`, then wait for the last
    acknowledgements; put the seqs never acknowledged on `out`. paho's network loop runs in this thread
    (no loop_start), so there is no race between publish() and its PUBACK."""
    import select

    import orjson
    import paho.mqtt.client as mqtt

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process through `stop`
    pending: dict[int, int] = {}  # mid -> seq, not acknowledged yet

    def on_publish(_c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        if pending.pop(mid, None) is not None:
            acked.value += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-pub-{os.getpid()}", clean_session=True)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop(1.0)
    ready.set()
    start = time.time()
    misc = start + 1
    n = len(topics)
    i = 0
    while not stop.is_set():
        now = time.time()
        if now >= misc:
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                try:
                    client.reconnect()
                except OSError:
                    pass  # the broker is not back yet: next second
            misc = now + 1
        if len(pending) >= window:  # the window is full: wait for PUBACKs
            client.loop(0.01)
            continue
        due = start + i / rate
        if due > now:
            sock = client.socket()
            if sock is not None:
                select.select([sock], [], [], min(due - now, 0.05))
            client.loop_read()
            continue
        payload = orjson.dumps({"count": i % 1000, "time": iso(time.time()), "seq": i})
        info = client.publish(topics[i % n], payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            refused.value += 1
        else:
            pending[info.mid] = i
        i += 1
        sent.value = i
        if i % 64 == 0:
            client.loop_read()
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        client.loop(0.05)
    out.put(sorted(pending.values()))
    client.disconnect()


# -- readers (threads) -----------------------------------------------------------------------------
@dataclass
class ReadStats:
    """Latencies and errors of the readers, per interval and in total."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    interval: list[float] = field(default_factory=list)
    by_query: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    total: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: dict[str, str] = field(default_factory=dict)  # one example per error kind

    def ok(self, query: str, seconds: float) -> None:
        """A request answered (status < 400)."""
        with self.lock:
            self.interval.append(seconds)
            self.by_query[query].append(seconds)
            self.total += 1

    def error(self, kind: str, detail: str) -> None:
        """A failed request: `5xx`, `4xx`, `timeout` or `connection`."""
        with self.lock:
            self.errors[kind] += 1
            self.total += 1
            self.samples.setdefault(kind, detail[:200])

    def take(self) -> list[float]:
        """The latencies of the interval so far, and start the next one."""
        with self.lock:
            out, self.interval = self.interval, []
        return out


def reader(base: str, datastreams: list[int], stats: ReadStats, stop: threading.Event, timeout: float,
           seed: int) -> None:
    """Read back to back until `stop`, in turn the three queries."""
    import httpx

    rnd = random.Random(seed)
    k = seed
    with httpx.Client(base_url=base, timeout=timeout) as client:
        while not stop.is_set():
            query = QUERIES[k % len(QUERIES)]
            k += 1
            if query == "latest observations":
                path, params = "/v1.1/Observations", {"$orderby": "phenomenonTime desc", "$top": "20"}
            elif query == "datastream last minute":
                path = f"/v1.1/Datastreams({rnd.choice(datastreams)})/Observations"
                params = {"$filter": f"phenomenonTime ge {iso(time.time() - 60)}", "$top": "100",
                          "$orderby": "phenomenonTime desc"}
            else:
                path, params = "/ogcapi/collections/latest_values/items", {"limit": "100"}
            t = time.perf_counter()
            try:
                r = client.get(path, params=params)
            except httpx.TimeoutException as exc:
                stats.error("timeout", f"{path}: {exc!r}")
                continue
            except httpx.TransportError as exc:
                stats.error("connection", f"{path}: {exc!r}")
                time.sleep(0.1)
                continue
            took = time.perf_counter() - t
            if r.status_code >= 500:
                stats.error("5xx", f"{path}: {r.status_code} {r.text[:150]}")
            elif r.status_code >= 400:
                stats.error("4xx", f"{path}: {r.status_code} {r.text[:150]}")
            else:
                stats.ok(query, took)


# -- the run ---------------------------------------------------------------------------------------
def health(url: str) -> dict:
    """The platform's /health document ({} when it does not answer)."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}


def fmt_ms(values: list[float], q: float) -> str:
    """A percentile of latencies in seconds, as milliseconds."""
    return f"{pct(values, q) * 1000:.1f}" if values else "-"


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    """Run the soak and print its figures; the exit code is 0 unless the run could not be set up."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of publishing and reading (default 600)")
    ap.add_argument("--rate", type=float, default=1000, help="device messages/s, QoS 1 (default 1000)")
    ap.add_argument("--readers", type=int, default=4, help="reader threads (default 4)")
    ap.add_argument("--store", choices=["pg", "sqlite"], default="pg")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL of the PostgreSQL server (a new database is created next to it)")
    ap.add_argument("--sensors", type=int, default=100)
    ap.add_argument("--interval", type=float, default=30, help="seconds between report lines (default 30)")
    ap.add_argument("--workers", type=int, default=1, help="udp serve --workers (default 1)")
    ap.add_argument("--window", type=int, default=1000, help="unacknowledged QoS 1 messages at most")
    ap.add_argument("--timeout", type=float, default=10, help="a reader request taking longer is a timeout")
    ap.add_argument("--drain-timeout", type=float, default=600, help="seconds to wait for the backlog at the end")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir (server and mosquitto logs)")
    args = ap.parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ctx = mp.get_context("spawn")
    workdir = Path(tempfile.mkdtemp(prefix="udp-soak-", dir="/tmp"))
    workdir.chmod(0o777)  # mosquitto, started as root, runs as user mosquitto
    broker: Mosquitto | None = None
    server: Udp | None = None
    db: Database | None = None
    counter: StoreCounter | None = None
    pub: Any = None
    stop_pub = ctx.Event()
    stop_read = threading.Event()
    threads: list[threading.Thread] = []
    failed = False
    try:
        broker = broker_for_bench(workdir, 0)
        if args.store == "pg":
            db = create_pg(args.pg, "udp_soak")
            store = db.url
        else:
            store = f"sqlite:///{workdir / 'soak.db'}"
        say(f"store: {store}")
        config = workdir / "config.yml"
        config.write_text(RULES)
        server = start_server(store, config, broker.port, workdir / "server.log", workers=args.workers)
        server.wait()
        sensors = [f"s{k:03d}" for k in range(args.sensors)]
        t = time.perf_counter()
        datastreams = create_sensors(f"{server.url}/v1.1", sensors)
        say(f"created {len(datastreams)} Things with a Location and a Datastream each in "
            f"{time.perf_counter() - t:.1f} s")
        counter = StoreCounter(store)
        base_rows = counter.observations()

        sent, acked, refused = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False), ctx.Value("q", 0)
        ready, out = ctx.Event(), ctx.Queue()
        pub = ctx.Process(target=publisher_main, name="soak-publisher", daemon=True,
                          args=(broker.port, [f"soak/{s}/count" for s in sensors], args.rate, args.window, sent,
                                acked, refused, stop_pub, ready, out))
        stats = ReadStats()
        serve_pid = server.proc.pid
        mosq_pid = broker.proc.pid
        rss_first = tree_rss(serve_pid)
        mosq_first = rss_kb(mosq_pid)
        meter = CpuMeter({"serve tree": lambda: process_tree(serve_pid),
                          "postgres (all)": postgres_pids if args.store == "pg" else list,
                          "mosquitto": lambda: [mosq_pid], "publisher": lambda: [pub.pid] if pub.pid else [],
                          "bench (readers)": lambda: [os.getpid()]})
        say(f"soak: {args.rate:,.0f} msg/s QoS 1 over {len(sensors)} sensors, {args.readers} readers, "
            f"{args.duration:.0f} s, udp serve --workers {args.workers} on {args.store}; "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} before the start")
        say(f"  t=0  RSS serve tree {mb(sum(rss_first.values()))} MB "
            f"({', '.join(f'{k} {mb(v)}' for k, v in rss_first.items())}), mosquitto {mb(mosq_first)} MB")
        head = (f"{'t s':>5} {'published':>10} {'acked':>10} {'stored':>10} {'backlog':>8} {'reads/s':>8} "
                f"{'p50 ms':>7} {'p99 ms':>7} {'5xx':>4} {'4xx':>4} {'tmo':>4} {'conn':>4} {'refus':>5} "
                f"{'dead':>4} {'prints':>7} {'serve tree MB':>15} {'mosq MB':>8} {'cache MB':>8} {'load':>5}")
        pub.start()
        if not ready.wait(30):
            raise RuntimeError("the publisher did not connect")
        meter.start()
        t0 = time.time()
        for k in range(args.readers):
            th = threading.Thread(target=reader, name=f"reader-{k}", daemon=True,
                                  args=(server.url, datastreams, stats, stop_read, args.timeout, k))
            th.start()
            threads.append(th)
        say(head)
        rows_log: list[dict[str, Any]] = []
        last_t = t0
        end = t0 + args.duration
        while True:
            nxt = min(end, last_t + args.interval)
            while time.time() < nxt:
                time.sleep(min(1.0, max(0.0, nxt - time.time())))
            now = time.time()
            lat = stats.take()
            stored = counter.observations() - base_rows
            rss = tree_rss(serve_pid)
            h = health(server.url)
            row = {"t": now - t0, "published": sent.value, "acked": acked.value, "stored": stored,
                   "backlog": acked.value - stored, "reads": len(lat) / (now - last_t), "p50": fmt_ms(lat, 0.5),
                   "p99": fmt_ms(lat, 0.99), "dead": counter.dead_letters(), "prints": counter.fingerprints(),
                   "rss": rss,
                   "mosq": rss_kb(mosq_pid), "errors": dict(stats.errors), "refused": refused.value,
                   "cache": (h.get("response_cache") or {}).get("bytes", 0) / 1048576,
                   "load": os.getloadavg()[0]}
            rows_log.append(row)
            e = row["errors"]
            say(f"{row['t']:>5.0f} {row['published']:>10,} {row['acked']:>10,} {stored:>10,} {row['backlog']:>8,} "
                f"{row['reads']:>8.1f} {row['p50']:>7} {row['p99']:>7} {e.get('5xx', 0):>4} {e.get('4xx', 0):>4} "
                f"{e.get('timeout', 0):>4} {e.get('connection', 0):>4} {row['refused']:>5} {row['dead']:>4} "
                f"{row['prints']:>7,} {split(rss):>15} {mb(row['mosq']):>8} {row['cache']:>8.1f} {row['load']:>5.2f}")
            last_t = now
            if now >= end - 0.01:
                break
        stop_read.set()
        stop_pub.set()
        cpu = meter.stop()
        for th in threads:
            th.join(args.timeout + 5)
        unacked: list[int] = out.get(timeout=90)
        pub.join(10)
        total_sent = sent.value
        say(f"publishing stopped: {total_sent:,} published, {acked.value:,} acknowledged, "
            f"{len(unacked)} never acknowledged; draining the backlog ...")
        t_drain = time.time()
        last, grew = -1, time.time()
        while time.time() - t_drain < args.drain_timeout:
            v = counter.observations() - base_rows
            if v != last:
                last, grew = v, time.time()
            elif (v >= acked.value and time.time() - grew >= 2) or time.time() - grew >= 30:
                break
            time.sleep(0.5)
        drain = max(0.0, grew - t_drain)
        rows, distinct = counter.seqs(total_sent)
        lost = (total_sent - len(unacked)) - distinct  # acknowledged by the broker, never stored
        dup = rows - distinct
        rss_last = tree_rss(serve_pid)
        mosq_last = rss_kb(mosq_pid)
        after = rows_log[0]  # the first interval
        half = rows_log[(len(rows_log) - 1) // 2]  # the middle of the run: caches and pools have filled by then
        elapsed = rows_log[-1]["t"]
        all_lat = [x for v in stats.by_query.values() for x in v]

        say("")
        say(f"== soak summary: {elapsed:.0f} s, {args.rate:,.0f} msg/s QoS 1 requested, {args.readers} readers, "
            f"store {args.store}, udp serve --workers {args.workers}, {os.cpu_count()} cores ==")
        say(f"messages   published {total_sent:,} ({total_sent / elapsed:,.0f}/s), acknowledged by mosquitto "
            f"{acked.value:,}, never acknowledged {len(unacked)}, refused by paho {refused.value}")
        say(f"stored     {rows:,} Observations, {distinct:,} distinct seq; backlog drained {drain:.1f} s after "
            f"publishing stopped")
        say(f"           lost (acknowledged, never stored) {lost:,}; duplicated (stored twice) {dup:,}; "
            f"dead letters {counter.dead_letters()}")
        say(f"reads      {stats.total:,} requests ({stats.total / elapsed:,.1f}/s), p50 {fmt_ms(all_lat, 0.5)} ms, "
            f"p99 {fmt_ms(all_lat, 0.99)} ms, max {fmt_ms(all_lat, 1.0)} ms")
        for q in QUERIES:
            v = stats.by_query.get(q, [])
            say(f"  {q:<24} {len(v):>8,}  p50 {fmt_ms(v, 0.5):>7} ms  p99 {fmt_ms(v, 0.99):>7} ms")
        say("errors     " + (", ".join(f"{k} {n}" for k, n in stats.errors.items()) or "none"))
        for k, sample in stats.samples.items():
            say(f"  e.g. {k}: {sample}")
        tree_end, tree_half = sum(rss_last.values()), sum(half["rss"].values())
        per_hour = (tree_end - tree_half) / max(1.0, elapsed - half["t"]) * 3600
        say(f"RSS        serve tree {mb(sum(rss_first.values()))} MB at t=0 → {mb(sum(after['rss'].values()))} MB "
            f"at t={after['t']:.0f} s → {mb(tree_half)} MB at t={half['t']:.0f} s → {mb(tree_end)} MB at the end "
            f"(max {mb(max(sum(r['rss'].values()) for r in rows_log))} MB); second half {mb(tree_end - tree_half)} MB "
            f"= {mb(per_hour)} MB/h")
        for key in rss_last:
            say(f"  {key:<16} {mb(rss_first.get(key, 0)):>7} → {mb(after['rss'].get(key, 0)):>7} → "
                f"{mb(half['rss'].get(key, 0)):>7} → {mb(rss_last[key]):>7} MB")
        say(f"  mosquitto        {mb(mosq_first):>7} → {mb(after['mosq']):>7} → {mb(half['mosq']):>7} → "
            f"{mb(mosq_last):>7} MB")
        say(f"  response cache   {rows_log[-1]['cache']:.1f} MB at the end (server.response_cache_mb per worker)")
        prints = [r["prints"] for r in rows_log]
        say(f"fingerprints of committed messages (bridge_seen_messages): {after['prints']:,} at t={after['t']:.0f} s → "
            f"{half['prints']:,} at t={half['t']:.0f} s → {prints[-1]:,} at the end (max {max(prints):,}) after "
            f"{rows:,} messages stored: the bridge keeps the newest {KEEP_SEEN:,} and prunes every few seconds")
        say("CPU        " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            + f" (cores busy on average; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} now)")
        return 0
    except BaseException as exc:
        failed = True
        if isinstance(exc, KeyboardInterrupt):
            say("\ninterrupted: cleaning up")
        else:
            say(f"\nERROR: {type(exc).__name__}: {exc}")
            if server is not None:
                say(f"-- server log (tail) --\n{tail(server.log_path)}")
            if broker is not None:
                say(f"-- mosquitto log (tail) --\n{tail(broker.log_path)}")
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        stop_read.set()
        stop_pub.set()
        if pub is not None and pub.is_alive():
            pub.join(5)
            if pub.is_alive():
                pub.terminate()
                pub.join(5)
        if counter is not None:
            counter.close()
        if server is not None:
            say(f"server stopped (exit {server.stop()})")
        if broker is not None:
            broker.close()
        if db is not None:
            try:
                db.drop()
            except Exception as exc:  # noqa: BLE001
                say(f"could not drop the database: {exc}")
        if args.keep_logs:
            say(f"logs kept in {workdir}" + (" (the run failed)" if failed else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say(f"removed {workdir}")


if __name__ == "__main__":
    sys.exit(main())
