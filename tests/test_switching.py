"""Every long-lived process sets how often its threads take turns at the interpreter lock, spawned ones too."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from apicommon.switching import SWITCH_INTERVAL_S


def _worker_interval(store: str) -> tuple[float, float]:
    # what a uvicorn worker is: a spawned interpreter that builds the app and runs its lifespan
    from tests.harness import start_in_process, stop_server

    before = sys.getswitchinterval()
    server = start_in_process(store, "sqlite")
    try:
        assert server.client.get("/v1.1/Things").status_code == 200
        return before, sys.getswitchinterval()
    finally:
        stop_server(server)


def test_a_spawned_worker_switches_often(tmp_path: Path) -> None:
    """A spawned interpreter starts at CPython's 5 ms; the app's start-up brings it to SWITCH_INTERVAL_S."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        before, after = pool.apply(_worker_interval, (f"sqlite:///{tmp_path / 'w.db'}",))
    assert before == 0.005  # what `udp serve` set in its own process did not reach this one
    assert after == SWITCH_INTERVAL_S
