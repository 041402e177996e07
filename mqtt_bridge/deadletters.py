"""The bridge's own tables: dead letters (what could not be mapped, with why) and the fingerprints of
committed messages that let a redelivered message be recognised."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from sensorthings.store.base import Store
from sensorthings.store.schema import ID, UtcDateTime

metadata = MetaData()

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("redriven_at", UtcDateTime()),
    Column("attempts", Integer, nullable=False, default=0),
)

# QoS 1 means at least once: a message committed but not yet acknowledged comes again after a
# crash or reconnect (flagged DUP); its fingerprint says it is already stored. Only the newest
# fingerprints are kept (see forget_old).
seen_messages = Table(
    "bridge_seen_messages", metadata,
    Column("fingerprint", String(40), primary_key=True),
    Column("at", UtcDateTime(), nullable=False, index=True),
)

# fingerprints kept at least: a redelivery is of a message committed but not acknowledged when the
# connection or the process was lost, which the broker sends first when the session resumes, so it is
# never more than what the writer queues and writes at once (5,000 messages by default) behind the newest
KEEP_SEEN = 100_000


def create_tables(store: Store) -> None:
    """Create the bridge's tables if they are missing."""
    metadata.create_all(store.engine)


def fingerprint(topic: str, payload: bytes) -> str:
    """What identifies a message across redeliveries."""
    return hashlib.sha1(topic.encode() + b"\0" + payload).hexdigest()


def already_seen(conn: Connection, prints: list[str]) -> set[str]:
    """Which of these fingerprints belong to messages already committed."""
    if not prints:
        return set()
    return set(conn.execute(select(seen_messages.c.fingerprint).where(seen_messages.c.fingerprint.in_(prints)))
               .scalars())


def remember(conn: Connection, prints: list[str], at: datetime) -> None:
    """Record committed messages' fingerprints (in the same transaction as their Observations)."""
    if not prints:
        return
    # one statement over one array, not a statement per fingerprint (an executemany of a batch's 1,000 cost the
    # bridge more than the COPY of its Observations); those already there (a message sent twice) are skipped
    conn.execute(_REMEMBER[conn.dialect.name], {"prints": _ARRAY[conn.dialect.name](sorted(set(prints))), "at": at})


def _remember_statement(dialect: str) -> Any:
    at = bindparam("at", type_=UtcDateTime())
    if dialect == "postgresql":
        source = select(func.unnest(cast(bindparam("prints"), ARRAY(Text))), at)
        return pg_insert(seen_messages).from_select(["fingerprint", "at"], source).on_conflict_do_nothing()
    each = func.json_each(bindparam("prints")).table_valued("value")
    # WHERE: SQLite reads `SELECT … FROM t ON CONFLICT` as a join's ON without it
    source = select(each.c.value, at).where(true())
    return sqlite_insert(seen_messages).from_select(["fingerprint", "at"], source).on_conflict_do_nothing()


_REMEMBER = {dialect: _remember_statement(dialect) for dialect in ("postgresql", "sqlite")}
_ARRAY: dict[str, Callable[[list[str]], Any]] = {"postgresql": list, "sqlite": lambda p: orjson.dumps(p).decode()}


def forget_old(conn: Connection, keep: int = KEEP_SEEN) -> int:
    """Drop the fingerprints of all but about the newest `keep` messages (a batch shares its time, and
    is kept or dropped whole); how many were dropped. Counted, not timed: a bridge that was down for a
    week still recognises the redeliveries it meets when it comes back."""
    cutoff = conn.execute(select(seen_messages.c.at).order_by(seen_messages.c.at.desc())
                          .offset(keep).limit(1)).scalar()
    if cutoff is None:
        return 0
    return conn.execute(delete(seen_messages).where(seen_messages.c.at < cutoff)).rowcount


def add(conn: Connection, items: list[tuple[str, bytes, str, datetime]]) -> None:
    """Store dead letters: (topic, payload, reason, received_at)."""
    if items:
        conn.execute(dead_letters.insert(), [{"topic": t, "payload": p, "reason": r, "received_at": at, "attempts": 0}
                                             for t, p, r, at in items])


def count(store: Store) -> int:
    """Dead letters not re-driven yet."""
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(dead_letters)
                            .where(dead_letters.c.redriven_at.is_(None))).scalar_one()


def pending(store: Store, limit: int = 1000) -> list[dict[str, Any]]:
    """Dead letters not re-driven yet, oldest first."""
    with store.read() as conn:
        rows = conn.execute(select(dead_letters).where(dead_letters.c.redriven_at.is_(None))
                            .order_by(dead_letters.c.id).limit(limit)).mappings().all()
    return [dict(r) for r in rows]
