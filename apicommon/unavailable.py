"""Database errors as answers: a database that cannot be reached is a 503 with Retry-After, a value the database
cannot evaluate (a NUL byte in a PostgreSQL text) or one past its limits (too large for an index) the client's 400;
both APIs answer alike, never 500."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, OperationalError

# the drivers' words for a connection that is gone or a server that is not (yet) there
_DOWN = ("connection", "server closed", "terminating", "could not connect", "the database system is")


def database_unavailable(exc: DBAPIError) -> bool:
    """True when a database error means the database cannot be reached (a 503), not that the request is wrong."""
    if exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError) and any(w in str(exc.orig).lower() for w in _DOWN)


def client_fault(exc: DBAPIError) -> str | None:
    """The reason to give the client when a database error is the request's fault (a 400), else None."""
    if isinstance(exc, DataError):
        return f"the database cannot evaluate the request: {exc.orig}"
    # PostgreSQL's class 54, a limit of the program: a value too large for an index a department made on a column,
    # a statement too complex. The request's size, not the database's health: a 500 said the server was at fault
    if str(getattr(exc.orig, "sqlstate", "") or "").startswith("54"):
        return f"the request exceeds a limit of the database: {str(exc.orig).strip()}"
    return None
