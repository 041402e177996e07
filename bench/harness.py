"""The benchmarks' way to the one harness, tests/harness.py: scripts run as `python bench/x.py` have bench/ on
sys.path, not the repository root."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import (  # noqa: E402
    ROOT,
    Database,
    Mosquitto,
    Ports,
    Process,
    Udp,
    create_pg,
    free_port,
    process_tree,
    say,
    stop_process,
    tail,
    wait_healthy,
    wait_http,
    wait_port,
    wait_until,
)

__all__ = ["ROOT", "Database", "Mosquitto", "Ports", "Process", "Udp", "create_pg", "free_port", "process_tree", "say",
           "stop_process", "tail", "wait_healthy", "wait_http", "wait_port", "wait_until"]
