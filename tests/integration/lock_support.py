"""Seeing that a racing connection waits for a lock, per backend (not a test module).

A race test holds a lock in one transaction (the holder), starts a racer that needs it, and must
not release the lock before the racer waits for it: released too early, the two run one after
the other and the test proves nothing about the lock.  A sleep only hopes the racer got there;
:meth:`LockWatch.until_blocked` looks, with a deadline:

* Postgres: ``pg_stat_activity`` shows a backend waiting on a lock (``wait_event_type =
  'Lock'``) that ``pg_blocking_pids`` says the holder's backend holds.
* SQLite: one write lock for the whole file, which the holder has, as its transaction has
  written (dualdb takes it up front with ``BEGIN IMMEDIATE``).  The racer's connection reports
  its statements (``set_trace_callback`` fires when a statement starts, before SQLite waits
  for the lock); once the last one it started needs the write lock — its own ``BEGIN
  IMMEDIATE``, or a write statement that is its own transaction (dualdb's one-statement
  writes), which takes the lock before it reads — it is waiting for the holder, and a probe
  connection that may not wait (``timeout=0``) confirms the write lock is taken.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import dualdb

#: A statement that waits for SQLite's write lock as it starts.
_NEEDS_THE_WRITE_LOCK = re.compile(
    r"\s*(BEGIN IMMEDIATE|INSERT|UPDATE|DELETE|REPLACE|WITH\b.*\b(INSERT|UPDATE|DELETE)\b)",
    re.S | re.I,
)
#: How long a racer may take to reach the lock before the test gives up.
DEADLINE_S = 30.0
#: How often the watch looks again while the racer is on its way.
POLL_S = 0.005


class LockWatch:
    """Watches a racer that uses its own :class:`dualdb.Database` (``racer_db``).

    Create it before the racer's first call, so its statements are seen on SQLite.
    """

    def __init__(self, racer_db: dualdb.Database) -> None:
        self.backend = racer_db.backend
        self.url = racer_db.engine.url
        self.statements: list[str] = []
        if self.backend == "sqlite":
            sa.event.listen(racer_db.engine, "checkout", self._trace)

    def _trace(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_trace_callback(self.statements.append)

    def until_blocked(self, racer: threading.Thread, holder: sa.Connection) -> None:
        """Return once ``racer`` waits for a lock that ``holder``'s open transaction holds;
        fail if the racer finishes first (it never waited) or the deadline passes."""
        if self.backend == "postgresql":
            holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            url = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(url, autocommit=True) as watcher:
                self._poll(racer, lambda: self._pg_blocked(watcher, holder_pid))
        else:
            self._poll(racer, self._sqlite_blocked)

    def _poll(self, racer: threading.Thread, blocked: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not blocked():
            seen = f" (its statements: {self.statements})" if self.backend == "sqlite" else ""
            if not racer.is_alive():
                pytest.fail(
                    "the racer finished without waiting for the holder's lock, so the lock "
                    f"does not serialise them{seen}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the racer was not seen waiting for the holder's lock{seen}")
            time.sleep(POLL_S)

    @staticmethod
    def _pg_blocked(watcher: psycopg.Connection[Any], holder_pid: int) -> bool:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND %s = ANY (pg_blocking_pids(pid))",
            [holder_pid],
        ).fetchone()
        return row is not None and row[0] > 0

    def _sqlite_blocked(self) -> bool:
        seen = list(self.statements)
        if not seen or not _NEEDS_THE_WRITE_LOCK.match(seen[-1]):
            return False  # not at the lock yet (or, if it got past it, the poll ends at is_alive)
        probe = sqlite3.connect(self.url.database or "", timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            assert "locked" in str(err), err
            return True
        else:
            probe.execute("ROLLBACK")
            return False
        finally:
            probe.close()
