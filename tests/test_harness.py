"""The test and bench harness itself: ports a process needs at once are distinct and held until it starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import Ports, Process, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_reserved_ports_are_distinct_and_held_until_released() -> None:
    ports = Ports(3)
    assert len(set(ports)) == 3
    assert not any(_bindable(p) for p in ports)  # nothing else can take them meanwhile
    assert ports.release() == list(ports)
    assert all(_bindable(p) for p in ports)  # free for the process that starts now


def test_no_port_is_handed_out_twice() -> None:
    seen = [free_port() for _ in range(200)] + [p for _ in range(50) for p in Ports(2).release()]
    assert len(seen) == len(set(seen))


def test_a_process_that_exits_before_it_answers_is_reported(tmp_path: Path) -> None:
    proc = Process(["sh", "-c", "echo the reason; exit 3"], tmp_path / "log")
    with pytest.raises(RuntimeError, match="(?s)exited \\(3\\).*the reason"):
        proc.wait_http("http://127.0.0.1:9/", timeout=10)
