"""Timing OGC API Features requests for the features benchmarks: a server process and its memory, the requests
(checked warm-up, then timed runs from client threads), their p50/p99 and the tables they are printed in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import Process, say

HEADERS = {"Accept": "application/geo+json"}
PAGE = 1000


def status_mb(pid: int, field: str = "VmHWM") -> float:
    """A memory figure of a process in MB (VmHWM: its peak resident set size, VmRSS: now); nan when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


class Server:
    """A server process (its own process group, its log in a file) and where its OGC API is."""

    def __init__(self, process: Process, port: int, base: str) -> None:
        self.process, self.name, self.proc, self.log_path = process, process.name, process.proc, process.log_path
        self.url = f"http://127.0.0.1:{port}"
        self.base = self.url + base  # where the OGC API Features landing page is
        self.startup = float("nan")
        self.check = float("nan")  # seconds of the `udp check` before it started (the platform)
        say(f"{self.name}: {' '.join(process.cmd)} (pid {process.pid}, log {process.log_path})")

    def ready(self, url: str, timeout: float) -> None:
        """Until `url` answers 200; note the time from start to ready."""
        self.process.wait_http(url, timeout)
        self.startup = time.perf_counter() - self.process.started
        say(f"{self.name}: ready after {self.startup:.1f}s")

    def peak_rss(self) -> tuple[float, float, int]:
        """VmHWM of the main process and summed over its process tree (MB), and the tree's size."""
        pids = self.process.tree()
        peaks = [status_mb(p) for p in pids]
        return peaks[0], sum(x for x in peaks if x == x), len(pids)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 15 s."""
        say(f"{self.name} stopped (exit {self.process.stop()})")


@dataclass
class Query:
    """One kind of request, the same for every collection."""

    key: str
    label: str
    path: str  # below /collections/{id}
    params: dict[str, str]
    expected: int | None  # numberMatched in the dataset (None: a single Feature)
    check: Callable[[dict[str, Any]], str]  # what is wrong with a response's features ("": nothing)


@dataclass
class Result:
    """What one query measured on one server and collection."""

    status: str = ""  # "ok", or what went wrong
    returned: int | None = None
    matched: int | None = None
    estimated: bool = False  # `matched` is the server's numberMatchedEstimate (a large unfiltered table)
    size: int = 0
    problems: str = ""
    lat_ms: list[float] = field(default_factory=list)
    failed: int = 0
    first_error: str = ""
    seconds: float = 0.0

    @property
    def p50(self) -> float:
        """Median latency in ms."""
        return pct(self.lat_ms, 0.5)

    @property
    def p99(self) -> float:
        """99th percentile latency in ms."""
        return pct(self.lat_ms, 0.99)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank); nan without values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def features_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The features of a FeatureCollection, or the one Feature."""
    if doc.get("type") == "Feature":
        return [doc]
    return list(doc.get("features") or [])


def fetch(client: httpx.Client, url: str, params: dict[str, str]) -> tuple[float, httpx.Response]:
    """One GET, timed (ms) until the body is read."""
    t = time.perf_counter()
    r = client.get(url, params=params, headers=HEADERS)
    return (time.perf_counter() - t) * 1000, r


def describe_error(r: httpx.Response) -> str:
    """A short description of a failed response (the OGC exception's description when there is one)."""
    try:
        doc = r.json()
        text = doc.get("description") or doc.get("detail") or doc.get("message") or r.text
    except (ValueError, AttributeError):
        text = r.text
    return f"{r.status_code} {' '.join(str(text).split())[:200]}"


def run_query(url: str, params: dict[str, str], query: Query, requests: int, clients: int,
              timeout: float) -> Result:
    """A warm-up request (checked in full), then `requests` timed requests from `clients` threads."""
    res = Result()
    with httpx.Client(timeout=timeout) as client:
        try:
            _, r = fetch(client, url, params)
        except httpx.HTTPError as exc:
            res.status = f"{type(exc).__name__}: {exc}"
            return res
        if r.status_code != 200:
            res.status = describe_error(r)
            return res
        try:
            doc = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            res.status = f"200 but not JSON ({r.headers.get('content-type')}): {r.text[:120]!r}"
            return res
        res.status, res.size = "ok", len(r.content)
        res.returned = len(features_of(doc))
        res.matched = doc.get("numberMatched") if doc.get("type") != "Feature" else None
        if res.matched is None and "numberMatchedEstimate" in doc:
            res.matched, res.estimated = doc["numberMatchedEstimate"], True
        problems = [query.check(doc)]
        if query.expected is not None and res.estimated:
            if abs(res.matched - query.expected) > query.expected / 10:
                problems.append(f"numberMatchedEstimate {res.matched}, the dataset has {query.expected:,}")
        elif query.expected is not None and res.matched != query.expected:
            problems.append(f"numberMatched {res.matched}, the dataset has {query.expected:,}")
        limit = int(params.get("limit", PAGE))
        want = 1 if query.expected is None else min(limit, max(0, query.expected - int(params.get("offset", 0))))
        if res.returned != want:
            problems.append(f"{res.returned} features returned, expected {want}")
        res.problems = "; ".join(p for p in problems if p)

    lock = threading.Lock()
    todo = [requests]
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(timeout=timeout) as c:
            while not stop.is_set():
                with lock:
                    if todo[0] <= 0:
                        return
                    todo[0] -= 1
                try:
                    ms, resp = fetch(c, url, params)
                    if resp.status_code != 200:
                        err = describe_error(resp)
                    else:
                        got = len(features_of(orjson.loads(resp.content)))
                        err = "" if got == res.returned else f"{got} features, the warm-up had {res.returned}"
                except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
                    ms, err = float("nan"), f"{type(exc).__name__}: {exc}"
                with lock:
                    if err:
                        res.failed += 1
                        res.first_error = res.first_error or err
                    else:
                        res.lat_ms.append(ms)

    threads = [threading.Thread(target=worker, daemon=True, name=f"client-{i}") for i in range(max(1, clients))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        stop.set()
    res.seconds = time.perf_counter() - started
    return res


def fmt_ms(v: float) -> str:
    """Milliseconds for the table."""
    if v != v:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def line_for(server: str, coll: str, query: Query, res: Result, clients: int) -> str:
    """One progress line."""
    head = f"  {server:5} {coll:14} {query.label:34}"
    if res.status != "ok":
        return f"{head} FAILED: {res.status}"
    done = len(res.lat_ms)
    rate = done / res.seconds if res.seconds else float("nan")
    plural = "" if res.returned == 1 else "s"
    number = matched_text(res)
    text = (f"{head} {res.returned:>5} feature{plural}, numberMatched {number}, "
            f"{res.size / 1024:,.0f} KiB: p50 {fmt_ms(res.p50)} ms, p99 {fmt_ms(res.p99)} ms "
            f"({done} requests, {clients} client{'s' if clients > 1 else ''}, {rate:,.1f} req/s)")
    if res.failed:
        text += f"; {res.failed} FAILED, e.g. {res.first_error}"
    if res.problems:
        text += f"; CHECK: {res.problems}"
    return text


def print_table(rows: list[list[str]], head: list[str]) -> None:
    """Columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    say(line)
    say("-" * len(line))
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def matched_text(res: Result | None) -> str:
    """numberMatched of a result as printed: `~` before an estimate, `-` when there is none."""
    if res is None or res.status != "ok" or res.matched is None:
        return "-"
    return f"{'~' * res.estimated}{res.matched:,}"
