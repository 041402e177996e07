"""SensorThings times: ISO 8601 instants and `start/end` intervals in any offset, kept in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_instant(text: str) -> datetime:
    """An aware UTC datetime from ISO 8601 text; naive text is taken as UTC."""
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 time string, got {type(text).__name__}")
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first instant Python holds
        raise ValueError(f"time out of range: {text!r}") from None


def parse_interval(text: str) -> tuple[datetime, datetime]:
    """(start, end) from `start/end`; a single instant gives a zero-length interval."""
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 interval string, got {type(text).__name__}")
    start, sep, end = text.partition("/")
    first = parse_instant(start)
    last = parse_instant(end) if sep else first
    if last < first:
        raise ValueError(f"interval ends before it starts: {text!r}")
    return first, last


def parse_time_or_interval(text: str) -> tuple[datetime, datetime | None]:
    """(start, end) for an interval, (instant, None) for an instant."""
    if isinstance(text, str) and "/" in text:
        return parse_interval(text)
    return parse_instant(text), None


def format_instant(value: datetime | str) -> str:
    """ISO 8601 in UTC with a `Z`, fractional seconds only as far as they are not zero.

    `2015-03-03T00:00:00Z` comes back as it was sent, `…00.5Z` as `…00.5Z`, as FROST-Server and
    istSOS4 write them (and PostgreSQL, whose text form of a timestamp drops trailing zeros too).
    The store keeps microseconds; a client that sent `…00.500Z` gets the same instant as `…00.5Z`.
    """
    if isinstance(value, str):  # written so by the database already (PostgresDialect.instant_text)
        return value
    zone = value.tzinfo
    if zone is not UTC and zone is not None and value.utcoffset():  # UTC itself, the common case, asks nothing
        value = value.astimezone(UTC)
    # isoformat() (in C) cut to its first 19 or 26 characters: a third faster than formatting the fields here, on
    # the path that writes every Observation's times
    text = value.isoformat()
    if value.microsecond:
        return text[:26].rstrip("0") + "Z"
    return text[:19] + "Z"


def format_time(start: datetime | str | None, end: datetime | str | None) -> str | None:
    """An instant, or `start/end` when `end` is given."""
    if start is None:
        return None
    if end is None:
        return format_instant(start)
    return f"{format_instant(start)}/{format_instant(end)}"


def stored_utc(value: datetime) -> datetime:
    """A time read from a store as aware UTC (a SQLite text column may give it back without a zone)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
