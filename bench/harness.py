"""What the benchmark scripts share: free ports, printing as they go, throwaway PostgreSQL databases."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(*args: object) -> None:
    """Print at once (benchmarks run for minutes)."""
    print(*args, flush=True)


@dataclass
class Database:
    """A store URL and how to get rid of it."""

    url: str
    drop: Callable[[], None]


def create_pg(admin: str, prefix: str = "udp_bench") -> Database:
    """A fresh PostgreSQL database next to `admin`'s, dropped by `drop()`."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rpartition("/")[0]

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        say(f"dropped database {name}")

    return Database(f"{base}/{name}", drop)


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    """Until `url`/health answers 200; the server's log when it exits or never answers."""
    import httpx

    def log() -> str:
        try:
            return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    deadline = time.time() + timeout
    with httpx.Client(timeout=5) as client:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log()}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout}s:\n{log()}")


def process_tree(root: int) -> list[int]:
    """A process and all its descendants (a serve process's workers and bridge)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
