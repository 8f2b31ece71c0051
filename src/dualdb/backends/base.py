"""The :class:`Backend` interface: what differs between SQLite and Postgres, in one object.

Code outside :mod:`dualdb.backends` asks its backend (``Scope.backend``, :func:`backend_of`)
instead of comparing dialect names.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dualdb.schema import TRIGGERS

if TYPE_CHECKING:
    from dualdb.claims import Claims
    from dualdb.target import Target

#: Called with the connection at the start of each transaction (e.g. to set the RLS role).
TransactionHook = Callable[[sa.Connection], None]

#: Execution option: this transaction only reads (SQLite then uses a deferred BEGIN).
READ_ONLY = "dualdb_read_only"
#: Execution option: no BEGIN at all — each statement is its own transaction.
AUTOCOMMIT = "dualdb_autocommit"


class WorkWaiter:
    """What an idle worker waits on between claims that found nothing.

    :meth:`wait` returns True as soon as the database may hold new work (a task became ready,
    or — on SQLite — anything was committed), False when ``timeout`` seconds passed or
    ``stop`` was set.  No change is ever lost between two waits: a change that happens while
    the worker is busy makes the next :meth:`wait` return at once.  This base class only
    waits out the timeout (plain polling); backends return one that wakes on change
    (:meth:`Backend.work_waiter`).  Close it (or use it as a context manager) when done.
    """

    #: How the waiter learns of new work (shown by ``dualdb worker``).
    mode = "polling"

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Block until new work may be there (True), or ``timeout``/``stop`` (False)."""
        stop.wait(timeout)
        return False

    def close(self) -> None:
        """Release the waiter's connection, if it has one."""

    def __enter__(self) -> WorkWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def insert_errors(statement: str, driver_error: type[Exception]) -> Iterator[None]:
    """A bulk path's errors (:meth:`Backend.copy_rows`) raised as SQLAlchemy raises an
    ``INSERT``'s, so that the same translation (:func:`dualdb.engine.translate`) applies."""
    try:
        yield
    except driver_error as err:
        raise sa.exc.DBAPIError.instance(statement, None, err, driver_error) from None
    except (ValueError, TypeError) as err:
        raise sa.exc.StatementError(str(err), statement, None, err) from None


class Backend(ABC):
    """One database backend: its engine, transactions, locks, roles and per-backend SQL."""

    #: The SQLAlchemy dialect name (``"sqlite"`` or ``"postgresql"``).
    name: ClassVar[str]
    #: Row locks (``SELECT … FOR UPDATE``): concurrent writers of one row wait for each other.
    #: Without them (SQLite) a write transaction already holds the whole database.
    row_locks: ClassVar[bool]
    #: Queue timestamps come from the server's clock (one clock for every worker machine);
    #: otherwise the app reads its clock inside the write transaction.
    server_clock: ClassVar[bool]
    #: The workers' queue verbs are SQL functions in the database (migration 0008), which the
    #: DAL calls; otherwise the DAL runs the same statements itself.
    queue_functions: ClassVar[bool]
    #: Keys and timestamps are stored as text, which another tool may have garbled (so a
    #: page cursor may carry a stored value that decodes to nothing).
    text_storage: ClassVar[bool]
    #: A database server on the network (the ``web`` side), not a local file.
    remote: ClassVar[bool]
    #: Each thread keeps one pooled connection for its one-statement calls: checking one out
    #: costs more than the statement (a local file); the pool then has no size limit.
    pin_connections: ClassVar[bool] = False
    #: Postgres-only triggers and functions the migrations create (``dualdb check``).
    extra_triggers: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The SQLAlchemy driver dualdb uses (``sqlite+pysqlite``, ``postgresql+psycopg``).
    driver: ClassVar[str]
    #: The Python driver behind :attr:`driver`, as users know it.
    library: ClassVar[str]
    #: The URL schemes users write for this backend, besides :attr:`driver`.
    schemes: ClassVar[tuple[str, ...]]

    def may_be_dead(self, driver: Any) -> bool:
        """Whether the idle driver connection ``driver`` may have been ended by the server,
        looked at without a round trip.  Where it may, the caller asks the server (one
        statement that writes nothing) before it sends a write.  Never, by default: a local
        file's connection cannot be ended from outside."""
        return False

    def at_rest(self, driver: Any) -> bool:
        """Whether the driver connection ``driver`` is idle outside any transaction, as a
        call that ran to its end leaves it (one that was interrupted may not): then it can
        serve the next call as it is, with no reset."""
        return True

    @abstractmethod
    def clock(self) -> sa.ColumnElement[Any]:
        """The time now, read by the database as the statement runs — after the statement
        has taken its locks, never before — as a SQL expression of the backend's stored
        timestamp form."""

    def rows_written(self, driver: Any) -> int | None:
        """How many rows the driver connection ``driver`` has inserted, updated or deleted
        since it was opened, triggers' writes included — None where the driver cannot say
        without a round trip.  Two readings around a statement show whether anything but
        the statement's own rows was written."""
        return None

    def check_url(self, url: URL) -> None:
        """Raise :class:`~dualdb.errors.ConfigError` when ``url`` cannot name a database."""
        return None

    def transaction_pooler(self, url: URL, explicit: bool | None) -> bool:
        """Whether ``url`` reaches the database through a transaction pooler (``explicit``
        is ``DUALDB_TRANSACTION_POOLER``, when set)."""
        return False

    def driver_url(self, url: URL) -> URL:
        """``url`` without the options that are dualdb's and not the driver's."""
        return url

    @abstractmethod
    def create_engine(self, target: Target) -> Engine:
        """An :class:`~sqlalchemy.engine.Engine` for ``target``, configured for this backend."""

    @abstractmethod
    def autocommit_read_options(self) -> dict[str, Any]:
        """Execution options for a call that reads with one statement: no BEGIN/COMMIT.

        A single ``SELECT`` is atomic on its own; skipping the transaction saves round trips.
        """

    def snapshot_read_options(self) -> dict[str, Any]:
        """Execution options for a long read that must see one consistent snapshot.

        ``dualdb copy`` reads its source in many pages; they must all see the same data, or
        a row changed between two pages would be copied half old, half new.  On SQLite a
        deferred ``BEGIN`` in WAL mode already reads one snapshot, without the write lock.
        """
        return {READ_ONLY: True}

    def same_database(self, a: Target, b: Target) -> bool:
        """Whether two targets of this backend are one database (by default: one URL)."""
        return a.url == b.url

    def file_missing(self, target: Target) -> bool:
        """True when ``target`` is a local file that does not exist yet (connecting would
        create an empty one)."""
        return False

    def checkpoint(self, engine: Engine) -> bool:
        """Fold a write-ahead log into the database file; True when done (or nothing to do)."""
        return True

    def work_waiter(self, target: Target, engine: Engine) -> WorkWaiter:
        """What a worker on ``target`` waits on when the queue is empty (by default: polling).

        Built before the worker's first claim, so no change after that claim is missed.
        """
        return WorkWaiter()

    def refresh_statistics(self, conn: sa.Connection, tables: tuple[str, ...]) -> None:
        """Refresh the planner's statistics of ``tables`` after a bulk write (if it keeps any).

        By default nothing: dualdb never runs ``ANALYZE`` on SQLite, whose hot queries name
        their index instead.
        """
        return None

    @abstractmethod
    def one_of(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        """``column`` equals one of the values of the list bound to ``name``.

        One parameter for any number of values, so a statement is compiled once (an ``IN``
        list is compiled anew for each length and binds every value on its own); the
        column's index is used.
        """

    #: The batch size from which :meth:`copy_rows` takes the driver's bulk path (None: never).
    bulk_rows: ClassVar[int | None] = None
    #: The bulk path stores rows while the caller is still making the next ones (a server
    #: loading what it has received so far), so a caller may hand :meth:`copy_rows` rows that
    #: are validated as they are read: the validation then overlaps the server's work.  Not
    #: SQLite's, which runs in the caller's thread.
    streams_bulk: ClassVar[bool] = False

    def copy_rows(
        self,
        conn: sa.Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Collection[Sequence[Any]],
        meanwhile: Callable[[], object] | None = None,
    ) -> bool:
        """Load ``rows`` (values of ``columns`` in that order, bound as for an ``INSERT``)
        into ``table`` by the driver's bulk path, in the open transaction, if this backend
        has one worth it for this many rows (:attr:`bulk_rows`); whether it did.  Row
        triggers fire as for an ``INSERT``; errors are raised as SQLAlchemy's, as an
        ``INSERT``'s would be.

        ``rows`` is read once, in order, so its rows may be made as they are read; an
        exception raised while making one ends the load and passes on (a ``ValueError`` or
        ``TypeError`` as SQLAlchemy's ``StatementError``), and the caller's transaction is to
        be rolled back: Postgres's ``COPY`` has written nothing, SQLite may have run the
        statements of the rows before it.
        ``meanwhile`` is the caller's next piece of work, which a backend whose server loads
        the rows (:attr:`streams_bulk`) calls once, midway, so that it overlaps the server's
        work; others never call it.

        By default no bulk path: a batched ``INSERT`` is as fast as anything SQLite offers.
        """
        return False

    def user_hook(self, claims: Claims) -> TransactionHook | None:
        """What makes a transaction act as the user of ``claims`` (None: the DAL scopes)."""
        return None

    def service_hook(self) -> TransactionHook | None:
        """What makes a transaction act as the service (None: nothing to switch)."""
        return None

    @contextmanager
    def migrating(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """Settings a migration run needs on ``conn``, undone afterwards."""
        yield conn

    def triggers(self) -> set[tuple[str, str]]:
        """Every ``(table, trigger)`` the migrations create on this backend."""
        return {
            (table, name)
            for source in (TRIGGERS, self.extra_triggers)
            for table, names in source.items()
            for name in names
        }

    @abstractmethod
    def live_triggers(self, conn: sa.Connection) -> set[tuple[str, str]]:
        """The ``(table, trigger)`` pairs that fire in ordinary sessions of ``conn``'s database."""

    def schema_problems(self, conn: sa.Connection) -> list[str]:
        """What ``dualdb check`` finds wrong beyond tables, indexes, checks and triggers."""
        return []

    def auth_problems(self, conn: sa.Connection) -> list[str]:
        """Problems with the database's ``auth`` functions (what ``migrate`` warns about)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
