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
    NotFound,
    PermissionDenied,
)

#: SQLite busy timeout (milliseconds): how long a writer waits for the lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Size (bytes) SQLite truncates its WAL file to after a checkpoint.  Without a limit the WAL
#: keeps the largest size it ever reached (behind a long reader it grows to hundreds of MB) for
#: as long as any connection is open.
SQLITE_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
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


def sqlite_file_missing(target: Target) -> bool:
    """True when ``target`` is a SQLite file that does not exist yet.

    Read-only commands check this first: connecting would create an empty file.
    """
    path = target.url.database or ""
    if target.backend != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return False
    return not Path(path).exists()


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[sa.Connection]:
    """A connection for work that only reads (schema checks, status, reflection).

    On SQLite its transactions are deferred (``BEGIN``), so in WAL mode they read at once
    even while another process holds the write lock; on Postgres nothing changes.
    """
    with engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY: True})


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
        cur.execute(f"PRAGMA journal_size_limit={SQLITE_JOURNAL_SIZE_LIMIT}")
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
    rule = _rule_violation(orig, sqlstate, message)
    if rule is not None:
        return rule
    low = message.lower()
    if isinstance(orig, sqlite3.OperationalError) and (
        "database is locked" in low or "database is busy" in low
    ):
        return DatabaseBusy("the SQLite database stayed locked past the busy timeout; retry")
    if sqlstate == "57014":
        return DatabaseBusy(f"the statement took too long ({message}); retry or ask for less")
    if sqlstate in ("55P03", "40P01", "40001"):
        return DatabaseBusy(f"the database is busy ({message}); retry")
    if isinstance(err, exc.IntegrityError) or sqlstate.startswith("23"):
        return Conflict(_constraint_message(orig, sqlstate, message))
    if sqlstate == "42501":
        return PermissionDenied(f"permission denied: {message}")
    if sqlstate.startswith("22"):
        return InvalidInput("value", message)
    if isinstance(err, exc.OperationalError | exc.InterfaceError) or sqlstate.startswith("08"):
        return DatabaseUnavailable(f"cannot use the database: {message}")
    return None


#: What the database's triggers and functions raise (migrations 0006, 0008): ``invalid
#: <column>: …`` (SQLSTATE 22023 on Postgres), ``conflict: …`` (23000) and ``<thing> not
#: found`` (PT404); on SQLite a ``RAISE(ABORT, …)``.
_RULE_CODES = {"22023", "23000", "PT404"}


def _rule_violation(orig: object, sqlstate: str, message: str) -> DualdbError | None:
    """A rule the database enforces, as the same typed error the DAL raises for it."""
    from_trigger = sqlstate in _RULE_CODES or (
        isinstance(orig, sqlite3.IntegrityError)
        and getattr(orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_TRIGGER"
    )
    if not from_trigger:
        return None
    if sqlstate == "PT404":  # migration 0008's worker verbs (PostgREST's code for 404)
        return NotFound(message)
    if message.startswith("conflict: "):
        return Conflict(message.removeprefix("conflict: "))
    if message.startswith("invalid ") and ": " in message:
        field, _, detail = message.removeprefix("invalid ").partition(": ")
        return InvalidInput(field, detail)
    return None


def _constraint_message(orig: object, sqlstate: str, message: str) -> str:
    """The same words for the same violated constraint on both backends.

    The drivers' own texts differ ("UNIQUE constraint failed: users.id" against "duplicate
    key value violates unique constraint "pk_users""), so the verdict is rebuilt from what
    each driver reports: the kind of constraint, and its table, column or name.
    """
    diag = getattr(orig, "diag", None)
    table = getattr(diag, "table_name", None) if diag is not None else None
    column = getattr(diag, "column_name", None) if diag is not None else None
    name = getattr(diag, "constraint_name", None) if diag is not None else None
    kind = {"23505": "unique", "23503": "fk", "23514": "check", "23502": "not null"}.get(sqlstate)
    if isinstance(orig, sqlite3.IntegrityError):
        code = getattr(orig, "sqlite_errorname", "")
        detail = message.split(": ", 1)[1] if ": " in message else ""
        if code in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
            kind, table = "unique", detail.split(".", 1)[0] or None
        elif code == "SQLITE_CONSTRAINT_FOREIGNKEY":
            kind = "fk"
        elif code == "SQLITE_CONSTRAINT_CHECK":
            kind, name = "check", detail or None
        elif code == "SQLITE_CONSTRAINT_NOTNULL":
            kind = "not null"
            table, _, column = detail.partition(".")
    if kind == "unique":
        return f"{table or 'row'}: a row with the same key already exists"
    if kind == "fk":
        return "a row it refers to does not exist, or other rows still refer to it"
    if kind == "check":
        return f"check constraint {name or '(unnamed)'} failed"
    if kind == "not null":
        return f"{table}.{column} must not be NULL"
    return f"constraint violated: {message}"


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


def checkpoint(engine: Engine) -> bool:
    """Copy SQLite's write-ahead log into the database file and truncate it to zero bytes.

    Never waits: while another connection still reads old pages it does nothing and returns
    False (the next call, or the next large commit, finishes the job).  True on Postgres.
    """
    if engine.dialect.name != "sqlite":
        return True
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


def ping(engine: Engine) -> None:
    """Open a connection and run ``SELECT 1``; :class:`DatabaseUnavailable` if that fails."""
    try:
        with reading(engine) as conn:
            conn.execute(sa.text("SELECT 1"))
    except exc.DBAPIError as err:
        mapped = translate(err)
        if isinstance(mapped, DatabaseUnavailable | DatabaseBusy):
            raise mapped from None
        raise DatabaseUnavailable(f"cannot use the database: {type(err.orig).__name__}") from None
