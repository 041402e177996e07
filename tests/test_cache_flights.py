"""The response cache's computations in flight (sensorthings.cache.Flight), with real threads.

Requests for an answer being computed share the computation when its answer is fresh for them: the one still
gathering (it reads at the newest versions they had read, and reads the data after), or one reading at the very
versions they saw. A request that saw newer versions never takes an older computation's answer; it starts its own
at once, beside the older one, instead of queueing behind it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sensorthings.cache import Entry, ResponseCache, newest

KEY = ("Observations", (("$top", "100"),))


def entry(cache: ResponseCache, versions: dict[str, int], body: bytes) -> Entry:
    return cache.put(KEY, tuple(sorted(versions.items())), 200, body, {})


def test_a_crowd_gathered_before_the_computation_reads_takes_its_answer() -> None:
    cache = ResponseCache()
    flight, leads = cache.board(KEY, {"observations": 1}, ())
    assert leads
    # three more arrive with the same or newer versions while the leader has not begun reading
    followers = [cache.board(KEY, {"observations": v}, ()) for v in (3, 1, 2)]
    assert all(f is flight and not lead for f, lead in followers)
    # some joined: the leader reads at the newest versions they had read, not its own older ones
    assert cache.depart(flight) == {"observations": 3}
    cache.read_at(flight, {"observations": 3}, ())
    made = entry(cache, {"observations": 3}, b"at 3")
    cache.land(flight, made)
    assert flight.future.result(1) is made
    assert cache.stats()["shared"] == 3
    assert cache.get(KEY, {"observations": 3}) is made
    assert cache.get(KEY, {"observations": 4}) is None


def test_a_request_that_saw_newer_versions_starts_its_own_computation_beside_the_older() -> None:
    cache = ResponseCache()
    first, _ = cache.board(KEY, {"observations": 1}, ())
    assert cache.depart(first) is None  # nobody joined: it reads at the leader's own versions
    cache.read_at(first, {"observations": 1}, ())
    # a write committed; a request that saw it may not take the first computation's answer
    second, leads = cache.board(KEY, {"observations": 2}, ())
    assert leads and second is not first
    # one that saw the versions the first reads at takes the first's
    same, leads = cache.board(KEY, {"observations": 1}, ())
    assert same is first and not leads
    # a request for the same key with other row keys read beside the tables still matches on its own ones
    assert cache.join(KEY, {"observations": 1, "observations@d9": 4}, ()) is first
    cache.land(first, None)  # an answer not kept: those who joined compute their own
    assert first.future.result(1) is None
    assert not second.future.done()
    cache.land(second, entry(cache, {"observations": 2}, b"at 2"))


def test_the_newest_versions_are_taken_key_by_key() -> None:
    """Requests joining one computation read the versions at different moments, each with its own row keys: the
    leader reads at the newest of each key, so that its answer is fresh for every one of them."""
    cache = ResponseCache()
    flight, _ = cache.board(KEY, {"observations": 5, "things": 2}, ())
    cache.join(KEY, {"observations": 7, "things": 2, "observations@d1": 3}, ())
    cache.join(KEY, {"observations": 6, "things": 4, "observations@d2": 1}, ())
    seen = cache.depart(flight)
    assert seen == {"observations": 7, "things": 4, "observations@d1": 3, "observations@d2": 1}
    assert newest(seen, {"observations": 5, "things": 2}) == seen
    cache.land(flight, None)


def test_row_keys_tell_computations_apart() -> None:
    cache = ResponseCache()
    rows = ("datastreams@7", "observations@d7")
    first, _ = cache.board(KEY, {"observations": 5, "observations@d7": 1}, rows)
    cache.depart(first)
    cache.read_at(first, {"observations": 5, "observations@d7": 1}, rows)
    assert cache.join(KEY, {"observations": 5, "observations@d7": 1}, rows) is first
    assert cache.join(KEY, {"observations": 5, "observations@d7": 2}, rows) is None
    cache.land(first, None)


def test_under_constant_writes_computations_overlap_and_every_answer_is_fresh() -> None:
    """Threads asking while a counter (the data) keeps rising: each answer was read at versions at least as new
    as those its request saw, and computations ran side by side (none waits for an older one to end)."""
    cache = ResponseCache()
    data = [0]
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            data[0] += 1
            stop.wait(0.0005)

    def compute(at: int) -> Entry:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            stop.wait(0.005)  # a query's round trip: the GIL is free meanwhile
            return entry(cache, {"observations": at}, str(at).encode())
        finally:
            with lock:
                running[0] -= 1

    def ask(_: int) -> None:
        now = {"observations": data[0]}
        found = cache.get(KEY, now)
        if found is None:
            flight, leads = cache.board(KEY, now, ())
            if leads:
                at = newest(cache.depart(flight), now)["observations"]
                cache.read_at(flight, {"observations": at}, ())
                found = None
                try:
                    found = compute(at)
                finally:
                    cache.land(flight, found)
            else:
                found = flight.future.result(5)
        assert found is not None
        assert int(found.body) >= now["observations"]

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, range(2000)))
    finally:
        stop.set()
        thread.join()
    stats = cache.stats()
    assert running[1] > 1  # computations overlapped
    assert stats["shared"] > 0  # and were shared


def test_at_most_overlap_computations_of_one_answer_run_at_once_and_others_gather_meanwhile() -> None:
    """A leader waits for its turn before it departs: at most `overlap` computations of a key run together, and
    the requests arriving while it waits join its flight (one computation for all of them)."""
    cache = ResponseCache(overlap=2)
    running = [0, 0]
    lock = threading.Lock()
    release = threading.Event()

    def lead(now: int) -> None:
        flight, leads = cache.board(KEY, {"observations": now}, ())
        assert leads
        with cache.turn(KEY):
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            cache.depart(flight)
            cache.read_at(flight, {"observations": now}, ())
            release.wait(5)
            with lock:
                running[0] -= 1
            cache.land(flight, entry(cache, {"observations": now}, str(now).encode()))

    first = [threading.Thread(target=lead, args=(v,)) for v in (1, 2)]
    for t in first:
        t.start()
    for _ in range(100):  # both hold a turn
        with lock:
            if running[0] == 2:
                break
        threading.Event().wait(0.01)
    third = threading.Thread(target=lead, args=(3,))
    third.start()
    for _ in range(100):  # the third is gathering: waiting for a turn, not departed
        if KEY in cache._gathering:
            break
        threading.Event().wait(0.01)
    joined, leads = cache.board(KEY, {"observations": 3}, ())
    assert not leads
    with lock:
        assert running[0] == 2
    release.set()
    for t in [*first, third]:
        t.join(5)
    assert running[1] == 2
    assert joined.future.result(5) is not None and joined.future.result().body == b"3"


def test_the_etag_follows_the_versions_and_the_body() -> None:
    cache = ResponseCache()
    at_1 = entry(cache, {"observations": 1}, b'{"value": [1]}').etag
    assert entry(cache, {"observations": 1}, b'{"value": [1]}').etag == at_1  # the same answer: the same tag
    assert entry(cache, {"observations": 2}, b'{"value": [1]}').etag != at_1  # written since, the same text
    assert entry(cache, {"observations": 1}, b'{"value": [2]}').etag != at_1  # another body at the same versions
    assert at_1.startswith('"') and at_1.endswith('"')
