"""SQLite: a local file, one writer at a time, no roles.

Connections get ``foreign_keys=ON`` (off by default in SQLite), WAL, a busy timeout,
``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` transactions: a deferred transaction that reads
and then writes fails at once with "database is locked", whatever the busy timeout, so every
transaction takes the write lock up front (read-only work opts out with :data:`READ_ONLY`).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from dualdb.backends.base import AUTOCOMMIT, READ_ONLY, Backend, WorkWaiter, insert_errors
from dualdb.errors import ConfigError, DatabaseUnavailable, MigrationError
from dualdb.hotpath import row_binder
from dualdb.types import utc_text

if TYPE_CHECKING:
    from dualdb.target import Target

#: Busy timeout (milliseconds): how long a writer waits for the lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Size (bytes) SQLite truncates its WAL file to after a checkpoint.  Without a limit the WAL
#: keeps the largest size it ever reached (behind a long reader it grows to hundreds of MB) for
#: as long as any connection is open.
SQLITE_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
#: The SQL function dualdb registers on its connections: the app's clock, as stored.
CLOCK_FUNCTION = "dualdb_now"


#: Rows from which a batch goes in through the driver, as multi-row ``INSERT`` statements
#: (:meth:`SqliteBackend.copy_rows`), and ``create_many`` reads the rows back.
BULK_ROWS = 100


class _JSONList(sa.types.TypeDecorator[list[Any]]):
    """A list bound as JSON text (for ``json_each``), a UUID as its canonical text, as
    stored."""

    impl = sa.types.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        items = [str(x) if isinstance(x, uuid.UUID) else x for x in value]
        return json.dumps(items, separators=(",", ":"))


def _clock_text() -> str:
    # format_timestamp(datetime.now(UTC)): SQLite calls this inside the write lock of every
    # statement that reads the clock (each claim and completion).
    return utc_text(datetime.now(UTC))


#: ``WITH dualdb_clock AS MATERIALIZED (SELECT dualdb_now() AS now)``, once per statement that
#: reads the clock (:meth:`SqliteBackend.clock`).
_CLOCK = (
    sa.select(getattr(sa.func, CLOCK_FUNCTION)().label("now"))
    .cte("dualdb_clock")
    .prefix_with("MATERIALIZED")
)
#: How often (seconds) an idle worker checks ``PRAGMA data_version``: the pickup delay it adds
#: at most.  Each check costs 0.1 ms of CPU (the wake-up and a read of the WAL index in shared
#: memory) on a quiet machine, up to 0.25 ms on a busy one: every 10 ms that measured 1% to
#: 2.5% of a core while idle (docs/benchmarks.md, F); every 20 ms halves it, for a median
#: pickup 5 ms later.
SQLITE_CHANGE_CHECK_S = 0.02


class DataVersionWaiter(WorkWaiter):
    """Wakes when any connection — another process, another program, or this one — commits.

    ``PRAGMA data_version`` on a connection of its own changes whenever another connection
    commits to the file.  Checking it every :data:`SQLITE_CHANGE_CHECK_S` is far cheaper than a
    claim (which takes the write lock), so an idle worker claims only after a commit.  The
    version last seen is kept between waits: a commit made while the worker was busy wakes the
    next wait at once.
    """

    mode = "PRAGMA data_version"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._seen = self._version()

    def _version(self) -> int | None:
        try:
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None  # the file went away or is unreadable: the claim will say why
        return int(row[0])

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            now = self._version()
            if now is not None and now != self._seen:
                self._seen = now
                return True
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(SQLITE_CHANGE_CHECK_S, left)):
                return False

    def close(self) -> None:
        self._conn.close()


class SqliteBackend(Backend):
    """SQLite through the standard library's ``sqlite3``."""

    name = "sqlite"
    row_locks = False
    server_clock = False
    queue_functions = False
    text_storage = True
    remote = False
    pin_connections = True
    driver = "sqlite+pysqlite"
    library = "the standard library's sqlite3"
    schemes = ("sqlite",)

    def clock(self) -> sa.ColumnElement[Any]:
        # The statement's materialized CTE (one, however many columns and rows it sets) calls
        # the function once, where the statement first needs it: after the statement's
        # OP_Transaction took the write lock (a bound parameter would be read before the
        # lock wait).  A plain subquery would call it once per use.
        return sa.select(_CLOCK.c.now).scalar_subquery()

    def rows_written(self, driver: Any) -> int | None:
        return int(driver.total_changes)  # sqlite3_total_changes(): trigger programs count

    def same_database(self, a: Target, b: Target) -> bool:
        # One file, however its path was written.
        return Path(a.url.database or "").resolve() == Path(b.url.database or "").resolve()

    def check_url(self, url: URL) -> None:
        if not url.database:
            raise ConfigError("a SQLite URL needs a file path: sqlite:///path/to/file.db")

    def create_engine(self, target: Target) -> Engine:
        db = target.url.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            parent = Path(db).expanduser().resolve().parent
            if not parent.is_dir():
                raise DatabaseUnavailable(
                    f"cannot open SQLite file {db!r}: folder {parent} does not exist"
                )
        memory = db in ("", ":memory:") or "mode=memory" in db
        engine = sa.create_engine(
            target.url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # No limit on connections in use: each thread keeps one pinned (pin_connections),
            # and a file's connections cost a file handle, not a server's slot.  Idle ones
            # beyond the pool's five are closed when they come back.
            **({} if memory else {"max_overflow": -1}),
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below issue BEGIN itself.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA journal_size_limit={SQLITE_JOURNAL_SIZE_LIMIT}")
            cur.close()
            # Not deterministic: SQLite calls it as each statement runs (Backend.clock).
            dbapi_conn.create_function(CLOCK_FUNCTION, 0, _clock_text)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            options = conn.get_execution_options()
            if options.get(AUTOCOMMIT):
                return
            if options.get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                # A one-statement write needs none (Scope.write_rows): an autocommit write
                # statement takes the write lock before it reads, as BEGIN IMMEDIATE does.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def one_of(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        values = sa.func.json_each(sa.bindparam(name, type_=_JSONList())).table_valued("value")
        return column.in_(sa.select(values.c.value))

    bulk_rows = BULK_ROWS

    def copy_rows(
        self,
        conn: sa.Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Collection[Sequence[Any]],
        meanwhile: Callable[[], object] | None = None,
    ) -> bool:
        # Multi-row INSERTs on the driver, as SQLAlchemy batches them but without its
        # per-row parameter and result processing in Python (the rows are read back on the
        # hot path).  Not executemany: SQLite's cost per statement is several times its cost
        # per row here, so a statement per row is the slowest way in.
        if len(rows) < BULK_ROWS:
            return False
        dialect = conn.dialect
        bind = row_binder(table, columns, dialect)
        per = max(
            1,
            min(
                dialect.insertmanyvalues_page_size,
                dialect.insertmanyvalues_max_parameters // len(columns),
            ),
        )
        head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        one = "(" + ", ".join("?" * len(columns)) + ")"
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, sqlite3.Connection)
        remaining = iter(rows)
        with insert_errors(head + one, sqlite3.Error):  # the statement's form, one row
            while chunk := list(itertools.islice(remaining, per)):
                statement = head + ", ".join([one] * len(chunk))
                dbapi.execute(statement, [value for row in chunk for value in bind(row)])
        return True

    def autocommit_read_options(self) -> dict[str, Any]:
        # Not SQLAlchemy's AUTOCOMMIT level: resetting it hands transaction control back to
        # the sqlite3 module.
        return {READ_ONLY: True, AUTOCOMMIT: True}

    def work_waiter(self, target: Target, engine: Engine) -> WorkWaiter:
        path = target.url.database or ""
        if path in ("", ":memory:") or "mode=memory" in path:
            return WorkWaiter()  # no other connection shares an in-memory database
        # A connection of the engine's own making (same file, same settings), kept out of
        # its pool: it only ever runs the pragma, outside any transaction.
        raw = engine.raw_connection()
        raw.detach()
        dbapi = raw.dbapi_connection
        assert isinstance(dbapi, sqlite3.Connection)
        return DataVersionWaiter(dbapi)

    def file_missing(self, target: Target) -> bool:
        path = target.url.database or ""
        if path in ("", ":memory:") or path.startswith("file:"):
            return False
        return not Path(path).exists()

    def checkpoint(self, engine: Engine) -> bool:
        """Copy the write-ahead log into the database file and truncate it to zero bytes.

        Never waits: while another connection still reads old pages it does nothing and
        returns False (the next call, or the next large commit, finishes the job).
        """
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            dbapi.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = dbapi.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError:
                return False
            finally:
                dbapi.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return bool(busy == 0)

    @contextmanager
    def migrating(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """Foreign keys off while tables are rebuilt, and legacy ``ALTER TABLE`` renames.

        Alembic's batch mode copies a table and drops the old one; with foreign keys on, that
        drop would cascade-delete child rows, so integrity is verified with
        ``foreign_key_check`` instead.  Batch mode renames the rebuilt table into place; since
        SQLite 3.26 a rename re-checks every trigger, and the triggers of migration 0006 name
        tables (shots, generations) that are briefly missing mid-rebuild.
        """
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.execute("PRAGMA foreign_keys=OFF")
        dbapi.execute("PRAGMA legacy_alter_table=ON")
        try:
            yield conn
            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            conn.commit()
            if bad:
                raise MigrationError(f"foreign key check failed after migration: {bad[:3]}")
        finally:
            conn.rollback()
            dbapi.execute("PRAGMA foreign_keys=ON")
            dbapi.execute("PRAGMA legacy_alter_table=OFF")

    def live_triggers(self, conn: sa.Connection) -> set[tuple[str, str]]:
        rows = conn.exec_driver_sql(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'"
        )
        return {(str(table), str(name)) for table, name in rows}
