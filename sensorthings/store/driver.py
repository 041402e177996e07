"""Statements run on the driver's own connection (COPY, many rows to a statement, a pipeline), their errors raised as
SQLAlchemy raises every other statement's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError


@contextmanager
def driver(conn: Connection, statement: str) -> Iterator[Any]:
    """The driver's connection under `conn`. A driver error within is raised as SQLAlchemy's (IntegrityError for a row
    the database refuses, OperationalError for a database gone), which is what callers tell apart: the writer retries
    a batch row by row, the bridge looks its Datastreams up again, HTTP answers 409 or 503 instead of 500."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield conn.connection.driver_connection
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from exc
