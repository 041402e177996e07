"""SQLite writers take turns by a file lock beside the database (sensorthings.store.sqlite_turns), across
processes: held from BEGIN to the connection's return to the pool, waited for, and given up on as SQLite would."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sensorthings.store import sqlite_turns
from sensorthings.store.base import Store


def lock_is_free(path: Path) -> bool:
    """Whether another open file (as another process would have) can take the lock now."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_write_holds_the_turn_from_begin_to_its_end_and_reads_never_take_it(tmp_path: Path) -> None:
    db = tmp_path / "turns.db"
    store = Store.open(f"sqlite:///{db}")
    lock = Path(f"{db}-write.lock")
    try:
        with store.write() as (conn, _changes):
            conn.exec_driver_sql("SELECT 1")
            assert not lock_is_free(lock)
        assert lock_is_free(lock)
        with store.read() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM things").scalar()
            assert lock_is_free(lock)
        # a failed write lets go too
        with pytest.raises(RuntimeError), store.write() as (conn, _changes):
            raise RuntimeError("refused")
        assert lock_is_free(lock)
    finally:
        store.close()


def test_a_writer_waits_for_another_process_and_goes_on_when_it_lets_go(tmp_path: Path) -> None:
    db = tmp_path / "turns.db"
    store = Store.open(f"sqlite:///{db}")
    lock = Path(f"{db}-write.lock")
    # another process holds the turn until told to let go
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.readline()
        os.close(fd)
        print("released", flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        assert store.write_turns is not None
        before = store.write_turns.stats()
        events: list[str] = []
        done = threading.Event()

        def write() -> None:
            with store.write() as (conn, _changes):
                events.append("writing")
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS turn_probe (x integer)")
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.3)  # it waits for its turn
        assert events == []
        events.append("let go")
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        writer.join(10)
        assert done.is_set() and events == ["let go", "writing"]
        # /health's `ingest.write_turns`: the turn counted, with the wait for the other process in it
        after = store.write_turns.stats()
        assert after["turns"] == before["turns"] + 1
        assert after["waited_ms"] - before["waited_ms"] >= 300
        assert after["held_ms"] > before["held_ms"] and after["longest_held_ms"] > 0
    finally:
        holder.kill()
        holder.wait()
        store.close()


def test_a_writer_that_never_gets_its_turn_gives_up_as_sqlite_would(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "turns.db"
    store = Store.open(f"sqlite:///{db}")
    monkeypatch.setattr(sqlite_turns, "WAIT_S", 0.2)
    fd = os.open(f"{db}-write.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"), store.write():
            pass
        os.close(fd)
        fd = -1
        with store.write() as (conn, _changes):  # the connection that gave up writes once the turn is free
            conn.exec_driver_sql("SELECT 1")
    finally:
        if fd >= 0:
            os.close(fd)
        store.close()


def test_a_store_opened_while_another_writes_a_new_file_waits_for_wal(tmp_path: Path) -> None:
    # a new file is in rollback-journal mode until a connection turns it to WAL, which takes its exclusive lock;
    # while another connection holds the write lock SQLite refuses that at once ("database is locked"), without the
    # busy handler: two nodes starting on a new file, one ended at start-up in CI
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE early (x)")
    committed = threading.Event()

    def commit_later() -> None:
        other.execute("COMMIT")
        committed.set()

    timer = threading.Timer(1.0, commit_later)
    timer.start()
    try:
        store = Store.open(f"sqlite:///{path}")
        try:
            assert committed.is_set()  # it waited for the other writer, then took the file
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            store.close()
    finally:
        timer.join()
        other.close()
