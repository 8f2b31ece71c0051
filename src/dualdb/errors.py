"""The exceptions dualdb raises.

Every error a caller can see is a :class:`DualdbError`; raw driver exceptions never escape the
library.  Messages are one line, say what to do about it, and never contain secrets.
"""

from __future__ import annotations


class DualdbError(Exception):
    """Base class of every dualdb error."""


class ConfigError(DualdbError):
    """The configuration (environment, ``.env`` or an explicit URL) is invalid."""


class InvalidInput(DualdbError):
    """An argument failed validation before any SQL ran.

    ``field`` names the offending argument or column.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class NotFound(DualdbError):
    """The requested row does not exist (or is not visible to the current user)."""


class Conflict(DualdbError):
    """The operation conflicts with the current state (duplicate, wrong worker, bad transition)."""


class PermissionDenied(DualdbError):
    """The caller is not allowed to do this (bad token, row owned by someone else)."""


class DatabaseUnavailable(DualdbError):
    """The database cannot be reached or opened."""


class DatabaseBusy(DualdbError):
    """The database stayed locked longer than the busy timeout."""


class SchemaOutOfDate(DualdbError):
    """The database is not at the migration head; ``dualdb migrate`` fixes it."""


class MigrationError(DualdbError):
    """A migration command could not run (unknown revision, refused target, failed DDL)."""


class VerificationFailed(DualdbError):
    """After ``dualdb copy`` (or ``load --verify``) a table's rows in the target differ from
    the source's: a different row count or content checksum.  ``table`` names it."""

    def __init__(self, table: str, message: str) -> None:
        self.table = table
        super().__init__(f"verification failed for table {table}: {message}")


class UnreadableRow(DualdbError):
    """A stored row dualdb cannot decode (written by a tool that bypassed the rules, or before
    they existed): that row only — listings report it and go on, a claim fails the task.

    ``entity`` (``"task"``, …), ``id`` (as stored) and ``column`` say which value; ``reason``
    says why.
    """

    def __init__(self, entity: str, id: object, column: str, reason: str) -> None:
        self.entity = entity
        self.id = id
        self.column = column
        self.reason = reason
        super().__init__(f"{entity} {id}: column {column} cannot be read: {reason}")
