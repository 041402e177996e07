"""A least-recently-used map bounded by the size of what it holds, for the caches of answers both APIs keep."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SizedLRU(Generic[V]):
    """Values by key; once their sizes pass `max_bytes`, the least recently used go first. Thread-safe."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, valid: Callable[[V], bool] | None = None) -> V | None:
        """The value for `key` (None without one, or when `valid` says it no longer holds), now the most recent."""
        with self._lock:
            value = self._items.get(key)
            if value is None or (valid is not None and not valid(value)):
                return None
            self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        """Keep a value (replacing the key's), dropping the least recently used past the budget."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._items[key] = value
            self._bytes += self._size(value)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= self._size(dropped)

    def stats(self) -> tuple[int, int]:
        """How many values and how many bytes it holds."""
        with self._lock:
            return len(self._items), self._bytes
