"""Where repository statements run: one transaction per call, or inside a session.

A :class:`Scope` hands out connections.  Without a fixed connection each outermost call gets
its own transaction (``BEGIN IMMEDIATE`` on SQLite for writes, a deferred ``BEGIN`` for reads),
or, for a call that is one statement, none: the statement is its own transaction; calls nested
inside a transaction reuse it.  A pooled connection the server dropped is replaced where that
is safe: at the start of a transaction, before a one-statement write is sent (a look at the
idle connection, :meth:`~dualdb.backends.Backend.may_be_dead`), and for a one-statement read
(:meth:`Scope.fetch`) — never once a write was sent.  Inside a
:class:`~dualdb.database.Session` every write call runs in a SAVEPOINT, so a call that fails
leaves no partial write and the session stays usable — identically on SQLite and Postgres
(where an error would otherwise abort the whole transaction).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.pool import PoolProxiedConnection

from dualdb.backends import READ_ONLY, Backend, TransactionHook, backend_of
from dualdb.engine import translate, translated_errors
from dualdb.errors import DualdbError
from dualdb.hotpath import Statement

__all__ = ["Scope", "TransactionHook", "release_pinned"]

T = TypeVar("T")

#: A call's own reading of a driver error (e.g. a foreign-key violation as ``NotFound``),
#: or None to leave it to :func:`dualdb.engine.translate`.
Refine = Callable[[exc.DBAPIError], DualdbError | None]

#: Tries at the start of a transaction, of a one-statement read, or before a one-statement
#: write is sent, when the connection turns out dead: the first, and one on a fresh one.
_ATTEMPTS = 2


class _Pin:
    """One thread's pooled connection, kept checked out between calls (see :class:`_Pins`)."""

    def __init__(self, connection: PoolProxiedConnection) -> None:
        self.connection: PoolProxiedConnection | None = connection
        self.pid = os.getpid()

    def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and self.pid == os.getpid():
            connection.close()

    def __del__(self) -> None:
        # The thread ended (its locals go): the connection goes back to the pool.
        self.release()


class _ThreadPin(threading.local):
    """This thread's pinned connection (a class default: a missing thread-local attribute
    looked up with ``getattr(…, default)`` costs an exception, about 1 µs, per call)."""

    pin: _Pin | None = None


class _CallState(threading.local):
    """This thread's transaction of the call in progress, None between calls."""

    conn: sa.Connection | None = None


class _Leases(Protocol):
    """Where a scope's one-statement calls get their connection, and give it back."""

    def get(self) -> PoolProxiedConnection:
        """A pooled connection in autocommit, idle."""

    def put(self, connection: PoolProxiedConnection) -> None:
        """``connection`` back after a call (it is idle again)."""

    def discard(self) -> None:
        """A connection was found dead and invalidated: keep none made before it."""

    def release_all(self) -> None:
        """Every connection held back to the pool (before the engine is disposed)."""

    def disown(self) -> None:
        """In a forked child: what is held is the parent's; never use, close or pool it."""


class _Pins:
    """Per engine: each thread's pinned connection, for backends that pin (SQLite).

    Checking a connection out of the pool and back in costs more than a whole SQLite lookup;
    a thread therefore keeps one for its one-statement calls.  SQLite's pool has no limit on
    connections in use (:mod:`dualdb.backends.sqlite`), so pinned connections never starve
    anyone; a thread's goes back to the pool when the thread ends.  A forked child never uses,
    closes or pools its parent's (:func:`_forked`).
    """

    def __init__(self, engine: sa.Engine) -> None:
        # Weak: the engine (and its Database) may go away; its entry in _LEASES goes with it.
        self._engine = weakref.ref(engine)
        self._local = _ThreadPin()
        self._all: weakref.WeakSet[_Pin] = weakref.WeakSet()

    def get(self) -> PoolProxiedConnection:
        pin = self._local.pin
        if pin is not None and pin.connection is not None:
            return pin.connection
        engine = self._engine()
        assert engine is not None  # a Scope holds its engine
        pin = _Pin(engine.raw_connection())
        self._local.pin = pin
        self._all.add(pin)
        assert pin.connection is not None
        return pin.connection

    def put(self, connection: PoolProxiedConnection) -> None:
        pass  # it stays this thread's

    def discard(self) -> None:
        """Forget this thread's connection (it was invalidated)."""
        pin = self._local.pin
        if pin is not None:
            pin.release()

    def release_all(self) -> None:
        for pin in list(self._all):
            pin.release()

    def disown(self) -> None:
        _INHERITED.extend(self._all)
        self._local = _ThreadPin()
        self._all = weakref.WeakSet()


#: Connections a :class:`_Spares` keeps checked out between calls (Postgres).
SPARES = 2
#: The longest a connection goes round :class:`_Spares` (seconds) before it goes back to the
#: pool once, whose checkout applies ``pool_recycle`` and replaces connections invalidated.
SPARE_S = 60.0


class _Spares:
    """Per engine: a few idle connections kept checked out, shared by threads (Postgres).

    A checkout from SQLAlchemy's pool and the check-in after it (a proxy object, a weak
    reference, the reset) cost about 15 µs: a sixth of a primary-key lookup on a local
    server.  A one-statement call leaves its connection idle in autocommit, with nothing to
    reset, so up to :data:`SPARES` wait here for the next call (the most recent first) and the
    rest go back.  Unlike a pin per thread, an idle thread holds none: at most
    :data:`SPARES` of the pool's connections are out while no call runs.  A connection goes
    back through the pool (``pool_recycle``, the pool's replacement of invalidated ones)
    once it was first checked out :data:`SPARE_S` ago, in use or waiting here.

    When the pool invalidates a connection (found dead, by any caller), and when the engine
    is disposed or its Database closed, every spare is closed, as are those in use when they
    are given back; their pool slots are opened afresh when needed.  Without that, a spare
    older than the pool's last invalidation would, found dead in turn, not make the pool
    replace the others a restart ended with it.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = weakref.ref(engine)
        self._at_rest = backend_of(engine).at_rest
        self._lock = threading.Lock()
        #: (connection, when it was checked out).
        self._free: list[tuple[PoolProxiedConnection, float]] = []
        #: id(connection) → (when it was checked out, :attr:`_epoch` when it left here).
        self._out: dict[int, tuple[float, int]] = {}
        #: Counts the pool's invalidations and the releases of every spare: a connection
        #: out since then is not kept.
        self._epoch = 0
        sa.event.listen(engine, "invalidate", self._on_invalidate)
        sa.event.listen(engine, "engine_disposed", self._on_invalidate)

    def _on_invalidate(self, *_: Any) -> None:
        self.release_all()

    def get(self) -> PoolProxiedConnection:
        now = time.monotonic()
        found: PoolProxiedConnection | None = None
        since = now
        stale: list[PoolProxiedConnection] = []
        with self._lock:
            epoch = self._epoch
            while self._free:
                candidate, since = self._free.pop()
                if now - since < SPARE_S:
                    found = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()  # through the pool, whose checkout applies pool_recycle
        if found is None:
            engine = self._engine()
            assert engine is not None  # a Scope holds its engine
            found, since = engine.raw_connection(), now
        self._out[id(found)] = (since, epoch)
        return found

    def put(self, connection: PoolProxiedConnection) -> None:
        since, epoch = self._out.pop(id(connection), (0.0, -1))
        if (
            connection.is_valid
            and self._at_rest(connection.dbapi_connection)  # else the pool resets it
            and time.monotonic() - since < SPARE_S
        ):
            with self._lock:
                if epoch != self._epoch:
                    released = True  # out while every spare was released: as they were
                elif len(self._free) < SPARES:
                    self._free.append((connection, since))
                    return
                else:
                    released = False
            if released:
                _close_for_good(connection)
                return
        connection.close()

    def discard(self) -> None:
        self.release_all()  # (the pool's invalidate event has done it already)

    def release_all(self) -> None:
        with self._lock:
            self._epoch += 1
            held, self._free = self._free, []
        for connection, _ in held:
            _close_for_good(connection)

    def disown(self) -> None:
        _INHERITED.extend(self._free)
        self._lock = threading.Lock()
        self._free = []
        self._out = {}


def _close_for_good(connection: PoolProxiedConnection) -> None:
    """Close the driver's connection itself, its pool slot given back empty.

    Not a check-in: the pool may be one the engine has disposed of already (the
    ``engine_disposed`` event comes after), which would keep it open until collected; and
    after an invalidation the pool would replace it anyway."""
    connection.detach()
    connection.close()


#: What a forked child inherited held (see :meth:`_Leases.disown`): referenced for good, so
#: that nothing here ever closes, resets or pools it.
_INHERITED: list[Any] = []


_LEASES: weakref.WeakKeyDictionary[sa.Engine, _Leases] = weakref.WeakKeyDictionary()
_LEASES_LOCK = threading.Lock()


def _forked() -> None:
    """In a new child process: every engine starts from a pool of its own (SQLite must never
    use a connection across ``fork``), and the parent's held connections stay untouched."""
    for engine, leases in list(_LEASES.items()):
        leases.disown()
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forked)


def _leases_of(engine: sa.Engine, pin: bool) -> _Leases:
    with _LEASES_LOCK:
        leases = _LEASES.get(engine)
        if leases is None:
            leases = _LEASES[engine] = _Pins(engine) if pin else _Spares(engine)
        return leases


def release_pinned(engine: sa.Engine) -> None:
    """Give every connection of ``engine`` that calls keep between them (each thread's pinned
    one on SQLite, the spares on Postgres) back to its pool (before dispose)."""
    leases = _LEASES.get(engine)
    if leases is not None:
        leases.release_all()


def _run_on(
    conn: sa.Connection, statement: Statement, values: Mapping[str, Any], converted: bool
) -> list[Any]:
    """``statement`` on the driver's connection under ``conn``; a connection found dead is
    invalidated, as SQLAlchemy does for a statement of its own."""
    run = statement.rows if converted else statement.fetch
    try:
        return run(conn.connection.dbapi_connection, values)
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            conn.invalidate()
        raise


def _mapped(err: exc.StatementError, refine: Refine | None) -> DualdbError | None:
    """What a driver error is raised as: ``refine``'s reading of it, else
    :func:`~dualdb.engine.translate`'s (None: as it is)."""
    refined = refine(err) if refine and isinstance(err, exc.DBAPIError) else None
    return refined or translate(err)


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
        self._local = _CallState()
        self._leases = _leases_of(engine, self.backend.pin_connections)

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

    def rows(
        self,
        statement: Statement,
        values: Mapping[str, Any],
        refine: Refine | None = None,
        *,
        converted: bool = True,
    ) -> list[Any]:
        """Run ``statement`` (compiled once, :mod:`dualdb.hotpath`): one ``SELECT``, no
        transaction of its own; its converted rows (``converted=False``: the driver's rows,
        for the caller to convert one at a time with :attr:`Statement.convert`).

        The same connection rules as :meth:`fetch` — inside a session or another call it runs
        there; a scope that sets its actor per transaction opens one — but without
        SQLAlchemy's execution machinery, on the driver's connection.
        """
        try:
            return self._rows(statement, values, converted)
        except (exc.DBAPIError, exc.StatementError) as err:
            # As translated_errors() does (a context manager costs more than this lookup).
            mapped = _mapped(err, refine)
            if mapped is None:
                raise
            raise mapped from None

    def _rows(self, statement: Statement, values: Mapping[str, Any], converted: bool) -> list[Any]:
        if (current := self._connection or self._current()) is not None:
            return _run_on(current, statement, values, converted)
        if self.on_begin is not None:
            with self._transaction({READ_ONLY: True}) as conn:
                return _run_on(conn, statement, values, converted)
        run = statement.rows if converted else statement.fetch
        for attempt in range(_ATTEMPTS):
            leased = self._lease()
            try:
                return run(leased.dbapi_connection, values)
            except exc.DBAPIError as err:
                if err.connection_invalidated:
                    self._invalidate(leased)
                if not err.connection_invalidated or attempt + 1 == _ATTEMPTS:
                    raise
            finally:
                self._leases.put(leased)
        raise AssertionError("unreachable")

    def write_rows(
        self, statement: Statement, values: Mapping[str, Any], refine: Refine | None = None
    ) -> list[Sequence[Any]]:
        """Run ``statement``, one write, in a transaction: its converted rows (``RETURNING``).

        :meth:`write` for a call that is one statement, on the driver's connection, without
        ``BEGIN``/``COMMIT``: one statement is atomic on its own, and is one round trip.  A
        pooled connection the server may have ended
        (:meth:`~dualdb.backends.Backend.may_be_dead`) is checked first and replaced once; a
        connection lost once the write was sent raises
        :class:`~dualdb.errors.DatabaseUnavailable` (the write is not sent again).  Inside a
        session, another call, or a scope that sets its actor per transaction, it runs
        through :meth:`write` instead (savepoint, joined transaction, actor hook).
        """
        return self._write_on(lambda driver: statement.rows(driver, values), refine)

    def write_count(self, statement: Statement, values: Mapping[str, Any]) -> int:
        """:meth:`write_rows` for a write without ``RETURNING``: how many rows it wrote
        itself, as the driver counts them (what its triggers and cascades wrote is not
        counted).  On SQLite a ``RETURNING`` costs a delete a fifth more than the delete."""
        return self._write_on(lambda driver: statement.count(driver, values), None)

    def _write_on(self, work: Callable[[Any], T], refine: Refine | None) -> T:
        """``work(driver)``, one write statement, as :meth:`write_rows` runs it."""
        if not self.drives:
            with self._write_driver() as driver:
                try:
                    return work(driver)
                except exc.DBAPIError as err:
                    refined = refine(err) if refine is not None else None
                    if refined is None:
                        raise
                    raise refined from None
        # No context manager (translated_errors): most of a call's own cost on SQLite.
        try:
            return self._on_driver(work)
        except (exc.DBAPIError, exc.StatementError) as err:
            mapped = _mapped(err, refine)
            if mapped is None:
                raise
            raise mapped from None

    @contextmanager
    def _write_driver(self) -> Iterator[Any]:
        """:meth:`write`, giving the driver's connection."""
        with self.write() as conn:
            try:
                yield conn.connection.dbapi_connection
            except exc.DBAPIError as err:
                if err.connection_invalidated:
                    conn.invalidate()  # as SQLAlchemy does for a statement of its own
                raise

    @property
    def drives(self) -> bool:
        """Whether a call may run its own statements on the driver (:meth:`on_driver`):
        not inside a session or another call, and no actor to set per transaction."""
        return self._connection is None and self.on_begin is None and self._current() is None

    def on_driver(self, work: Callable[[Any], T]) -> T:
        """``work(driver)`` on the driver's connection, for a call whose writes are each one
        statement: no ``BEGIN``/``COMMIT``, every statement a transaction of its own (one
        round trip); driver errors raised as :mod:`dualdb.errors`.

        Only where :attr:`drives`; ``work`` runs :mod:`dualdb.hotpath` statements on the
        connection it is given and calls nothing that opens a transaction of its own.  A
        pooled connection the server may have ended
        (:meth:`~dualdb.backends.Backend.may_be_dead`) is asked first, with a statement that
        writes nothing, and replaced once; a connection lost in ``work`` raises
        :class:`~dualdb.errors.DatabaseUnavailable`: what was sent is never sent again.
        """
        # No context manager (translated_errors): it costs a hot verb more than its checks.
        try:
            return self._on_driver(work)
        except (exc.DBAPIError, exc.StatementError) as err:
            mapped = _mapped(err, None)
            if mapped is None:
                raise
            raise mapped from None

    def _on_driver(self, work: Callable[[Any], T]) -> T:
        leased = self._lease_alive()
        try:
            return work(leased.dbapi_connection)
        except exc.DBAPIError as err:
            if err.connection_invalidated:
                self._invalidate(leased)
            raise
        finally:
            self._leases.put(leased)

    def _lease_alive(self) -> PoolProxiedConnection:
        """:meth:`_lease`, a connection the server may have ended asked first (``SELECT 1``:
        nothing written) and replaced once."""
        for attempt in range(_ATTEMPTS):
            leased = self._lease()
            if not self.backend.may_be_dead(leased.dbapi_connection):
                return leased
            try:
                self._send(leased.dbapi_connection, "SELECT 1")
                return leased
            except exc.DBAPIError as err:
                if err.connection_invalidated:
                    self._invalidate(leased)
                self._leases.put(leased)
                if not err.connection_invalidated or attempt + 1 == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _send(self, driver: Any, sql: str) -> None:
        """One statement without parameters, a driver error raised as SQLAlchemy's."""
        try:
            # Both drivers (sqlite3, psycopg) have Connection.execute: a cursor per call.
            driver.execute(sql)
        except self.engine.dialect.loaded_dbapi.Error as err:
            raise self._driver_error(err, sql, driver) from err

    def _driver_error(self, err: Any, sql: str | None, driver: Any) -> exc.StatementError:
        """The driver's error as SQLAlchemy's, as its own statements raise it."""
        dialect = self.engine.dialect
        wrapped: exc.StatementError = exc.DBAPIError.instance(
            sql,
            None,
            err,
            dialect.loaded_dbapi.Error,
            connection_invalidated=dialect.is_disconnect(err, driver, None),
            dialect=dialect,
        )
        return wrapped

    def _lease(self) -> PoolProxiedConnection:
        """A pooled connection in autocommit, idle: this thread's pinned one (SQLite), a spare
        (Postgres), or one checked out; give it back with ``self._leases.put``.

        A failure to connect is raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`
        (the pool hands the driver's own error up), so it is translated like any other.
        """
        try:
            return self._leases.get()
        except self.engine.dialect.loaded_dbapi.Error as err:
            raise self._driver_error(err, None, None) from err

    def _invalidate(self, leased: PoolProxiedConnection) -> None:
        """Drop a connection found dead.  As SQLAlchemy's own statements do on a disconnect,
        every pooled connection made before it goes too, at its next checkout: what ended
        one (a restart, a failover) ended them all, and the retry must not meet another."""
        self.engine.pool._invalidate(leased)
        self._leases.discard()

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
        return self._local.conn
