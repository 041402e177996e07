"""MQTT ingest: device messages through a private Mosquitto and the bridge of a real `udp serve` into PostgreSQL.

    python bench/mqtt_ingest.py [--duration 20] [--sensors 100] [--publishers 2] [--window 1000]
                                [--latency-rate 1000] [--latency-seconds 10] [--baseline-seconds 10]
                                [--standard-mosquitto 40000] [--standard-embedded 20000] [--skip-bridge]
                                [--nodes 2] [--notify-qos 0] [--bulk 50000]
                                [--py-spy /tmp/bridge.txt [--py-spy-args=--gil]]

It starts a private Mosquitto on a free port (persistence off, no queue or in-flight limits, so
QoS 1 messages are never dropped), creates a fresh PostgreSQL database on --pg, writes a config.yml
with one bridge rule (`bench/{sensor}/count` → Datastream "bench {sensor}", result $.count,
phenomenonTime $.time, parameters seq and sent), starts `udp serve --workers 1 --mqtt mqtt://… --no-seed`
(the bridge runs in the serve process; no tile seeder beside what is measured) and creates --sensors Things,
each with a Location and one OM_Measurement Datastream. Then:

1. baseline: the same publishers → Mosquitto → a plain paho subscriber (no platform): Mosquitto's
   own QoS 1 ceiling on this machine, measured before the platform starts (on a small machine the
   Python clients rather than Mosquitto set it: the CPU line says which);
1a. standard topic on the embedded broker: --publishers processes publish --standard-embedded SensorThings
   Observations (QoS 1) to `v1.1/Datastreams(n)/Observations` on the embedded broker of a `udp serve` of its
   own (no --mqtt, on a second database, where a PUBACK comes only after commit), as fast as their windows
   allow; the rate is Observations stored (by parameters.seq) per second from the start until the last is
   stored, with lost and duplicated counted. That platform runs alone, before the one on Mosquitto starts,
   and is stopped after;
1b. standard topic through Mosquitto: the same with --standard-mosquitto Observations. --skip-bridge stops
   after these phases;
2. sustained ingest: --publishers processes (QoS 1, a bounded in-flight window each) offer --offered
   messages/s together for --duration seconds, round-robin over the sensors; the Observations
   table's row count is polled every second; after publishing stops it waits for the count to
   stop growing, then counts messages lost (published but not stored, by parameters.seq) and
   duplicated (stored more than once);
3. latency: one publisher at --latency-rate messages/s for --latency-seconds; a paho subscriber on
   `v1.1/Observations` takes receive time - parameters.sent of every notification;
4. quiet after bulk: --bulk Observations in one CreateObservations over the Datastreams; seconds from its 201 until
   the serve process's /health says nothing is left to notify and Mosquitto has acknowledged every notification
   (`mqtt.pending` and `mqtt.in_flight` 0): on an external broker the platform cannot know who subscribes, so it
   publishes each to its three standard topics.

Publishers speak the MQTT wire themselves (bench/mqtt_wire.py: a few µs of CPU a message, as wrk is to HTTP);
--paho-publishers uses paho (~50 µs), whose two processes took ~0.9 of this machine's 2 cores from the platform.

It prints the figures and a table with the targets beside them, then stops the server and
Mosquitto, drops the database and removes its temp dir, also on Ctrl-C or an error. It asserts
nothing. With --py-spy it records the serve process and its children (workers, bridge) with py-spy
during the sustained phase (`py-spy record --format raw --threads --subprocesses --nonblocking`)
and prints a summary of the hottest frames.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from harness import (  # bench/ is the script's own directory
    Database,
    Mosquitto,
    Udp,
    create_pg,
    process_tree,
    say,
    tail,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
SEQ_BLOCK = 10**9  # seq = publisher * SEQ_BLOCK + i: (publisher, seq) unique
WARMUP_PUBLISHER = 900  # seq blocks of the phases that are not the sustained ingest
LATENCY_PUBLISHER = 800
BASELINE_PUBLISHER = 700
STANDARD_PUBLISHER = 600
EMBEDDED_PUBLISHER = 500

TARGETS = {
    "ingest": 15_000.0,  # Observations/s stored, sustained
    "ingest_of_ceiling": 0.75,  # or this share of Mosquitto's own QoS 1 ceiling measured in the same run
    "lost": 0,
    "duplicated": 0,
    "p99_ms": 20.0,  # at 1,000 msg/s
    "standard_mosquitto": 10_000.0,  # Observations/s published to v1.1/Datastreams(n)/Observations
    "standard_embedded": 3_000.0,
    "quiet_s": 1.0,  # after a bulk write is committed, nothing left to notify
}

RULES = """title: MQTT ingest benchmark
bridge:
  - topic: bench/{sensor}/count
    datastream: "bench {sensor}"
    result: $.count
    phenomenonTime: $.time
    parameters: {seq: $.seq, sent: $.sent}
"""


# -- helpers ---------------------------------------------------------------------------------------


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def broker_for_bench(workdir: Path, inflight: int) -> Mosquitto:
    """A private Mosquitto for benchmarks: persistence off, neither queued nor in-flight QoS 1 messages limited
    (the default of 1000 queued drops QoS 1 messages to slow clients)."""
    b = Mosquitto("max_queued_messages 0\nmax_queued_bytes 0\n"
                  f"max_inflight_messages {inflight}\n"  # 0: no limit (the default is 20)
                  "max_inflight_bytes 0\nset_tcp_nodelay true", workdir=workdir)
    say(f"mosquitto: {b.conf} (pid {b.proc.pid if b.proc else '-'}, port {b.port})")
    return b


def start_server(store: str, config: Path, mqtt_port: int, log_path: Path, log_level: str = "info",
                 workers: int = 1) -> Udp:
    """`udp serve --workers N` with the bridge (no tile seeder), in its own process group."""
    # no vector tiles to seed here: the seeder would only take CPU from what is measured
    server = Udp("serve", "--config", str(config), "--store", store, "--mqtt", f"mqtt://127.0.0.1:{mqtt_port}",
                 "--workers", str(workers), "--log-level", log_level, "--no-seed", log=log_path)
    say(f"server: {' '.join(server.cmd)} (pid {server.pid})")
    return server


# -- CPU accounting (from /proc) -------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_pids() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


class CpuMeter:
    """CPU seconds used by groups of processes between start() and stop(), as cores busy."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.t0 = 0.0
        self.result: dict[str, float] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        return {name: {pid: _cpu(pid) for pid in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self.before = self._read()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        after = self._read()
        secs = time.perf_counter() - self.t0
        for name, now in after.items():
            was = self.before.get(name, {})
            used = sum(v - was.get(pid, 0.0) for pid, v in now.items())
            self.result[name] = used / secs if secs > 0 else float("nan")
        return self.result


# -- MQTT clients in their own processes -----------------------------------------------------------
def message(i: int, base: int, sta: bool) -> bytes:
    """The `i`th message of a publisher whose seqs start at `base`, stamped with the time it is sent: a SensorThings
    Observation (`sta`) or a device message for the bridge rule."""
    sent = time.time()
    if sta:
        return orjson.dumps({"result": float(i % 1000) + 0.5, "phenomenonTime": iso(sent),
                             "parameters": {"seq": base + i, "sent": sent}})
    return orjson.dumps({"count": float(i % 1000) + 0.5, "time": iso(sent), "seq": base + i, "sent": sent})


PUBLISH_BATCH = 64  # messages a publisher writes to the socket at once


class PahoPublisher:
    """`mqtt_wire.WirePublisher`'s interface over paho's client (`--paho-publishers`: the publishers of the figures
    before the wire ones; ~50 µs of CPU a message). paho's network loop runs in the publishing thread (no
    loop_start): publish() writes to the socket at once and PUBACKs are read by `read`; with loop_start the two
    threads fight over the GIL and a process manages ~3,000 msg/s instead of ~15,000."""

    def __init__(self, port: int, client_id: str, window: int) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(0)
        self.acked = 0
        self.failed = 0  # publishes paho refused (counted apart: they were never sent)
        connected = [False]

        def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
            self.acked += 1

        def on_connect(*_: object) -> None:
            connected[0] = True

        self.client.on_publish = on_publish
        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port, keepalive=60)
        deadline = time.time() + 10
        while not connected[0]:
            if time.time() > deadline:
                raise RuntimeError(f"{client_id}: no connection to the broker")
            self.client.loop(0.05)
        self._misc = time.time() + 1

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 (written at once)."""
        if self.client.publish(topic, payload, qos=1).rc != self.mqtt.MQTT_ERR_SUCCESS:
            self.failed += 1

    def flush(self) -> None:
        """paho's keep-alive, once a second: what it publishes is written already."""
        if time.time() >= self._misc:
            self.client.loop_misc()
            self._misc = time.time() + 1

    def read(self, timeout: float = 0.0) -> None:
        """Read what has arrived, waiting up to `timeout` s for something (PUBACKs count in `acked`)."""
        if select.select([self.client.socket()], [], [], timeout)[0]:
            self.client.loop_read()

    def close(self) -> None:
        """DISCONNECT."""
        self.client.disconnect()


def publisher_main(idx: int, port: int, topics: list[str], duration: float, window: int, rate: float,
                   ready: mp.Queue, go: mp.Event, out: mp.Queue, limit: int = 0,  # type: ignore[valid-type]
                   sta: bool = False, paho: bool = False) -> None:
    """Publish QoS 1 messages round-robin over `topics` for `duration` s after `go` (or until `limit` messages are
    sent): as fast as a window of `window` unacknowledged messages allows, or at `rate` messages/s. `sta`:
    SensorThings Observations (for `v1.1/Datastreams(n)/Observations`), else device messages for the bridge rule.
    Over mqtt_wire.WirePublisher (a few µs of CPU a message), or over paho (`paho`). Reports (idx, sent, acked,
    failed, seconds until all were acknowledged with a limit, else of publishing) on `out`."""
    from mqtt_wire import WirePublisher

    try:
        client_id = f"bench-pub-{idx}-{os.getpid()}"
        pub = PahoPublisher(port, client_id, window) if paho else WirePublisher("127.0.0.1", port, client_id)
        ready.put(idx)
        while not go.wait(0.5):
            pub.flush()  # keep the connection alive while waiting
        start = time.time()
        end = start + duration
        n = len(topics)
        base = idx * SEQ_BLOCK
        step = max(1, int(rate / 1000))
        i = 0
        while True:
            now = time.time()
            if now >= end or (limit and i >= limit):
                break
            room = window - (i - pub.failed - pub.acked)
            if room <= 0:  # the window is full: wait for PUBACKs
                pub.read(0.01)
                continue
            if rate:
                due = int((now - start) * rate) + 1 - i  # messages due by now
                if due < step:  # sent a millisecond's worth at a time (one at a time up to 1,000/s)
                    pub.read(start + (i + step - 1) / rate - now)
                    continue
                room = min(room, due)
            for _ in range(min(room, PUBLISH_BATCH, limit - i if limit else PUBLISH_BATCH)):
                pub.publish(topics[i % n], message(i, base, sta))
                i += 1
            pub.flush()
            pub.read(0)
        failed = pub.failed
        seconds = time.time() - start
        deadline = time.time() + 120
        while pub.acked < i - failed and time.time() < deadline:
            pub.read(0.05)
        if limit:
            seconds = time.time() - start
        out.put((idx, i - failed, pub.acked, failed, seconds))
        pub.close()
    except KeyboardInterrupt:
        pass


def counter_main(port: int, topic: str, count: object, ready: mp.Event) -> None:  # type: ignore[valid-type]
    """A plain paho subscriber (QoS 1) counting the messages it receives."""
    import paho.mqtt.client as mqtt

    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-count-{os.getpid()}")

        def on_message(_c: object, _u: object, _m: object) -> None:
            count.value += 1  # type: ignore[attr-defined]

        client.on_message = on_message
        client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        client.on_subscribe = lambda *_: ready.set()
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_forever()
    except KeyboardInterrupt:
        pass


@dataclass
class PublishResult:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_publisher: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else float("nan")


class Publishers:
    """Publisher processes started and connected; run() starts them together and collects their reports."""

    def __init__(self, ctx: mp.context.BaseContext, children: list, port: int, indexes: list[int],
                 topics: list[str], duration: float, window: int, rate: float = 0.0, limit: int = 0,
                 sta: bool = False, paho: bool = False) -> None:
        self.ready, self.out, self.go = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=publisher_main, daemon=True, name=f"publisher-{i}",
                                  args=(i, port, topics, duration, window, rate, self.ready, self.go, self.out,
                                        limit, sta, paho))
                      for i in indexes]
        children.extend(self.procs)
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready.get(timeout=60)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def start(self) -> float:
        t = time.time()
        self.go.set()
        return t

    def collect(self, timeout: float = 300) -> PublishResult:
        res = PublishResult()
        for _ in self.procs:
            idx, sent, acked, failed, seconds = self.out.get(timeout=timeout)
            res.sent += sent
            res.acked += acked
            res.failed += failed
            res.seconds = max(res.seconds, seconds)
            res.per_publisher[idx] = sent
        for p in self.procs:
            p.join(10)
        return res


# -- the platform ----------------------------------------------------------------------------------
def quiet_after_bulk(server: Udp, rows: int) -> tuple[float, float, int, float, int]:
    """POST `rows` Observations in one CreateObservations over the bench's Datastreams, then poll /health until the
    notifier has published (and the broker acknowledged) them all: (seconds to commit, seconds from the 201 until
    quiet, notifications published meanwhile, notifications/s, of them handed to the bridge process to publish
    through its connection: sensorthings/mqtt/relay.py)."""
    import httpx

    sta = f"{server.url}/v1.1"
    with httpx.Client(timeout=300) as client:
        streams = [d["@iot.id"] for d in client.get(f"{sta}/Datastreams", params={"$select": "id", "$top": 1000})
                   .json()["value"]]
        each = -(-rows // len(streams))
        start = datetime(2020, 1, 1, tzinfo=UTC)
        times = [(start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z") for i in range(each)]
        body = [{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
                 "dataArray": [[t, i] for i, t in enumerate(times)]} for ds in streams]
        first = client.get(f"{server.url}/health").json()["mqtt"]
        before, relayed_before = first["published"], first.get("relayed", 0)
        t0 = time.monotonic()
        r = client.post(f"{sta}/CreateObservations", content=orjson.dumps(body),
                        headers={"Content-Type": "application/json"})
        if r.status_code != 201:
            raise RuntimeError(f"CreateObservations: {r.status_code} {r.text[:300]}")
        committed = time.monotonic()
        while True:
            health = client.get(f"{server.url}/health").json()["mqtt"]
            if health["pending"] == 0 and health["in_flight"] == 0:
                break
            if time.monotonic() - committed > 600:
                raise RuntimeError(f"notifications still pending 600 s after the bulk: {health}")
            time.sleep(0.05)
        quiet = time.monotonic() - committed
        published = health["published"] - before
    return committed - t0, quiet, published, published / max(quiet, 1e-9), health.get("relayed", 0) - relayed_before


def create_sensors(sta: str, sensors: list[str]) -> None:
    """One Thing per sensor with a Location and a Datastream "bench <sensor>" (deep insert, one POST each)."""
    import httpx
    import orjson

    def post(client: httpx.Client, path: str, body: object) -> dict:
        r = client.post(f"{sta}/{path}", content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        if r.status_code != 201:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    with httpx.Client(timeout=60) as client:
        sensor_id = post(client, "Sensors", {"name": "bench counter", "description": "benchmark device",
                                             "encodingType": "text/html", "metadata": "none"})["@iot.id"]
        prop_id = post(client, "ObservedProperties", {"name": "count", "definition": "https://example.org/count",
                                                      "description": "a count"})["@iot.id"]
        for k, name in enumerate(sensors):
            lon, lat = 144.9 + (k % 10) * 0.01, -37.85 + (k // 10) * 0.01
            post(client, "Things", {
                "name": f"bench {name}", "description": "benchmark device",
                "Locations": [{"name": f"bench {name}", "description": "", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [lon, lat]}}],
                "Datastreams": [{"name": f"bench {name}", "description": f"count of {name}",
                                 "observationType": OM + "OM_Measurement",
                                 "unitOfMeasurement": {"name": "count", "symbol": "1",
                                                       "definition": "https://example.org/count"},
                                 "Sensor": {"@iot.id": sensor_id}, "ObservedProperty": {"@iot.id": prop_id}}],
            })


class RowCounter:
    """count(*) of the observations table, on a connection of its own."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM observations").fetchone()[0]

    def seqs(self, lo: int, hi: int) -> tuple[int, int]:
        """(rows, distinct seqs) of the Observations whose parameters.seq is in [lo, hi)."""
        row = self.conn.execute(
            "SELECT count(*), count(DISTINCT (parameters->>'seq')::bigint) FROM observations "
            "WHERE (parameters->>'seq')::bigint >= %s AND (parameters->>'seq')::bigint < %s", (lo, hi)).fetchone()
        return row[0], row[1]

    def row(self, sql: str, params: tuple = ()) -> tuple:
        return tuple(self.conn.execute(sql, params).fetchone())

    def scalar(self, sql: str) -> object:
        return self.conn.execute(sql).fetchone()[0]

    def close(self) -> None:
        self.conn.close()


def wait_until_stable(sample: Callable[[], int], target: int, timeout: float, quiet: float = 3.0,
                      every: float = 0.25, progress: Callable[[int], None] | None = None) -> tuple[int, float, bool]:
    """Poll until the value reaches `target` and holds for a moment, or stops growing for `quiet` s:
    (last value, time.time() it last grew, False when `timeout` ran out while it still grew)."""
    last = sample()
    grew = time.time()
    deadline = time.time() + timeout
    shown = time.time()
    while time.time() < deadline:
        time.sleep(every)
        v = sample()
        if progress is not None and time.time() - shown >= 10:
            progress(v)
            shown = time.time()
        if v != last:
            last, grew = v, time.time()
            continue
        if (v >= target and time.time() - grew >= 0.5) or time.time() - grew >= quiet:
            return last, grew, True
    return last, grew, False


# -- py-spy ----------------------------------------------------------------------------------------
def summarize_pyspy(path: Path, top: int = 12) -> None:
    """The hottest frames of a `py-spy record --format raw --threads` file (collapsed stacks), per thread:
    share of all samples with the frame anywhere on the stack (inclusive) and on top of it (self)."""
    total = 0
    threads: Counter[str] = Counter()
    incl: dict[str, Counter[str]] = {}
    own: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "thread (?)")
        thread = thread.split(": ", 1)[-1].strip('"')
        process = next((f for f in frames if f.startswith("process ")), "")
        if process:  # with --subprocesses: which process the thread is in
            thread = f"{thread} (pid {process.split()[1].rstrip(':')})"
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        total += count
        threads[thread] += count
        for f in set(frames):
            incl.setdefault(thread, Counter())[f] += count
        if frames:
            own.setdefault(thread, Counter())[frames[-1]] += count
    if not total:
        say(f"py-spy: no samples in {path}")
        return
    say(f"py-spy: {total} samples in {path} (shares of all samples)")
    skip = ("threading.py", "_bootstrap", "_thread_main", "loop_forever")
    for thread, c in threads.most_common(8):
        say(f"  {100 * c / total:5.1f}%  thread {thread}")
        shown = 0
        for f, k in incl.get(thread, Counter()).most_common():
            if any(x in f for x in skip):
                continue
            say(f"      {100 * k / total:5.1f}%  {f}")
            shown += 1
            if shown >= top:
                break
        tops = own.get(thread, Counter()).most_common(4)
        say("      self: " + "; ".join(f"{f} {100 * k / total:.1f}%" for f, k in tops))


# -- report ----------------------------------------------------------------------------------------
@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, figure: str, target: str = "", verdict: str = "") -> None:
        self.rows.append((name, figure, target, verdict))

    def print(self) -> None:
        head = ("measure", "figure", "target", "meets")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        say(line)
        say("-" * len(line))
        for r in self.rows:
            say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def at_least(value: float, target: float) -> str:
    return "" if value != value else ("yes" if value >= target else "NO")


def at_most(value: float, target: float) -> str:
    return "" if value != value else ("yes" if value <= target else "NO")


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + f" (cores busy; {os.cpu_count()} cores)"


# -- phases ----------------------------------------------------------------------------------------
def baseline(ctx: mp.context.BaseContext, children: list, args: argparse.Namespace, port: int, port_owner: int,
             sensors: list[str]) -> tuple[float, float, int, int]:
    """Publishers → Mosquitto → a plain subscriber: (receive rate, publish rate, received, published)."""
    count = ctx.Value("q", 0, lock=False)
    ready = ctx.Event()
    sub = ctx.Process(target=counter_main, args=(port, "baseline/#", count, ready), daemon=True, name="counter")
    children.append(sub)
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the baseline subscriber did not subscribe")
    topics = [f"baseline/{s}/count" for s in sensors]
    pubs = Publishers(ctx, children, port, [BASELINE_PUBLISHER + i for i in range(args.publishers)], topics,
                      args.baseline_seconds, args.window, paho=args.paho_publishers)
    meter = CpuMeter({"mosquitto": lambda: [port_owner], "publishers": pubs.pids, "subscriber": lambda: [sub.pid]})
    meter.start()
    t0 = pubs.start()
    c0 = count.value
    time.sleep(max(0.0, t0 + args.baseline_seconds - time.time()))
    c1 = count.value
    secs = time.time() - t0
    cpu = meter.stop()
    res = pubs.collect()
    got, _, _ = wait_until_stable(lambda: count.value, res.acked, 60)
    sub.terminate()
    sub.join(5)
    recv_rate = (c1 - c0) / secs
    say(f"baseline: {args.publishers} publishers → mosquitto → 1 paho subscriber, QoS 1, {args.baseline_seconds:.0f}s: "
        f"published {res.acked:,} ({res.rate:,.0f} msg/s), received {got:,}; "
        f"receive rate in the window {recv_rate:,.0f} msg/s")
    say(f"  CPU during the window: {fmt_cpu(cpu)}")
    return recv_rate, res.rate, got, res.acked


def stream_topics(sta: str) -> list[str]:
    """The standard create topic of every bench Datastream."""
    import httpx

    page = httpx.get(f"{sta}/Datastreams", params={"$select": "id", "$top": "10000"}, timeout=60).json()
    return [f"v1.1/Datastreams({d['@iot.id']})/Observations" for d in page["value"]]


def standard_topic(ctx: mp.context.BaseContext, children: list, args: argparse.Namespace, port: int, sta: str,
                   counter: RowCounter, total: int, first_publisher: int, label: str) -> tuple[float, int, int]:
    """`total` QoS 1 Observations published to `v1.1/Datastreams(n)/Observations` by --publishers processes as
    fast as their windows allow: (Observations/s from the start until all are stored, lost, duplicated)."""
    topics = stream_topics(sta)
    indexes = [first_publisher + i for i in range(args.publishers)]
    per = total // args.publishers
    pubs = Publishers(ctx, children, port, indexes, topics, 3600, args.window, limit=per, sta=True,
                      paho=args.paho_publishers)
    lo, hi = indexes[0] * SEQ_BLOCK, (indexes[-1] + 1) * SEQ_BLOCK
    say(f"standard topic, {label}: {args.publishers} publishers × {per:,} QoS 1 Observations, window "
        f"{args.window} ...")
    t0 = pubs.start()
    res = pubs.collect(timeout=args.drain_timeout)
    say(f"  all acknowledged after {res.seconds:.1f}s ({res.rate:,.0f} msg/s)")
    seen = wait_until_stable(lambda: counter.seqs(lo, hi)[0], res.acked, args.drain_timeout, quiet=10)
    stored_at = seen[1] if seen[0] >= res.acked else time.time()
    rows, distinct = counter.seqs(lo, hi)
    secs = max(stored_at, t0 + res.seconds) - t0
    rate = distinct / secs if secs > 0 else float("nan")
    lost, dup = res.acked - distinct, rows - distinct
    say(f"  stored {distinct:,} of {res.acked:,} acknowledged in {secs:.1f}s = {rate:,.0f} Observations/s; "
        f"lost {lost:,}, duplicated {dup:,}")
    return rate, lost, dup


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL of the PostgreSQL server (a new database is created next to it)")
    ap.add_argument("--duration", type=float, default=20, help="seconds of sustained publishing")
    ap.add_argument("--offered", type=float, default=30_000,
                    help="messages/s the publishers offer together in the sustained phase, above what the platform "
                         "takes (0: as fast as they can: ~180,000/s of the wire publishers into Mosquitto's memory)")
    ap.add_argument("--sensors", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--window", type=int, default=1000, help="unacknowledged QoS 1 messages per publisher")
    ap.add_argument("--latency-rate", type=float, default=1000, help="messages/s of the latency phase")
    ap.add_argument("--latency-seconds", type=float, default=10)
    ap.add_argument("--baseline-seconds", type=float, default=10, help="0: skip the Mosquitto-only baseline")
    ap.add_argument("--broker-inflight", type=int, default=0,
                    help="Mosquitto max_inflight_messages (0: no limit). The bridge acknowledges a batch only "
                         "after it is committed, so a small limit would cap its batches")
    ap.add_argument("--drain-timeout", type=float, default=1800,
                    help="seconds to wait for the backlog to be stored after publishing stops")
    ap.add_argument("--server-log-level", default="warning")
    ap.add_argument("--py-spy", metavar="FILE", help="record the serve process with py-spy during the sustained "
                                                      "phase into FILE (raw collapsed stacks) and summarize it")
    ap.add_argument("--py-spy-args", default="",
                    help="extra py-spy record arguments, written --py-spy-args=--gil (or =--idle)")
    ap.add_argument("--standard-mosquitto", type=int, default=40_000,
                    help="Observations published to v1.1/Datastreams(n)/Observations through Mosquitto (0: skip)")
    ap.add_argument("--standard-embedded", type=int, default=20_000,
                    help="the same to the embedded broker of a second `udp serve` (0: skip)")
    ap.add_argument("--notify-qos", type=int, choices=[0, 1, 2],
                    help="mqtt.notify_qos of the platform on mosquitto (default: the platform's default)")
    ap.add_argument("--bulk", type=int, default=50_000,
                    help="Observations of the quiet-after-bulk phase (one CreateObservations; 0 skips it)")
    ap.add_argument("--skip-bridge", action="store_true", help="only the standard-topic phases")
    ap.add_argument("--paho-publishers", action="store_true",
                    help="publish with paho (~50 µs of CPU a message) instead of bench/mqtt_wire.py (a few µs)")
    ap.add_argument("--nodes", type=int, default=1,
                    help="with N > 1: the platform with mqtt.shared, the sustained ingest on one node and then on "
                         "N nodes (one more `udp serve --node` each) in the same run")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir (server and mosquitto logs)")
    args = ap.parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ctx = mp.get_context("spawn")
    children: list = []
    workdir = Path(tempfile.mkdtemp(prefix="udp-bench-mqtt-", dir="/tmp"))
    workdir.chmod(0o777)  # mosquitto, started as root, runs as user mosquitto
    broker: Mosquitto | None = None
    server: Udp | None = None
    db: Database | None = None
    counter: RowCounter | None = None
    extra_servers: list[Udp] = []
    extra_dbs: list[Database] = []
    spy: subprocess.Popen | None = None
    report = Report()
    sensors = [f"s{k:03d}" for k in range(args.sensors)]
    failed = False
    try:
        broker = broker_for_bench(workdir, args.broker_inflight)

        # -- 1. baseline: Mosquitto alone ------------------------------------------------------
        base_rate = float("nan")
        if args.baseline_seconds > 0:
            base_rate, base_pub, base_got, base_sent = baseline(ctx, children, args, broker.port,
                                                             broker.proc.pid, sensors)

        # -- standard topic on the embedded broker, of a platform of its own, measured alone: first, and stopped
        # before the platform on Mosquitto starts (an idle platform beside it took a quarter of a core) ---------
        if args.standard_embedded:
            db2 = create_pg(args.pg, "udp_bench_mqtt")
            extra_dbs.append(db2)
            embedded = Udp("serve", "--store", db2.url, "--workers", "1", "--log-level", args.server_log_level,
                           "--no-seed", log=workdir / "embedded.log")
            extra_servers.append(embedded)
            embedded.wait()
            say(f"embedded-broker server: {' '.join(embedded.cmd)} (MQTT port {embedded.mqtt_port})")
            create_sensors(f"{embedded.url}/v1.1", sensors)
            counter2 = RowCounter(db2.url)
            try:
                rate, lost, dup = standard_topic(ctx, children, args, embedded.mqtt_port, f"{embedded.url}/v1.1",
                                                 counter2, args.standard_embedded, EMBEDDED_PUBLISHER,
                                                 "on the embedded broker")
            finally:
                counter2.close()
                say(f"embedded-broker server stopped (exit {embedded.stop()})")
            report.add(f"standard topic, {args.standard_embedded:,} QoS 1 on the embedded broker",
                       f"{rate:,.0f} obs/s", f">= {TARGETS['standard_embedded']:,.0f} obs/s",
                       at_least(rate, TARGETS["standard_embedded"]))
            report.add("  lost / duplicated", f"{lost:,} / {dup:,}", "0 / 0", "yes" if lost == dup == 0 else "NO")
        if args.skip_bridge and not args.standard_mosquitto:
            say("")
            report.print()
            return 0

        # -- the platform ----------------------------------------------------------------------
        db = create_pg(args.pg, "udp_bench_mqtt")
        say(f"store: {db.url}")
        config = workdir / "config.yml"
        mqtt_keys = ([f"url: 'mqtt://127.0.0.1:{broker.port}'", "shared: true"] if args.nodes > 1 else []) + \
            ([f"notify_qos: {args.notify_qos}"] if args.notify_qos is not None else [])
        config.write_text(RULES + (f"mqtt: {{{', '.join(mqtt_keys)}}}\n" if mqtt_keys else ""))
        server = start_server(db.url, config, broker.port, workdir / "server.log", args.server_log_level)
        server.wait()
        sta = f"{server.url}/v1.1"
        t = time.perf_counter()
        create_sensors(sta, sensors)
        say(f"created {len(sensors)} Things with a Location and a Datastream each in {time.perf_counter() - t:.1f}s")
        counter = RowCounter(db.url)

        # warm-up: one message per sensor (the bridge looks up each Datastream and makes its
        # FeatureOfInterest on its first message)
        warm = Publishers(ctx, children, broker.port, [WARMUP_PUBLISHER], [f"bench/{s}/count" for s in sensors],
                          1.0, 100, rate=len(sensors), paho=args.paho_publishers)
        warm.start()
        wres = warm.collect()
        got, _, _ = wait_until_stable(counter.count, wres.acked, 60, quiet=10)
        say(f"warm-up: {wres.acked} messages published, {got} Observations stored through the bridge")
        if got == 0:
            raise RuntimeError(f"the bridge stored nothing; server log:\n{tail(server.log_path)}")

        # -- standard topic through Mosquitto ------------------------------------------------------------
        if args.standard_mosquitto:
            rate, lost, dup = standard_topic(ctx, children, args, broker.port, sta, counter, args.standard_mosquitto,
                                             STANDARD_PUBLISHER, "through mosquitto")
            report.add(f"standard topic, {args.standard_mosquitto:,} QoS 1 through mosquitto", f"{rate:,.0f} obs/s",
                       f">= {TARGETS['standard_mosquitto']:,.0f} obs/s",
                       at_least(rate, TARGETS["standard_mosquitto"]))
            report.add("  lost / duplicated", f"{lost:,} / {dup:,}", "0 / 0", "yes" if lost == dup == 0 else "NO")
        if args.skip_bridge:
            say("")
            report.print()
            return 0

        # -- 2. sustained ingest, on one node and then on --nodes ----------------------------------
        topics = [f"bench/{s}/count" for s in sensors]

        def sustained(first: int, nodes: list[Udp]) -> dict[str, object]:
            """The publishers with seq blocks from `first` for --duration s: rates, loss and CPU."""
            pubs = Publishers(ctx, children, broker.port, list(range(first, first + args.publishers)), topics,
                              args.duration, args.window, rate=args.offered / args.publishers,
                              paho=args.paho_publishers)
            meter = CpuMeter({
                "serve": lambda: [p for n in nodes for p in process_tree(n.proc.pid)],
                "postgres": postgres_pids,
                "mosquitto": lambda: [broker.proc.pid],  # type: ignore[union-attr]
                "publishers": pubs.pids,
                "bench": lambda: [os.getpid()],
            })
            spy = None
            if args.py_spy and first == 0:
                exe = shutil.which("py-spy")
                if exe is None:
                    say("py-spy is not installed (pip install py-spy): not profiling")
                else:
                    cmd = [exe, "record", "--pid", str(nodes[0].proc.pid), "--duration", str(int(args.duration)),
                           "--format", "raw", "--threads", "--subprocesses", "--nonblocking", "--rate", "100",
                           "-o", args.py_spy, *shlex.split(args.py_spy_args)]
                    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=open(workdir / "py-spy.log", "w"))  # noqa: SIM115
                    say(f"profiling: {' '.join(cmd)}")
                    time.sleep(0.5)
            before = counter.count()
            offered = f"{args.offered:,.0f} msg/s offered" if args.offered else "as fast as they can"
            say(f"sustained ingest on {len(nodes)} node{'s' if len(nodes) > 1 else ''}: {args.publishers} "
                f"publishers × window {args.window}, QoS 1, {offered}, {args.duration:.0f}s over {len(sensors)} "
                "sensors ...")
            meter.start()
            t0 = pubs.start()
            samples = [(t0, before)]
            end = t0 + args.duration
            while True:
                nxt = samples[-1][0] + 1.0
                if nxt > end - 0.05:
                    nxt = end
                time.sleep(max(0.0, nxt - time.time()))
                samples.append((time.time(), counter.count()))
                if samples[-1][0] >= end - 0.01:
                    break
            cpu = meter.stop()
            t_end, c_end = samples[-1]
            pub = pubs.collect()
            window_rate = (c_end - before) / (t_end - t0)
            per_sec = [(c2 - c1) / (t2 - t1) for (t1, c1), (t2, c2) in zip(samples, samples[1:], strict=False)]
            say("  stored per second: " + " ".join(f"{r / 1000:.1f}k" for r in per_sec))
            say(f"  publishers: {pub.sent:,} published, {pub.acked:,} acknowledged, {pub.failed} refused by paho, "
                f"in {pub.seconds:.1f}s = {pub.rate:,.0f} msg/s")
            say(f"  stored in the window: {c_end - before:,} in {t_end - t0:.1f}s = {window_rate:,.0f} "
                f"Observations/s (per-second median {statistics.median(per_sec):,.0f}, min {min(per_sec):,.0f}, "
                f"max {max(per_sec):,.0f})")
            say(f"  CPU during the window: {fmt_cpu(cpu)}")
            backlog = pub.acked - (c_end - before)
            say(f"  backlog at the end of publishing: {backlog:,} messages; draining ...")
            final, grew, drained = wait_until_stable(
                counter.count, before + pub.acked, args.drain_timeout, quiet=5,
                progress=lambda v: say(f"    ... {v - before:,} of {pub.acked:,} stored"))
            stored = final - before
            drain = max(0.0, grew - t_end)
            e2e = stored / (grew - t0) if grew > t0 else float("nan")
            if not drained:
                say(f"  WARNING: still storing after --drain-timeout {args.drain_timeout:.0f}s: "
                    "'lost' below counts messages not stored yet")
            say(f"  drained in {drain:.1f}s: {stored:,} stored in {grew - t0:.1f}s since publishing started = "
                f"{e2e:,.0f} Observations/s end to end")
            rows, distinct = counter.seqs(first * SEQ_BLOCK, (first + args.publishers) * SEQ_BLOCK)
            lost = pub.acked - distinct
            dup = rows - distinct
            dead = counter.scalar("SELECT count(*) FROM dead_letters")
            say(f"  check by parameters.seq: {pub.acked:,} acknowledged, {rows:,} rows, {distinct:,} distinct "
                f"→ lost {lost:,}, duplicated {dup:,}; dead letters {dead}")
            # the bridge remembers a batch's fingerprints with the batch's last arrival time: its batch sizes
            nb, med, big = counter.row(
                "SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY n), max(n) FROM "
                "(SELECT count(*) AS n FROM bridge_seen_messages WHERE at >= to_timestamp(%s) GROUP BY at) b",
                (t0,))
            say(f"  bridge transactions (from bridge_seen_messages): {nb:,}, median {med} messages, max {big}")
            if spy is not None:
                try:
                    spy.wait(args.duration + 30)
                except subprocess.TimeoutExpired:
                    spy.terminate()
                    spy.wait(5)
            return {"window_rate": window_rate, "e2e": e2e, "drain": drain, "pub": pub, "lost": lost, "dup": dup,
                    "cpu": cpu}

        one = sustained(0, [server])
        window_rate, e2e, drain, pub, lost, dup, cpu = (one["window_rate"], one["e2e"], one["drain"], one["pub"],
                                                         one["lost"], one["dup"], one["cpu"])
        more = None
        if args.nodes > 1:
            for k in range(2, args.nodes + 1):
                node = Udp("serve", "--config", str(config), "--store", db.url, "--mqtt",
                           f"mqtt://127.0.0.1:{broker.port}", "--workers", "1", "--log-level",
                           args.server_log_level, "--node", f"n{k}", "--no-seed", log=workdir / f"server-n{k}.log")
                extra_servers.append(node)
                node.wait()
                say(f"node n{k}: {' '.join(node.cmd)} (pid {node.pid})")
            more = sustained(100, [server, *extra_servers[-(args.nodes - 1):]])

        # -- 3. latency at a fixed rate --------------------------------------------------------
        import orjson
        import paho.mqtt.client as mqtt

        lo, hi = LATENCY_PUBLISHER * SEQ_BLOCK, (LATENCY_PUBLISHER + 1) * SEQ_BLOCK
        lat: list[float] = []
        seen: set[int] = set()
        notif_dups = [0]
        subscribed = threading.Event()

        arrivals = [0, time.time()]  # every notification, and when the last one came

        def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
            got_at = time.time()
            arrivals[0] += 1
            arrivals[1] = got_at
            try:
                params = orjson.loads(msg.payload).get("parameters") or {}
                seq, sent = int(params["seq"]), float(params["sent"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                return
            if not lo <= seq < hi:
                return
            if seq in seen:
                notif_dups[0] += 1
                return
            seen.add(seq)
            lat.append(got_at - sent)

        listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-listen-{os.getpid()}")
        listener.on_message = on_message
        listener.on_connect = lambda c, *_: c.subscribe("v1.1/Observations", 1)
        listener.on_subscribe = lambda *_: subscribed.set()
        listener.connect("127.0.0.1", broker.port, keepalive=60)
        listener.loop_start()
        try:
            if not subscribed.wait(10):
                raise RuntimeError("the notification listener did not subscribe")
            # notifications of the sustained phase may still be on their way: measure on a quiet stream
            quiet_since = time.time()
            while time.time() - quiet_since < 300 and time.time() - arrivals[1] < 2.0:
                time.sleep(0.2)
            say(f"  notification backlog of the sustained phase: {arrivals[0]:,} arrived after the drain, "
                f"quiet after {time.time() - quiet_since:.1f}s")
            lpub = Publishers(ctx, children, broker.port, [LATENCY_PUBLISHER], topics, args.latency_seconds,
                              args.window, rate=args.latency_rate, paho=args.paho_publishers)
            say(f"latency: 1 publisher at {args.latency_rate:,.0f} msg/s for {args.latency_seconds:.0f}s, "
                f"listening on v1.1/Observations ...")
            lpub.start()
            lres = lpub.collect()
            wait_until_stable(lambda: len(seen), lres.acked, 120, quiet=5)
        finally:
            listener.loop_stop()
            listener.disconnect()
        lat_ms = [x * 1000 for x in lat]
        p50, p99, mx = pct(lat_ms, 0.5), pct(lat_ms, 0.99), max(lat_ms) if lat_ms else float("nan")
        say(f"  published {lres.acked:,} ({lres.rate:,.0f} msg/s), notifications received {len(seen):,}"
            + (f" (+{notif_dups[0]} repeated)" if notif_dups[0] else "")
            + f": p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {mx:.1f} ms")

        # -- 4. quiet after a bulk write: every notification published and acknowledged by Mosquitto -------------
        bulk = None
        if args.bulk:
            say(f"quiet after bulk: {args.bulk:,} Observations in one CreateObservations, notifications to "
                f"Mosquitto (nobody the platform can know of subscribes) ...")
            bulk = quiet_after_bulk(server, args.bulk)
            say(f"  committed in {bulk[0]:.1f}s; quiet {bulk[1]:.2f}s after the 201: {bulk[2]:,} notifications, "
                f"{bulk[3]:,.0f}/s, {bulk[4]:,} of them through the bridge process's connection (relayed)")

        # -- 5. the table ----------------------------------------------------------------------
        say("")
        say(f"== MQTT ingest benchmark: mosquitto (private, port {broker.port}) → udp serve --workers 1 bridge → "
            f"PostgreSQL; {len(sensors)} sensors, {args.publishers} publishers × window {args.window}, "
            f"QoS 1, {args.duration:.0f}s ==")
        share = window_rate / base_rate if args.baseline_seconds > 0 and base_rate else float("nan")
        report.add(f"sustained ingest ({args.publishers} publishers, stored during the window)",
                   f"{window_rate:,.0f} obs/s",
                   f">= {TARGETS['ingest']:,.0f} obs/s or {TARGETS['ingest_of_ceiling']:.2f} × ceiling",
                   "yes" if window_rate >= TARGETS["ingest"] or share >= TARGETS["ingest_of_ceiling"] else "NO")
        report.add("  end to end (stored / time until drained)", f"{e2e:,.0f} obs/s (drain {drain:.1f}s)")
        if more is not None:
            report.add(f"sustained ingest on {args.nodes} nodes (mqtt.shared, same run)",
                       f"{more['window_rate']:,.0f} obs/s, end to end {more['e2e']:,.0f} "
                       f"({more['window_rate'] / window_rate:.2f}× one node)")
            report.add(f"  lost / duplicated on {args.nodes} nodes", f"{more['lost']:,} / {more['dup']:,}", "0 / 0",
                       "yes" if more["lost"] == more["dup"] == 0 else "NO")
            report.add(f"  CPU on {args.nodes} nodes", fmt_cpu(more["cpu"]))
        report.add("  publish rate achieved (acknowledged by mosquitto)", f"{pub.rate:,.0f} msg/s")
        if args.baseline_seconds > 0:
            report.add("mosquitto QoS 1 ceiling (publishers → broker → paho subscriber)",
                       f"{base_rate:,.0f} msg/s (published {base_pub:,.0f}/s, "
                       f"{base_sent - base_got:,} not received)")
            report.add("  platform / mosquitto ceiling", f"{share:.2f}" if base_rate else "n/a",
                       f">= {TARGETS['ingest_of_ceiling']:.2f}", at_least(share, TARGETS["ingest_of_ceiling"]))
        report.add("messages lost (acknowledged, not stored)", f"{lost:,} of {pub.acked:,}", "0",
                   "yes" if lost == 0 else "NO")
        report.add("messages duplicated (stored twice)", f"{dup:,}", "0", "yes" if dup == 0 else "NO")
        report.add(f"notification latency p99 at {args.latency_rate:,.0f} msg/s",
                   f"p99 {p99:.1f} ms (p50 {p50:.1f}, max {mx:.1f}); {len(seen):,} of {lres.acked:,} received",
                   f"<= {TARGETS['p99_ms']:.0f} ms",
                   "NO" if len(seen) < lres.acked else at_most(p99, TARGETS["p99_ms"]))
        if bulk is not None:
            report.add(f"quiet after a bulk of {args.bulk:,} (CreateObservations), notifications to Mosquitto",
                       f"{bulk[1]:.2f}s after the 201 ({bulk[2]:,} notifications at {bulk[3]:,.0f}/s)",
                       f"<= {TARGETS['quiet_s']:.0f} s", at_most(bulk[1], TARGETS["quiet_s"]))
        report.add("CPU during the sustained window", fmt_cpu(cpu))
        report.print()
        if args.py_spy and spy is not None and Path(args.py_spy).exists():
            say("")
            summarize_pyspy(Path(args.py_spy))
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
        if spy is not None and spy.poll() is None:
            spy.terminate()
            spy.wait(5)
        for p in children:
            if p.is_alive():
                p.terminate()
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        if counter is not None:
            counter.close()
        for other in extra_servers:
            other.stop()
        for other_db in extra_dbs:
            try:
                other_db.drop()
            except Exception as exc:  # noqa: BLE001
                say(f"could not drop the database: {exc}")
        if server is not None:
            say(f"server stopped (exit {server.stop()})")
        if broker is not None:
            broker.close()
        if db is not None:
            try:
                db.drop()
            except Exception as exc:  # noqa: BLE001
                say(f"could not drop the database: {exc}")
        if args.keep_logs or (failed and args.keep_logs):
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say(f"removed {workdir}")


if __name__ == "__main__":
    sys.exit(main())
