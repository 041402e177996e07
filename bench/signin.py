"""Sign-in cost: requests/s through `udp serve` with auth: anonymous, Basic with the right password on every
request, a flood of wrong passwords from one client, and anonymous reads while that flood runs.

    python bench/signin.py [--duration 5] [--root PATH]

`--root` runs the platform from another checkout (e.g. `git archive <commit> | tar -x -C /tmp/before`) to
compare before and after. The users' passwords are hashed with the default PBKDF2 cost, as in production.
Needs `wrk` (Debian package).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import free_port, say, wait_healthy  # noqa: E402
from udp.auth import hash_password  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def wrk(url: str, seconds: int, headers: dict[str, str]) -> tuple[float, str]:
    """Requests/s and the status line summary of a wrk run (2 threads, 16 connections)."""
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, f"{errors.group(1)} non-2xx" if errors else "all 2xx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run the platform from")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="udp-bench-signin-"))
    (tmp / "config.yml").write_text(f"""title: Sign-in bench
auth:
  users:
    - name: device
      password: "{hash_password('device-password')}"
      roles: [write]
""", encoding="utf-8")
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(args.root)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp / "config.yml"),
                                 "--store", f"sqlite:///{tmp / 'udp.db'}", "--port", str(port),
                                 "--mqtt-port", str(free_port()), "--mqtt-ws-port", str(free_port())],
                                cwd=args.root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        say(f"platform from {args.root}, 1 worker, PBKDF2-SHA256 600,000 rounds; wrk -t2 -c16 -d{args.duration}s")
        right = "Basic " + base64.b64encode(b"device:device-password").decode()
        wrong = "Basic " + base64.b64encode(b"device:guess").decode()
        target = f"{url}/v1.1"
        for label, headers in (("anonymous GET /v1.1", {}),
                               ("Basic, right password, every request", {"Authorization": right}),
                               ("Basic, wrong password, one client", {"Authorization": wrong})):
            rate, statuses = wrk(target, args.duration, headers)
            say(f"  {label:<44} {rate:>9.1f} req/s  ({statuses})")
        # the flood again, beside someone reading: does it take the server from the others?
        flood = threading.Thread(target=wrk, args=(target, args.duration + 2,
                                                   {"Authorization": wrong, "X-Forwarded-For": "10.9.9.9"}))
        flood.start()
        rate, statuses = wrk(target, args.duration, {"X-Forwarded-For": "10.1.1.1"})
        flood.join()
        say(f"  {'anonymous GET during a wrong-password flood':<44} {rate:>9.1f} req/s  ({statuses})")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
