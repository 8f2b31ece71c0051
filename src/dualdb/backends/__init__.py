"""One object per database backend: everything that differs between SQLite and Postgres.

:class:`~dualdb.backends.sqlite.SqliteBackend` and
:class:`~dualdb.backends.postgres.PostgresBackend` implement :class:`Backend`: the engine
factory and connection settings, how transactions begin, row locks, the Row Level Security
hook, migration-time settings, the triggers and functions ``dualdb check`` expects, and the
per-backend SQL constructs (:mod:`dualdb.backends.constructs`).  Nothing else compares dialect
names (except frozen migrations and the column types' dialect hooks).
"""

from __future__ import annotations

import sqlalchemy as sa

from dualdb.backends.base import READ_ONLY, Backend, TransactionHook, WorkWaiter
from dualdb.backends.postgres import PostgresBackend
from dualdb.backends.sqlite import SqliteBackend

__all__ = [
    "READ_ONLY",
    "Backend",
    "PostgresBackend",
    "SqliteBackend",
    "TransactionHook",
    "WorkWaiter",
    "backend_for",
    "backend_for_scheme",
    "backend_of",
    "file_backend",
]

_BY_NAME: dict[str, Backend] = {b.name: b for b in (SqliteBackend(), PostgresBackend())}


def backend_for(name: str) -> Backend:
    """The backend of the dialect ``name`` (``"sqlite"`` or ``"postgresql"``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported database backend {name!r}") from None


def backend_for_scheme(scheme: str) -> Backend | None:
    """The backend of a URL scheme (``sqlite``, ``postgres``, ``postgresql+psycopg`` …), if any."""
    scheme = scheme.lower()
    for backend in _BY_NAME.values():
        if scheme == backend.driver or scheme in backend.schemes:
            return backend
    return None


def file_backend() -> Backend:
    """The backend of a plain file path (a local database file)."""
    return _BY_NAME[SqliteBackend.name]


def backend_of(bind: sa.Engine | sa.Connection) -> Backend:
    """The backend an engine or connection talks to."""
    return backend_for(bind.dialect.name)
