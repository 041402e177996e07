"""The primary's log position that replica reads wait for (sensorthings/store/replicas.py `_Shared`): read once
for the reads that arrive together, and never from a reading that began before a read arrived."""

from __future__ import annotations

import threading
import time

from sensorthings.store.replicas import _Shared


def test_concurrent_reads_share_readings_that_begin_after_they_arrive() -> None:
    begun = 0
    lock = threading.Lock()

    def fetch() -> int:
        nonlocal begun
        with lock:
            begun += 1
            mine = begun
        time.sleep(0.005)  # a round trip to the primary
        return mine

    shared = _Shared(fetch)
    problems: list[str] = []

    def reader() -> None:
        for _ in range(50):
            with lock:
                before = begun  # readings begun before this call: none of them may answer it
            got = shared.get()
            if got is None or got <= before:
                problems.append(f"got reading {got} though {before} had begun before the call")

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert shared.readings == begun
    assert begun < 16 * 50 / 3, f"{begun} readings for {16 * 50} reads: not shared"


def test_a_failed_reading_is_not_handed_on() -> None:
    calls = []

    def fetch() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the connection broke")
        return 7

    shared = _Shared(fetch)
    try:
        shared.get()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the first reading's failure must reach its caller")
    assert shared.get() == 7 and len(calls) == 2
