"""What a request's headers say, parsed at the edge: how stale an answer the client takes."""

from __future__ import annotations

import math

import pytest

from apicommon.request import max_stale


@pytest.mark.parametrize(("header", "seconds"), [
    ("", None),
    ("max-stale=5", 5.0),
    ("Max-Stale = 30", 30.0),
    ('max-stale="7"', 7.0),
    ("max-age=0, max-stale=2", 2.0),
    ("max-stale", math.inf),
    ("max-stale=", math.inf),
    ("no-cache, max-stale=60", None),
    ("max-stale=60, no-cache", None),
    ("max-stale=-1", None),
    ("max-stale=1.5", None),
    ("max-stale=soon", None),
    ("max-stale=٣", None),  # a digit, but not an ASCII one
    ("no-store", None),
])
def test_max_stale(header: str, seconds: float | None) -> None:
    """RFC 9111 5.2.1.2: delta-seconds or no value (any age); no-cache wins; anything else is no opt-in."""
    assert max_stale(header) == seconds
