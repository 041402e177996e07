"""A long-lived process's collector (apicommon/heap.py): after start-up, a process whose long-lived objects keep
growing (a backlog of notifications, messages in flight) runs full collections rarely, not every few thousand
allocations."""

from __future__ import annotations

import subprocess
import sys

GROW = """
import gc, sys
from apicommon.heap import freeze_startup
if sys.argv[1] == "platform":
    freeze_startup()
else:
    gc.collect()
    gc.freeze()
kept = []
before = gc.get_stats()[2]["collections"]
for i in range(1_000_000):
    kept.append([i])  # lives long, as a backlog does (a list: the collector tracks it)
    junk = [[j] for j in range(3)]  # dies young
print(gc.get_stats()[2]["collections"] - before)
"""


def _full_collections(how: str) -> int:
    out = subprocess.run([sys.executable, "-c", GROW, how], capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout)


def test_a_growing_heap_is_not_walked_whole_every_few_thousand_allocations() -> None:
    assert _full_collections("cpython") >= 3  # CPython's own thresholds: the cost this avoids
    assert _full_collections("platform") <= 1
