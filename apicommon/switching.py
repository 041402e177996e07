"""How often a process's threads take turns at the interpreter lock."""

from __future__ import annotations

import sys

# CPython's default, 5 ms, is how long a thread back from a database or broker round trip can wait for the lock
# while another thread computes; the platform's processes hand work between threads on every request and message
SWITCH_INTERVAL_S = 0.0005


def switch_often() -> None:
    """Let a thread that waits for the interpreter lock have it within SWITCH_INTERVAL_S. Each process sets this
    itself: a process started by spawning (uvicorn's workers, the bridge) begins with CPython's default."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
