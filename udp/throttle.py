"""Failed sign-ins counted per client address and per user name, so that guessing passwords (or burning the
server's CPU with PBKDF2 runs) stops after a few tries, without letting an attacker lock devices out.

The rules (the README's Access control section says the same):
- `max_failures` wrong passwords from one client address within `lockout_s` seconds lock that address out of
  signing in for `lockout_s` seconds, whatever user name it tries (Retry-After says how long).
- `max_failures` wrong passwords for one user name within `lockout_s` seconds, from addresses that have not
  signed in as that user before, lock the name for `lockout_s` seconds — but only against such new addresses:
  an address where the user signed in successfully within the last day (a device, the office) keeps signing
  in, held only by its own per-address counter. So guessing a name's password from many addresses stops
  after `max_failures` tries per window, while the name's own devices are not locked out by someone else's
  failures (OWASP's "device cookie" idea, keyed by address).
- A lock refuses before any password is checked, even one verified a moment ago (else a right guess would
  show through the lock): a locked-out guess costs no PBKDF2 run. Outside a lock a password verified within
  the last minutes passes without one (see `Authenticator`).

The counts live in the process (each HTTP worker and the broker's process have their own), bounded in size.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

KNOWN_CLIENT_S = 86_400.0  # how long a successful sign-in exempts its address from the user name's lock
CAPACITY = 100_000  # entries per table: beyond, the oldest are forgotten (the memory an attacker can fill)


@dataclass
class _Count:
    failures: int
    since: float
    locked_until: float = 0.0


@dataclass(frozen=True)
class Attempt:
    """A sign-in being checked, counted as failed until `SignInThrottle.succeeded` says otherwise."""

    client: str
    user: str | None
    counted_user: bool


class Throttled(Exception):
    """Too many failed sign-ins: try again after `retry_after` seconds."""

    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = max(1, math.ceil(retry_after))


class SignInThrottle:
    """Counts failed sign-ins per client address and per user name, and says when to refuse."""

    def __init__(self, max_failures: int = 10, lockout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._clients: dict[str, _Count] = {}
        self._users: dict[str, _Count] = {}
        self._known: dict[tuple[str, str], float] = {}  # (user, client) → until when the client is known
        self._lock = threading.Lock()

    def check(self, client: str, user: str | None) -> None:
        """Raise Throttled when `client` may not sign in now (as `user`; None: no such user)."""
        with self._lock:
            self._check(client, user, self.clock())

    def attempt(self, client: str, user: str | None) -> Attempt:
        """Start checking a password from `client` for `user` (None: no such user), or raise Throttled.

        The attempt counts as a failure from the start, so that many attempts at once cannot all pass
        the check before the first of them fails."""
        now = self.clock()
        with self._lock:
            counted_user = self._check(client, user, now)
            if counted_user:
                self._count(self._users, user, now)  # type: ignore[arg-type]
            self._count(self._clients, client, now)
            return Attempt(client, user, counted_user)

    def _check(self, client: str, user: str | None, now: float) -> bool:
        """Raise Throttled, or say whether the user name's count applies (the client is new to it)."""
        count = self._clients.get(client)
        if count is not None and count.locked_until > now:
            raise Throttled(count.locked_until - now, f"too many failed sign-ins from {client}")
        if user is None or self._known.get((user, client), 0.0) > now:
            return False
        count = self._users.get(user)
        if count is not None and count.locked_until > now:
            raise Throttled(count.locked_until - now, f"too many failed sign-ins as {user}")
        return True

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: take back the attempt's count, and remember the client for the user."""
        with self._lock:
            self._uncount(self._clients, attempt.client)
            if attempt.user is None:
                return
            if attempt.counted_user:
                self._uncount(self._users, attempt.user)
            key = (attempt.user, attempt.client)
            self._known.pop(key, None)  # re-inserted last: the oldest are forgotten first
            self._known[key] = self.clock() + KNOWN_CLIENT_S
            _bound(self._known)

    def _count(self, table: dict[str, _Count], key: str, now: float) -> None:
        count = table.get(key)
        if count is None or (now - count.since > self.lockout_s and count.locked_until <= now):
            table.pop(key, None)  # re-inserted last: the oldest are forgotten first
            count = table[key] = _Count(0, now)
            _bound(table)
        count.failures += 1
        if count.failures >= self.max_failures:
            count.locked_until = now + self.lockout_s

    def _uncount(self, table: dict[str, _Count], key: str) -> None:
        count = table.get(key)
        if count is not None and count.failures > 0:
            count.failures -= 1
            if count.failures < self.max_failures:
                count.locked_until = 0.0


def _bound(table: dict) -> None:
    """Forget the oldest entries of a table over CAPACITY (dicts keep insertion order)."""
    while len(table) > CAPACITY:
        del table[next(iter(table))]
