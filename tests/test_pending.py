"""sensorthings.pending.Pending: settled once by one thread, waited for or called back in others, as the write paths
use concurrent.futures.Future."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from sensorthings.pending import Pending


def test_a_waiter_gets_the_value_another_thread_sets() -> None:
    pending: Pending[int] = Pending()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(pending.result(5)))
    waiter.start()
    time.sleep(0.05)
    assert not pending.done() and got == []
    pending.set_result(7)
    waiter.join(5)
    assert got == [7] and pending.done() and pending.exception() is None


def test_callbacks_run_once_in_the_settling_thread_or_at_once() -> None:
    pending: Pending[str] = Pending()
    calls: list[tuple[str, str]] = []
    pending.add_done_callback(lambda p: calls.append(("before", p.result())))
    settler = threading.Thread(target=pending.set_result, args=("x",), name="settler")
    pending.add_done_callback(lambda _p: calls.append(("thread", threading.current_thread().name)))
    settler.start()
    settler.join(5)
    assert calls == [("before", "x"), ("thread", "settler")]
    pending.add_done_callback(lambda p: calls.append(("after", p.result())))  # settled: called now, here
    assert calls[-1] == ("after", "x") and len(calls) == 3


def test_an_error_is_raised_to_waiters_and_told_to_callbacks() -> None:
    pending: Pending[int] = Pending()
    seen: list[BaseException | None] = []
    pending.add_done_callback(lambda p: seen.append(p.exception()))
    error = ValueError("refused")
    pending.set_exception(error)
    assert seen == [error]
    with pytest.raises(ValueError, match="refused"):
        pending.result()
    assert pending.exception() is error


def test_waiting_too_long_is_a_timeout_and_settling_twice_an_error() -> None:
    pending: Pending[int] = Pending()
    with pytest.raises(TimeoutError):
        pending.result(0.05)
    with pytest.raises(TimeoutError):
        pending.exception(0.05)
    pending.set_result(1)
    with pytest.raises(RuntimeError):
        pending.set_result(2)
    assert pending.result() == 1
    assert Pending.of(3).result(0) == 3


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    pending: Pending[int] = Pending()
    ran: list[int] = []
    pending.add_done_callback(lambda _p: 1 / 0)
    pending.add_done_callback(lambda p: ran.append(p.result()))
    with caplog.at_level(logging.ERROR, logger="udp.sensorthings"):
        pending.set_result(4)
    assert ran == [4]
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)


def test_many_threads_settling_and_waiting_lose_nothing() -> None:
    pendings: list[Pending[int]] = [Pending() for _ in range(2_000)]
    called = [0]
    lock = threading.Lock()

    def count(_p: Pending[int]) -> None:
        with lock:
            called[0] += 1

    def settle(part: int) -> None:
        for i in range(part, len(pendings), 4):
            pendings[i].set_result(i)

    def watch(part: int) -> None:
        for i in range(part, len(pendings), 4):
            pendings[i].add_done_callback(count)

    threads = [threading.Thread(target=f, args=(k,)) for k in range(4) for f in (settle, watch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert called[0] == len(pendings)
    assert [p.result(0) for p in pendings] == list(range(len(pendings)))
