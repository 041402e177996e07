"""A process's SIGTERM and SIGINT as a `threading.Event`, without the deadlock a plain handler can fall into.

Python runs a signal handler in the main thread between two bytecodes, so also inside the handler itself when a
second signal comes (a parent's terminate() and the parent-death signal arrive together), and `Event.set` holds a
lock that is not reentrant: a second `set` inside the first waits for itself forever (an orphaned `udp seed` was
found so, hours after its server had gone). The handler here ignores further signals before it sets the event.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def stop_on_signals(stop: threading.Event) -> None:
    """Set `stop` on the first SIGTERM or SIGINT; later ones are ignored (call from the main thread)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
