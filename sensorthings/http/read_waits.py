"""Where a worker's GETs spent their time on the way to an answer: the waits and computations `/health` shows.

Under devices' writes the answers every write changes are computed again and again, and a GET waits on the event
loop: for the tables' versions (a round trip on PostgreSQL), for the POSTs its worker has in flight and for the
writer (devices' writes first), for a computation under way, or for its own. Which of these a read's time went to
was a question each investigation answered with a patched server (2026-12-07: PostgreSQL's newest 100 under 300
POSTs/s waited 1.9-3.8 ms a request for the versions, and in the worker taking most POSTs 3.4 ms for them and 3.7
for the writer). The totals here answer it on any running server: two readings of `/health` a few seconds apart,
their difference divided by the GETs between them (bench/sta_http.py --live prints it so).
"""

from __future__ import annotations

import time

WAITS = ("versions", "posts", "writer", "joined", "inline", "thread")


class ReadWaits:
    """This worker's totals since it started: the GETs (`gets`), and for each kind of wait the GETs that waited so
    (`<kind>`) and the seconds they waited in all (`<kind>_s`). `versions`: reading the tables' versions on the event
    loop; `posts`: this worker's POSTs in flight (`POSTS_FIRST_S`); `writer`: the writer to be idle before a
    computation; `joined`: another request's computation under way; `inline`: computing the answer on the event loop;
    `thread`: answering in a thread (a miss not computed inline, no versions, or no response cache)."""

    def __init__(self) -> None:
        self.gets = 0
        self._counts = dict.fromkeys(WAITS, 0)
        self._seconds = dict.fromkeys(WAITS, 0.0)

    def add(self, kind: str, since: float) -> float:
        """Count a wait of `kind` that began at `since` (`time.perf_counter()`); the time now, for the next one.
        The event loop's thread alone calls this: no lock."""
        now = time.perf_counter()
        self._counts[kind] += 1
        self._seconds[kind] += now - since
        return now

    def stats(self) -> dict[str, int | float]:
        """The totals for `/health`, seconds to the microsecond."""
        out: dict[str, int | float] = {"gets": self.gets}
        for kind in WAITS:
            out[kind] = self._counts[kind]
            out[f"{kind}_s"] = round(self._seconds[kind], 6)
        return out
