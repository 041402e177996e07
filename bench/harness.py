"""The benchmarks' way to the one harness, tests/harness.py: scripts run as `python bench/x.py` have bench/ on
sys.path, not the repository root."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import (  # noqa: E402
    Database,
    Mosquitto,
    Ports,
    PrivatePostgres,
    Process,
    Udp,
    create_pg,
    process_tree,
    say,
    tail,
)

__all__ = ["Database", "Mosquitto", "Ports", "PrivatePostgres", "Process", "Udp", "create_pg", "process_tree", "say",
           "tail"]
