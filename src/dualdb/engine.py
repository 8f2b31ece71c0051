"""Engines configured for each backend, and translation of driver errors.

SQLite connections get ``foreign_keys=ON`` (off by default in SQLite), WAL, a busy timeout,
``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` transactions: a deferred transaction that reads
and then writes fails at once with "database is locked", whatever the busy timeout, so every
transaction takes the write lock up front (read-only work can opt out, see
:data:`READ_ONLY`).  Postgres goes through psycopg 3 with ``pool_pre_ping`` and, behind
Supabase's transaction pooler, no prepared statements.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

from dualdb.config import Target
from dualdb.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    DualdbError,
    InvalidInput,
    PermissionDenied,
)

#: SQLite busy timeout (milliseconds): how long a writer waits for the lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Postgres connect timeout (seconds), so an unreachable host fails fast.
PG_CONNECT_TIMEOUT_S = 5
#: Execution option: this transaction only reads (SQLite then uses a deferred BEGIN).
READ_ONLY = "dualdb_read_only"
#: Execution option (SQLite): no BEGIN at all — each statement is its own snapshot.
_SQLITE_AUTOCOMMIT = "dualdb_autocommit"


def autocommit_read_options(dialect_name: str) -> dict[str, Any]:
    """Execution options for a call that reads with one statement: no BEGIN/COMMIT.

    A single ``SELECT`` is atomic on its own, and skipping the transaction saves two round
    trips on Postgres and a BEGIN on SQLite.  (Not SQLAlchemy's ``AUTOCOMMIT`` level on SQLite:
    resetting it hands transaction control back to the sqlite3 module.)
    """
    if dialect_name == "sqlite":
        return {READ_ONLY: True, _SQLITE_AUTOCOMMIT: True}
    return {"isolation_level": "AUTOCOMMIT"}


def _sqlite_engine(target: Target) -> Engine:
    db = target.url.database or ""
    if db and db != ":memory:" and not db.startswith("file:"):
        parent = Path(db).expanduser().resolve().parent
        if not parent.is_dir():
            raise DatabaseUnavailable(
                f"cannot open SQLite file {db!r}: folder {parent} does not exist"
            )
    engine = sa.create_engine(
        target.url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
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
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_SQLITE_AUTOCOMMIT):
            return
        if options.get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(target: Target) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": PG_CONNECT_TIMEOUT_S,
        "application_name": "dualdb",
    }
    if target.transaction_pooler:
        # PgBouncer/Supavisor in transaction mode cannot keep prepared statements.
        connect_args["prepare_threshold"] = None
    return sa.create_engine(
        target.url,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def create_engine(target: Target) -> Engine:
    """An :class:`~sqlalchemy.engine.Engine` for ``target``, configured for its backend."""
    if target.backend == "sqlite":
        return _sqlite_engine(target)
    return _postgres_engine(target)


def translate(err: BaseException) -> DualdbError | None:
    """Map a SQLAlchemy/driver exception to the matching :mod:`dualdb.errors` exception."""
    if isinstance(err, DualdbError):
        return err
    if not isinstance(err, exc.DBAPIError | exc.StatementError):
        return None
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    message = text.splitlines()[0] if text else type(err).__name__
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if isinstance(err, exc.StatementError) and not isinstance(err, exc.DBAPIError):
        cause = err.orig if err.orig is not None else err
        return InvalidInput("value", str(cause))
    low = message.lower()
    if isinstance(orig, sqlite3.OperationalError) and (
        "database is locked" in low or "database is busy" in low
    ):
        return DatabaseBusy("the SQLite database stayed locked past the busy timeout; retry")
    if sqlstate in ("55P03", "40P01", "40001"):
        return DatabaseBusy(f"the database is busy ({message}); retry")
    if isinstance(err, exc.IntegrityError) or sqlstate.startswith("23"):
        return Conflict(f"constraint violated: {message}")
    if sqlstate == "42501":
        return PermissionDenied(f"permission denied: {message}")
    if sqlstate.startswith("22"):
        return InvalidInput("value", message)
    if isinstance(err, exc.OperationalError | exc.InterfaceError) or sqlstate.startswith("08"):
        return DatabaseUnavailable(f"cannot use the database: {message}")
    return None


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise driver exceptions raised inside the block as :mod:`dualdb.errors` exceptions."""
    try:
        yield
    except (exc.DBAPIError, exc.StatementError) as err:
        mapped = translate(err)
        if mapped is None:
            raise
        raise mapped from None


def ping(engine: Engine) -> None:
    """Open a connection and run ``SELECT 1``; :class:`DatabaseUnavailable` if that fails."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except exc.DBAPIError as err:
        mapped = translate(err)
        if isinstance(mapped, DatabaseUnavailable | DatabaseBusy):
            raise mapped from None
        raise DatabaseUnavailable(f"cannot use the database: {type(err.orig).__name__}") from None
