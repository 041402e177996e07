"""SQLite: committed writes reach the database file from a thread of the writing process
(sensorthings/store/sqlite_checkpoints.py), not only when the WAL fills up to the automatic checkpoint; the thread
starts with the first write (opening the store writes its schema's versions) and ends with the store."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.sqlite_checkpoints import checkpointer_of
from tests.harness import wait_until


def _in_file_alone(db: Path, tmp_path: Path, name: str) -> int:
    """The Things named `name` in the database file read without its WAL."""
    copy = tmp_path / "file-alone.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM things WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def test_a_commit_reaches_the_database_file_long_before_the_wal_fills(tmp_path: Path) -> None:
    db = tmp_path / "city.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        service = Service(store)
        checkpointer = checkpointer_of(store.engine)
        assert checkpointer is not None
        service.call("POST", "Things", {"name": "in the file", "description": "a few pages of WAL"})
        assert (tmp_path / "city.db-wal").stat().st_size > 0
        wait_until(lambda: checkpointer.runs >= 1, 10, "a checkpoint", every=0.01)
        # thousands of pages below the automatic checkpoint, and the Thing is in the file already
        assert _in_file_alone(db, tmp_path, "in the file") == 1
        assert checkpointer.running
    finally:
        store.close()
    assert not checkpointer.running


def test_a_store_writing_again_after_its_engine_was_disposed_checkpoints_again(tmp_path: Path) -> None:
    db = tmp_path / "city.db"
    store = Store.open(f"sqlite:///{db}")
    try:
        service = Service(store)
        service.call("POST", "Things", {"name": "first", "description": "d"})
        checkpointer = checkpointer_of(store.engine)
        assert checkpointer is not None and checkpointer.running
        store.engine.dispose()  # the thread ends with it
        assert not checkpointer.running
        runs = checkpointer.runs
        service.call("POST", "Things", {"name": "second", "description": "d"})
        assert checkpointer.running
        wait_until(lambda: checkpointer.runs > runs, 10, "a checkpoint after the write", every=0.01)
        assert _in_file_alone(db, tmp_path, "second") == 1
    finally:
        store.close()
