"""What a call really sends to the database, seen at the driver, below SQLAlchemy.

dualdb's hot path (:mod:`dualdb.hotpath`) runs statements on the driver's connection, where
SQLAlchemy's events do not see them.  This traces the driver itself: SQLite's trace callback
(every statement the library runs, ``BEGIN`` included) and libpq's protocol trace on Postgres
(every ``Query`` and every extended-protocol ``Execute``, with the text it was parsed from).
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Any

from psycopg import pq
from sqlalchemy import event

import dualdb
from dualdb.scope import release_pinned

#: The start of each message of a libpq trace (a statement's text may span lines).
_MESSAGE = re.compile(r"^(?=[FB]\t\d+\t)", re.M)


def _fresh(db: dualdb.Database) -> None:
    """Close every connection of ``db``: the next call opens a traced one."""
    release_pinned(db.engine)
    db.engine.dispose()


def _pg_round_trips(trace: str) -> int:
    """How many times a libpq trace shows the client waiting for the server: each simple
    ``Query`` and each ``Sync`` (which ends a batch of extended-protocol messages)."""
    return sum(
        1
        for message in _MESSAGE.split(trace)
        if message.startswith("F\t") and message.split("\t", 3)[2].strip() in ("Query", "Sync")
    )


def _pg_statements(trace: str) -> list[str]:
    """The statements a libpq protocol trace shows the client sending, in order."""
    parsed: dict[str, str] = {}
    bound = ""
    out: list[str] = []
    for message in _MESSAGE.split(trace):
        parts = message.split("\t", 3)
        if len(parts) < 3 or parts[0] != "F":
            continue
        kind, rest = parts[2].strip(), (parts[3].strip() if len(parts) > 3 else "")
        if kind == "Query":
            out.append(rest[1:-1])
        elif kind == "Parse" and (m := re.match(r'"(.*?)" "(.*)" \d+', rest, re.S)):
            parsed[m[1]] = m[2]
        elif kind == "Bind" and (m := re.match(r'"(.*?)" "(.*?)"', rest, re.S)):
            bound = parsed.get(m[2], "")
        elif kind == "Execute":
            out.append(bound)
    return out


@contextmanager
def pg_round_trips(db: dualdb.Database) -> Iterator[list[int]]:
    """Postgres: the round trips the block makes, as one number in the list (filled at the
    end); the block's statements are traced as by :func:`driver_statements`."""
    counted: list[int] = []
    traces: list[str] = []
    with _traced(db, [], traces):
        yield counted
    counted.append(sum(_pg_round_trips(t) for t in traces))


@contextmanager
def driver_statements(db: dualdb.Database) -> Iterator[list[str]]:
    """Every statement the driver sends inside the block, whitespace folded, 40 characters.

    The list is filled when the block ends.  Connections are reopened around the block (so
    every one the block uses is traced, and none stays traced after it).
    """
    seen: list[str] = []
    traces: list[str] = []
    with _traced(db, seen, traces):
        yield seen
    for trace in traces:
        seen.extend(_pg_statements(trace))
    seen[:] = [" ".join(s.split())[:40] for s in seen]


@contextmanager
def _traced(db: dualdb.Database, seen: list[str], traces: list[str]) -> Iterator[None]:
    """Trace every connection the block opens: SQLite's statements into ``seen``, each
    Postgres connection's protocol trace into ``traces`` (filled when the block ends)."""
    files: list[IO[bytes]] = []

    with ExitStack() as stack:

        def trace(dbapi_conn: Any, _record: Any) -> None:
            if isinstance(dbapi_conn, sqlite3.Connection):
                dbapi_conn.set_trace_callback(seen.append)
                return
            file = stack.enter_context(tempfile.TemporaryFile())
            files.append(file)
            dbapi_conn.pgconn.trace(file.fileno())
            dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

        _fresh(db)
        event.listen(db.engine, "connect", trace)
        try:
            yield
        finally:
            event.remove(db.engine, "connect", trace)
            _fresh(db)
            for file in files:
                file.seek(0)
                traces.append(file.read().decode("utf-8", "replace"))
