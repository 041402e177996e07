"""A database that cannot be reached: both APIs answer 503 with Retry-After, never 500."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError

# the drivers' words for a connection that is gone or a server that is not (yet) there
_DOWN = ("connection", "server closed", "terminating", "could not connect", "the database system is")


def database_unavailable(exc: DBAPIError) -> bool:
    """True when a database error means the database cannot be reached (a 503), not that the request is wrong."""
    if exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and any(w in str(exc.orig).lower() for w in _DOWN)
