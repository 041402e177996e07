"""Reads with and without a streaming replica (`store.replicas`), in one run: a private PostgreSQL primary and a
replica made from it by pg_basebackup (tests/harness.py's PrivatePostgres, on free ports), the STA bench's data
(--things Things with 3 Datastreams each, --observations Observations through CreateObservations), then
`udp serve --workers 2` with the response cache off on the primary alone and on the primary with the replica,
and wrk on the four reference reads against each. It prints req/s for both and their ratio. Both servers run on
this machine's cores beside both PostgreSQL clusters: the figure says what the replica costs per read (the
primary's log position, the wait for the replay), not what a second machine adds.

    python bench/replicas.py [--observations 100000] [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
import yaml
from harness import PrivatePostgres, say
from sta_http import LIVE_READS, Server, dataarray_bodies, encode, ingest, load_things, run_wrk


def serve(primary: PrivatePostgres, replica: PrivatePostgres | None, work: Path) -> Server:
    """The platform on the primary, reading from the replica when given; the response cache off."""
    store: str | dict = primary.url() if replica is None else {"url": primary.url(), "replicas": [replica.url()]}
    config = work / ("replica.yml" if replica else "primary.yml")
    config.write_text(yaml.safe_dump({"title": "replica bench", "store": store, "server": {"response_cache_mb": 0}}))
    server = Server(primary.url(), 2, work, extra=("--config", str(config), "--no-seed"))
    server.wait(120)
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--things", type=int, default=100)
    ap.add_argument("--observations", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="udp-bench-replicas-"))
    primary = PrivatePostgres()
    replica = None
    rows: dict[str, dict[str, float]] = {}
    try:
        replica = PrivatePostgres(primary)
        say(f"primary on {primary.port}, replica on {replica.port}")
        server = serve(primary, None, work)
        sta = f"{server.url}/v1.1"
        with httpx.Client(timeout=120) as client:
            ds_ids = load_things(client, sta, args.things, 3)
        rows_in, seconds, errors = ingest(sta, dataarray_bodies(ds_ids, args.observations), 2)
        say(f"loaded {rows_in:,} Observations in {seconds:.1f}s ({errors} errors)")
        for label, with_replica in (("primary alone", False), ("with the replica", True)):
            if with_replica:
                server.stop()
                server = serve(primary, replica, work)
            base = f"{server.url}/v1.1"
            for _key, title, path in LIVE_READS:
                url = encode(base + path.format(ds=ds_ids[len(ds_ids) // 2]))
                run_wrk(server, url, 2, 2, args.connections)  # warm-up
                res = run_wrk(server, url, args.duration, 2, args.connections)
                rows.setdefault(title, {})[label] = res.rps
                say(f"  {label}: {title}: {res.rps:,.0f} req/s (p50 {res.p50_ms:.1f} ms)")
            health = httpx.get(f"{server.url}/health", timeout=30).json()["store"]
            say(f"  {label}: /health store {health}")
        server.stop()
    finally:
        if replica is not None:
            replica.close()
        primary.close()
    say(f"\n== reads, response cache off, udp serve --workers 2, wrk {args.connections} connections, "
        f"{args.observations:,} Observations ==")
    say(f"{'read':<50}{'primary alone':>16}{'with replica':>16}{'ratio':>8}")
    for title, got in rows.items():
        a, b = got.get("primary alone", float("nan")), got.get("with the replica", float("nan"))
        say(f"{title:<50}{a:>16,.0f}{b:>16,.0f}{b / a if a else float('nan'):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
