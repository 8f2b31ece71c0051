"""dualdb: one schema, one migration history and one data-access layer over SQLite and Postgres."""

from dualdb.database import Database, ScopedDatabase, Session, connect
from dualdb.errors import (
    ConfigError,
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    DualdbError,
    InvalidInput,
    MigrationError,
    NotFound,
    PermissionDenied,
    SchemaOutOfDate,
    UnreadableRow,
    VerificationFailed,
)
from dualdb.transfer import copy, dump, load

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Conflict",
    "Database",
    "DatabaseBusy",
    "DatabaseUnavailable",
    "DualdbError",
    "InvalidInput",
    "MigrationError",
    "NotFound",
    "PermissionDenied",
    "SchemaOutOfDate",
    "ScopedDatabase",
    "Session",
    "UnreadableRow",
    "VerificationFailed",
    "__version__",
    "connect",
    "copy",
    "dump",
    "load",
]
