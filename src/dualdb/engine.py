"""Engines for a target (built by its backend), and translation of driver errors.

What differs between SQLite and Postgres — engine settings, how transactions begin, the
write-ahead log — lives in :mod:`dualdb.backends`; this module is what every caller shares.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from dualdb.backends import READ_ONLY, backend_for
from dualdb.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    DualdbError,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from dualdb.target import Target

__all__ = [
    "READ_ONLY",
    "create_engine",
    "foreign_key_violation",
    "ping",
    "reading",
    "translate",
    "translated_errors",
]


def create_engine(target: Target) -> Engine:
    """An :class:`~sqlalchemy.engine.Engine` for ``target``, configured for its backend."""
    return backend_for(target.backend).create_engine(target)


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[sa.Connection]:
    """A connection for work that only reads (schema checks, status, reflection).

    On SQLite its transactions are deferred (``BEGIN``), so in WAL mode they read at once
    even while another process holds the write lock; on Postgres nothing changes.
    """
    with engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY: True})


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


def foreign_key_violation(err: exc.DBAPIError) -> bool:
    """Whether ``err`` is a violated foreign key (on either backend)."""
    orig = err.orig
    if isinstance(orig, sqlite3.IntegrityError):
        return getattr(orig, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY"
    return getattr(orig, "sqlstate", None) == "23503"


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
        try:
            _select_one(engine)
        except exc.DBAPIError as err:
            # A pooled connection the server dropped: replaced, and the read tried once more.
            if not err.connection_invalidated:
                raise
            _select_one(engine)
    except exc.DBAPIError as err:
        mapped = translate(err)
        if isinstance(mapped, DatabaseUnavailable | DatabaseBusy):
            raise mapped from None
        raise DatabaseUnavailable(f"cannot use the database: {type(err.orig).__name__}") from None


def _select_one(engine: Engine) -> None:
    with reading(engine) as conn:
        conn.execute(sa.text("SELECT 1"))
