"""Reads wait for the group-commit writer without polling (sensorthings/store/group_commit.py `when_idle`): a
callback waiting for the writer runs once nothing is queued or being written, at once when it is idle now. The
writer is held busy for real: another connection holds SQLite's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from sensorthings.times import parse_instant
from tests.test_observation_writes import placed_stream


def test_a_reader_waiting_for_the_writer_is_called_once_it_is_idle_and_not_before(tmp_path: Path) -> None:
    path = tmp_path / "idle.db"
    store = Store.open(f"sqlite:///{path}")
    service = Service(store)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        ds = placed_stream(service, "OM_Measurement")
        writer = store.writer
        called: list[str] = []
        writer.when_idle(lambda: called.append("idle now"))
        assert called == ["idle now"]

        blocker.execute("BEGIN IMMEDIATE")  # the write lock: the writer's next transaction waits for it
        row = ObservationRow.of(1.0, phenomenon_time_start=parse_instant("2026-03-01T00:00Z"), datastream_id=ds)
        first = writer.submit([row])
        woken = threading.Event()
        writer.when_idle(lambda: (called.append("after the write"), woken.set()))
        second = writer.submit([ObservationRow.of(2.0, phenomenon_time_start=parse_instant("2026-03-01T00:01Z"),
                                                  datastream_id=ds)])
        assert not woken.wait(0.5)  # still writing
        assert not first.done() and not writer.idle.is_set()
        blocker.execute("COMMIT")
        assert woken.wait(30)
        # called only once nothing was queued: both writes committed before it
        assert first.done() and second.done()
        assert first.result().ids[0] is not None and second.result().ids[0] is not None
        assert called == ["idle now", "after the write"]
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


def test_a_failing_waiter_does_not_stop_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "fail.db"
    store = Store.open(f"sqlite:///{path}")
    service = Service(store)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        ds = placed_stream(service, "OM_Measurement")
        blocker.execute("BEGIN IMMEDIATE")
        pending = store.writer.submit([ObservationRow.of(
            1.0, phenomenon_time_start=parse_instant("2026-03-01T00:00Z"), datastream_id=ds)])

        def gone() -> None:
            raise RuntimeError("event loop closed")

        store.writer.when_idle(gone)
        blocker.execute("COMMIT")
        assert pending.result(30).ids[0] is not None
        deadline = time.monotonic() + 10
        while not store.writer.idle.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        later = store.writer.write([ObservationRow.of(
            2.0, phenomenon_time_start=parse_instant("2026-03-01T00:01Z"), datastream_id=ds)])
        assert later.ids[0] is not None
    finally:
        blocker.close()
        store.close()
