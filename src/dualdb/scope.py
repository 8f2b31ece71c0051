"""Where repository statements run: one transaction per call, or inside a session.

A :class:`Scope` hands out connections.  Without a fixed connection each outermost call gets
its own transaction (``BEGIN IMMEDIATE`` on SQLite for writes, a deferred ``BEGIN`` for reads);
calls nested inside it reuse that transaction.  Inside a :class:`~dualdb.database.Session`
every write call runs in a SAVEPOINT, so a call that fails leaves no partial write and the
session stays usable — identically on SQLite and Postgres (where an error would otherwise
abort the whole transaction).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from dualdb.backends import READ_ONLY, Backend, TransactionHook, backend_of
from dualdb.engine import translated_errors

__all__ = ["Scope", "TransactionHook"]


class Scope:
    """Connections for repositories, plus who is acting (``user_id``; None is unscoped)."""

    def __init__(
        self,
        engine: sa.Engine,
        connection: sa.Connection | None = None,
        *,
        user_id: uuid.UUID | None = None,
        on_begin: TransactionHook | None = None,
    ) -> None:
        self.engine = engine
        self.user_id = user_id
        #: What differs between SQLite and Postgres (:mod:`dualdb.backends`).
        self.backend: Backend = backend_of(engine)
        self._connection = connection
        #: Run at the start of every transaction this scope opens (not inside a session).
        self.on_begin = on_begin
        self._local = threading.local()

    def bound_to(self, connection: sa.Connection) -> Scope:
        """The same actor, inside ``connection``'s transaction (a session)."""
        return Scope(self.engine, connection, user_id=self.user_id)

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A connection for a call that may write; its changes are all-or-nothing."""
        with translated_errors():
            if self._connection is not None:
                with self._connection.begin_nested():
                    yield self._connection
                return
            if (current := self._current()) is not None:
                yield current
                return
            with self.engine.begin() as conn:
                yield from self._enter(conn)

    @contextmanager
    def read(self, *, single_statement: bool = False) -> Iterator[sa.Connection]:
        """A connection for a call that only reads.

        Outside a session it is a read-only transaction of its own (a deferred ``BEGIN`` on
        SQLite: no write lock), and the repository calls made inside the block, in the same
        thread, run in it too — so a caller can group several reads and queries of its own::

            with db.scope.read() as conn:
                task = db.tasks.get(task_id)
                conn.execute(...)

        ``single_statement``: the call runs one ``SELECT``, so outside a session it needs no
        transaction at all (unless the scope sets the actor per transaction).
        """
        with translated_errors():
            if (current := self._connection or self._current()) is not None:
                yield current
                return
            with self.engine.connect() as raw:
                if single_statement and self.on_begin is None:
                    yield raw.execution_options(**self.backend.autocommit_read_options())
                    return
                conn = raw.execution_options(**{READ_ONLY: True})
                with conn.begin():
                    yield from self._enter(conn)

    def _current(self) -> sa.Connection | None:
        """The transaction of the call this one is nested in (this thread), if any."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        return conn

    def _enter(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        self._local.conn = conn
        try:
            if self.on_begin is not None:
                self.on_begin(conn)
            yield conn
        finally:
            self._local.conn = None
