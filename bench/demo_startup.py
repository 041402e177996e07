"""Demo start-up: `udp demo` from cold (no demo store: the city is built) and warm (the store is reused).

    python bench/demo_startup.py [--runs 2]

Each run starts `udp demo` on free ports with its own XDG_CACHE_HOME, times until /health answers 200
and until the first live Observation notification arrives over MQTT, then stops it. The first run of
a cache directory is cold, the next ones warm. It prints the figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from harness import Udp, say  # bench/ is the script's own directory


def start(cache: Path) -> tuple[float, float | None]:
    """Seconds until /health answers, and until the first live notification (None if none in 60 s)."""
    demo = Udp("demo", "--speed", "60", log=cache / "demo.log", env={"XDG_CACHE_HOME": str(cache)})
    try:
        demo.wait(300)
        ready = time.perf_counter() - demo.started
        got: queue.Queue = queue.Queue()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-demo-{demo.port}")
        client.on_connect = lambda c, *_: c.subscribe("v1.1/Observations", 0)
        client.on_message = lambda *_: got.put(time.perf_counter())
        client.connect("127.0.0.1", demo.mqtt_port)  # type: ignore[arg-type]
        client.loop_start()
        try:
            live: float | None = got.get(timeout=60) - demo.started
        except queue.Empty:
            live = None
        client.loop_stop()
        return ready, live
    finally:
        demo.stop(20)


def main() -> None:
    """Cold then warm starts; prints seconds to serving and to the first live notification."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="cold + warm pairs (default 2)")
    args = ap.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    for i in range(args.runs):
        cache = Path(tempfile.mkdtemp(prefix="udp-bench-demo-"))
        try:
            ready, live = start(cache)
            cold.append(ready)
            say(f"run {i + 1} cold: serving after {ready:.1f} s, first live notification after "
                f"{'none' if live is None else f'{live:.1f} s'}")
            ready, live = start(cache)
            warm.append(ready)
            say(f"run {i + 1} warm: serving after {ready:.1f} s, first live notification after "
                f"{'none' if live is None else f'{live:.1f} s'}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    say(f"\ncold start (build the demo city, then serve): median {statistics.median(cold):.1f} s "
        f"(target ≤ 20 s: {'yes' if statistics.median(cold) <= 20 else 'NO'})")
    say(f"warm start (reuse the demo store): median {statistics.median(warm):.1f} s")


if __name__ == "__main__":
    main()
