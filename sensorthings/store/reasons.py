"""A database failure in the database's own words, one line, as the platform's messages and logs show it."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError


def reason(exc: DBAPIError) -> str:
    """The first line of the driver's message (SQLAlchemy's own text when there is none)."""
    text = str(exc.orig).strip() if exc.orig is not None else ""
    return text.splitlines()[0] if text else str(exc).strip().splitlines()[0]
