"""The entry point: :func:`connect` → :class:`Database` → repositories and sessions."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy import exc

from dualdb import migrations
from dualdb.config import Target, resolve
from dualdb.engine import create_engine, ping, translate, translated_errors
from dualdb.errors import ConfigError, DatabaseUnavailable, SchemaOutOfDate
from dualdb.repositories import (
    GenerationsRepository,
    ProjectsRepository,
    ShotGenerationsRepository,
    ShotsRepository,
    TasksRepository,
    UsersRepository,
)
from dualdb.schema import TABLES
from dualdb.scope import Scope


class Repositories:
    """The repositories of one scope (a session, or one-call transactions on a database)."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self.users = UsersRepository(scope)
        self.projects = ProjectsRepository(scope)
        self.shots = ShotsRepository(scope)
        self.generations = GenerationsRepository(scope)
        self.shot_generations = ShotGenerationsRepository(scope)
        self.tasks = TasksRepository(scope)


class Session(Repositories):
    """One transaction.  Commits when the ``with`` block ends, rolls back on any error.

    Each repository call inside runs in a savepoint: a call that raises leaves nothing
    behind and the session can go on.  Not thread-safe: one session per thread.
    """

    def __init__(self, connection: sa.Connection, scope: Scope) -> None:
        super().__init__(scope)
        self.connection = connection


class Database(Repositories):
    """A database (SQLite or Postgres) and its repositories.

    Calls on ``db.projects`` etc. run in their own transaction each; use :meth:`session` to
    group calls into one.  Thread-safe; close it (or use it as a context manager) when done.
    """

    def __init__(self, target: Target, *, check_schema: bool = True) -> None:
        self.target = target
        # First, so a SQLite file in a missing folder is DatabaseUnavailable (nothing to migrate).
        self.engine = create_engine(target)
        try:
            path = target.url.database or ""
            # Checked before connecting: connecting would create an empty file.
            if (
                target.backend == "sqlite"
                and check_schema
                and path not in ("", ":memory:")
                and not Path(path).exists()
            ):
                raise SchemaOutOfDate(
                    f"SQLite file {path} does not exist: run `{self._migrate_command()}` "
                    "to create it"
                )
            ping(self.engine)
            if check_schema:
                self._check_schema()
        except BaseException:
            self.engine.dispose()
            raise
        super().__init__(Scope(self.engine))

    def _check_schema(self) -> None:
        try:
            with self.engine.connect() as conn:
                current = migrations.current_revision(conn)
        except exc.DBAPIError as err:
            raise translate(err) or DatabaseUnavailable("cannot read the database") from None
        head = migrations.head_revision()
        if current != head:
            raise SchemaOutOfDate(
                f"the database is at revision {current or 'none'}, this dualdb needs {head}: "
                f"run `{self._migrate_command()}`"
            )

    def _migrate_command(self) -> str:
        """The command that migrates this database: ``--url`` unless it is the environment's."""
        try:
            default: Target | None = resolve()
        except ConfigError:
            default = None
        if default is not None and default.url == self.target.url:
            return "dualdb migrate"
        return f"dualdb migrate --url {shlex.quote(self.target.redacted)}"

    def row_counts(self) -> dict[str, int]:
        """Rows per table, in schema order."""
        with translated_errors(), self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in TABLES
            }

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.target.backend

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error."""
        with translated_errors(), self.engine.connect() as conn, conn.begin():
            yield Session(conn, Scope(self.engine, conn))

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.target.redacted!r})"


def connect(url: str | None = None, *, check_schema: bool = True) -> Database:
    """Open the database at ``url``, or the one the environment selects (``APP_ENV`` …).

    Raises :class:`~dualdb.errors.SchemaOutOfDate` when it is not at the migration head (with
    the command that fixes it), :class:`~dualdb.errors.DatabaseUnavailable` when it cannot be
    reached, :class:`~dualdb.errors.ConfigError` for bad settings.
    """
    return Database(resolve(url), check_schema=check_schema)
