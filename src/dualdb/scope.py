"""Where repository statements run: one transaction per call, or inside a session.

A :class:`Scope` hands out connections.  Without a fixed connection each outermost call gets
its own transaction (``BEGIN IMMEDIATE`` on SQLite for writes, a deferred ``BEGIN`` for reads);
calls nested inside it reuse that transaction.  A pooled connection the server dropped is
replaced where that is safe: at the start of a transaction, before anything was written, and
for a one-statement read (:meth:`Scope.fetch`) — never in the middle of a write.  Inside a
:class:`~dualdb.database.Session` every write call runs in a SAVEPOINT, so a call that fails
leaves no partial write and the session stays usable — identically on SQLite and Postgres
(where an error would otherwise abort the whole transaction).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc

from dualdb.backends import READ_ONLY, Backend, TransactionHook, backend_of
from dualdb.engine import translated_errors

__all__ = ["Scope", "TransactionHook"]

T = TypeVar("T")

#: Tries at the start of a transaction (or of a one-statement read) when the connection
#: turns out dead: the first, and one on a fresh connection.
_ATTEMPTS = 2


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
        """A connection for a call that may write; its changes are all-or-nothing.

        Outside a session, a connection found dead at ``BEGIN`` (or while the scope sets its
        actor, before the call's first statement) is replaced once; a connection lost later
        in the transaction raises :class:`~dualdb.errors.DatabaseUnavailable` and nothing of
        the transaction remains — a write is never silently retried.
        """
        with translated_errors():
            if self._connection is not None:
                with self._connection.begin_nested():
                    yield self._connection
                return
            if (current := self._current()) is not None:
                yield current
                return
            with self._transaction({}) as conn:
                yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for a call that only reads.

        Outside a session it is a read-only transaction of its own (a deferred ``BEGIN`` on
        SQLite: no write lock), and the repository calls made inside the block, in the same
        thread, run in it too — so a caller can group several reads and queries of its own::

            with db.scope.read() as conn:
                task = db.tasks.get(task_id)
                conn.execute(...)

        A call that reads with one statement uses :meth:`fetch` instead.
        """
        with translated_errors():
            if (current := self._connection or self._current()) is not None:
                yield current
                return
            with self._transaction({READ_ONLY: True}) as conn:
                yield conn

    def fetch(self, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work``: one ``SELECT`` and the fetching of its rows, nothing else.

        Outside a session it needs no transaction at all (unless the scope sets the actor per
        transaction), and since it only reads, a pooled connection the server dropped is
        replaced and ``work`` runs once more.  Inside a session or another call it runs there.
        """
        with translated_errors():
            if (current := self._connection or self._current()) is not None:
                return work(current)
            for attempt in range(_ATTEMPTS):
                try:
                    if self.on_begin is not None:
                        with self._transaction({READ_ONLY: True}) as conn:
                            return work(conn)
                    with self.engine.connect() as raw:
                        return work(raw.execution_options(**self.backend.autocommit_read_options()))
                except exc.DBAPIError as err:
                    if not err.connection_invalidated or attempt + 1 == _ATTEMPTS:
                        raise
            raise AssertionError("unreachable")

    @contextmanager
    def transaction(self, **options: Any) -> Iterator[sa.Connection]:
        """A new transaction on a connection of its own (a session's): ``BEGIN``, the actor
        hook, the block, then ``COMMIT`` (``ROLLBACK`` if the block raises).

        Its start is retried once on a fresh connection if the pooled one turns out dead.
        Calls made inside do not join it unless they are given the connection.
        """
        conn, transaction = self._begin(options)
        with conn, transaction:
            yield conn

    @contextmanager
    def _transaction(self, options: dict[str, Any]) -> Iterator[sa.Connection]:
        """A transaction of this call's own, which calls nested in it (this thread) join."""
        with self.transaction(**options) as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def _begin(self, options: dict[str, Any]) -> tuple[sa.Connection, sa.RootTransaction]:
        """A connection in a new transaction, the actor set.

        Nothing is written until this returns, so a connection that turns out dead here (the
        server ended it, a restart, a proxy's timeout) is replaced and the start repeated once.
        """
        for attempt in range(_ATTEMPTS):
            conn = self.engine.connect()
            try:
                if options:
                    conn = conn.execution_options(**options)
                transaction = conn.begin()
                if self.on_begin is not None:
                    self.on_begin(conn)
                return conn, transaction
            except exc.DBAPIError as err:
                conn.close()
                if not err.connection_invalidated or attempt + 1 == _ATTEMPTS:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _current(self) -> sa.Connection | None:
        """The transaction of the call this one is nested in (this thread), if any."""
        conn: sa.Connection | None = getattr(self._local, "conn", None)
        return conn
