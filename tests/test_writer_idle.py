"""Reads wait for the group-commit writer without polling (sensorthings/store/group_commit.py `when_idle`): a
callback waiting for the writer runs once nothing is queued or being written, at once when it is idle now; and a
submission the database refuses in a shared transaction fails alone. The writer is held busy for real: another
connection holds SQLite's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from sensorthings.service import Service
from sensorthings.store.base import Store
from sensorthings.store.observations import ObservationRow
from sensorthings.times import parse_instant
from tests.test_observation_writes import placed_stream
from tests.test_read_cache import NEWEST


@dataclass
class Held:
    store: Store
    ds: int
    blocker: sqlite3.Connection  # BEGIN IMMEDIATE on it holds the writer's next transaction back


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    path = tmp_path / "idle.db"
    store = Store.open(f"sqlite:///{path}")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        yield Held(store, placed_stream(Service(store), "OM_Measurement"), blocker)
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


def row(ds: int, minute: int) -> ObservationRow:
    return ObservationRow.of(float(minute), phenomenon_time_start=parse_instant(f"2026-03-01T00:{minute:02d}Z"),
                             datastream_id=ds)


def test_a_reader_waiting_for_the_writer_is_called_once_it_is_idle_and_not_before(held: Held) -> None:
    writer = held.store.writer
    called: list[str] = []
    writer.when_idle(lambda: called.append("idle now"))
    assert called == ["idle now"]

    held.blocker.execute("BEGIN IMMEDIATE")  # the write lock: the writer's next transaction waits for it
    first = writer.submit([row(held.ds, 0)])
    woken = threading.Event()
    writer.when_idle(lambda: (called.append("after the write"), woken.set()))
    second = writer.submit([row(held.ds, 1)])
    assert not woken.wait(0.5)  # still writing
    assert not first.done() and not writer.idle.is_set()
    held.blocker.execute("COMMIT")
    assert woken.wait(30)
    # called only once nothing was queued: both writes committed before it
    assert first.done() and second.done()
    assert first.result().ids[0] is not None and second.result().ids[0] is not None
    assert called == ["idle now", "after the write"]


def test_a_failing_waiter_does_not_stop_the_writer(held: Held) -> None:
    writer = held.store.writer
    held.blocker.execute("BEGIN IMMEDIATE")
    pending = writer.submit([row(held.ds, 0)])

    def gone() -> None:
        raise RuntimeError("event loop closed")

    writer.when_idle(gone)
    held.blocker.execute("COMMIT")
    assert pending.result(30).ids[0] is not None
    assert writer.write([row(held.ds, 1)]).ids[0] is not None


def test_reads_on_the_event_loop_wait_for_the_writer_with_one_callback_however_long_it_is_busy(
        held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads computed on the event loop wait (at most YIELD_S each time) for a busy writer through one shared future
    and one callback at the writer, not one per read or per wait: a writer held for a while by another connection's
    lock, reads arriving all along; all answered, and nothing left at the writer once it is idle."""
    import asyncio

    import httpx
    from starlette.applications import Starlette

    from sensorthings import service as service_module
    from sensorthings.cache import ResponseCache
    from sensorthings.http.app import sensorthings_routes
    from sensorthings.store import version_watch

    monkeypatch.setattr(service_module, "INLINE_CPU_S", 1.0)  # every answer cheap enough for the event loop
    service = Service(held.store, cache=ResponseCache(max_entry=1))  # no answer kept: each read is computed
    writer = held.store.writer

    async def scenario() -> None:
        watch = version_watch.watch(held.store.url)
        app = Starlette(routes=sensorthings_routes(service, versions=watch))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://udp.local") as client:
            assert (await client.get("/v1.1/Observations", params=NEWEST)).status_code == 200  # its cost noted
            held.blocker.execute("BEGIN IMMEDIATE")
            post = asyncio.create_task(client.post("/v1.1/Observations", json={
                "result": 7, "phenomenonTime": "2026-03-01T00:07Z", "Datastream": {"@iot.id": held.ds}}))
            for _ in range(100):
                if not writer.idle.is_set():
                    break
                await asyncio.sleep(0.01)
            assert not writer.idle.is_set()
            answers = []
            for _ in range(6):  # several of YIELD_S's rounds, reads arriving in each
                answers += await asyncio.gather(*(client.get("/v1.1/Observations", params=NEWEST)
                                                  for _ in range(5)))
                assert len(writer._when_idle) == 1
            assert all(a.status_code == 200 for a in answers)
            held.blocker.execute("COMMIT")
            assert (await post).status_code == 201
            got = await client.get("/v1.1/Observations", params=NEWEST)
            assert got.json()["value"][0]["result"] == 7
            assert writer._when_idle == []
        await watch.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_reads_wait_for_the_posts_in_flight_before_them_at_most_posts_first_s(held: Held) -> None:
    """A GET, even one the response cache answers, waits for the answers of the POSTed Observations its worker had
    in flight when it came (the POST's turns on the event loop before the reads'), but no longer than
    POSTS_FIRST_S: with the writer held back by another connection's lock, the read is answered after that bound;
    once the POST is answered, reads wait for nothing."""
    import asyncio

    import httpx
    from starlette.applications import Starlette

    from sensorthings.cache import ResponseCache
    from sensorthings.http.app import POSTS_FIRST_S, sensorthings_routes
    from sensorthings.store import version_watch

    service = Service(held.store, cache=ResponseCache())

    async def timed_get(client: httpx.AsyncClient) -> float:
        began = time.perf_counter()
        assert (await client.get("/v1.1/Observations", params=NEWEST)).status_code == 200
        return time.perf_counter() - began

    async def scenario() -> None:
        watch = version_watch.watch(held.store.url)
        app = Starlette(routes=sensorthings_routes(service, versions=watch))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://udp.local") as client:
            await timed_get(client)  # in the cache now
            quiet = min([await timed_get(client) for _ in range(5)])
            held.blocker.execute("BEGIN IMMEDIATE")
            post = asyncio.create_task(client.post("/v1.1/Observations", json={
                "result": 7, "phenomenonTime": "2026-03-01T00:07Z", "Datastream": {"@iot.id": held.ds}}))
            for _ in range(100):
                if not held.store.writer.idle.is_set():
                    break
                await asyncio.sleep(0.01)
            waited = [await timed_get(client) for _ in range(3)]
            assert all(POSTS_FIRST_S <= w < POSTS_FIRST_S + 0.5 for w in waited), (quiet, waited)
            held.blocker.execute("COMMIT")
            assert (await post).status_code == 201
            got = await client.get("/v1.1/Observations", params=NEWEST)
            assert got.json()["value"][0]["result"] == 7
            after = min([await timed_get(client) for _ in range(5)])
            assert after < POSTS_FIRST_S, (quiet, after)
        await watch.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_submission_the_database_refuses_in_a_shared_write_fails_alone(held: Held) -> None:
    """Submissions queued together share a transaction; when the database refuses one (here a row without its
    result's kind, which the schema does not allow), each is written again alone: the refused one fails, the others
    are stored with the ids and columns they report. Their rows were prepared by the submitting threads, and the
    failed write had filled them in already."""
    writer = held.store.writer
    held.blocker.execute("BEGIN IMMEDIATE")
    first = writer.submit([row(held.ds, 0)])  # taken by the writer, which waits for the lock
    for _ in range(100):
        if writer.queue.empty():
            break
        time.sleep(0.01)
    bad = ObservationRow(None, 5.0, phenomenon_time_start=parse_instant("2026-03-01T00:05Z"),  # type: ignore[arg-type]
                         datastream_id=held.ds)
    refused = writer.submit([bad])
    good = writer.submit([row(held.ds, 1), row(held.ds, 2)])
    assert writer.queue.qsize() == 2  # queued behind the first: the next transaction takes both
    held.blocker.execute("COMMIT")
    assert first.result(30).ids[0] is not None
    with pytest.raises(IntegrityError):
        refused.result(30)
    written = good.result(30)
    assert len(set(written.ids)) == 2 and None not in written.ids
    assert [r["id"] for r in written.rows] == written.ids  # type: ignore[index]
    with held.store.read() as conn:
        stored = dict(conn.execute(text("SELECT id, result_number FROM observations WHERE datastream_id = :ds"),
                                   {"ds": held.ds}).all())
    assert stored == {first.result().ids[0]: 0.0, written.ids[0]: 1.0, written.ids[1]: 2.0}
    assert all(r["feature_of_interest_id"] is not None for r in written.rows)  # type: ignore[index]
