"""The entry point: :func:`connect` → :class:`Database` → repositories and sessions."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy import exc

from dualdb import migrations
from dualdb import validation as v
from dualdb.auth import Claims, TokenVerifier
from dualdb.backends import WorkWaiter, backend_for
from dualdb.config import resolve
from dualdb.engine import (
    create_engine,
    ping,
    reading,
    translate,
    translated_errors,
)
from dualdb.errors import ConfigError, DatabaseUnavailable, PermissionDenied, SchemaOutOfDate
from dualdb.repositories import (
    GenerationsRepository,
    ProjectsRepository,
    ShotGenerationsRepository,
    ShotsRepository,
    TasksRepository,
    UsersRepository,
)
from dualdb.schema import DUMMY_USER_ID, TABLES
from dualdb.scope import Scope, release_pinned
from dualdb.target import Target


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

    @property
    def scope(self) -> Scope:
        """Where these repositories' calls run.

        ``with db.scope.read() as conn:`` puts the calls made inside the block (in this
        thread) into one read-only transaction, and gives its connection for queries of
        one's own; see :meth:`Scope.read`.
        """
        return self._scope


class _Sessions:
    """``session()`` for a database view: one transaction, acting as the view's actor."""

    _scope: Scope

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error."""
        scope = self._scope
        # The actor is set right after BEGIN, before any per-call SAVEPOINT, so a rolled-back
        # call cannot undo it.
        with translated_errors(), scope.transaction() as conn:
            yield Session(conn, scope.bound_to(conn))


class Session(Repositories):
    """One transaction.  Commits when the ``with`` block ends, rolls back on any error.

    Each repository call inside runs in a savepoint: a call that raises leaves nothing
    behind and the session can go on.  Not thread-safe: one session per thread.
    """

    def __init__(self, connection: sa.Connection, scope: Scope) -> None:
        super().__init__(scope)
        self.connection = connection


class ScopedDatabase(_Sessions, Repositories):
    """The same repositories, acting as one user (:meth:`Database.for_user`/``as_user``) or as
    the service (:meth:`Database.as_service`).

    Acting as a user, every read sees only that user's rows (their ``users`` row, their
    projects and everything under them) and a write to anything else is
    :class:`~dualdb.errors.PermissionDenied` — on Postgres enforced by Row Level Security
    (each transaction sets ``request.jwt.claims`` and ``SET LOCAL ROLE authenticated``, as
    PostgREST does) and by the DAL on both backends, so the errors are identical.
    """

    def __init__(self, database: Database, scope: Scope, claims: Claims | None) -> None:
        super().__init__(scope)
        self.database = database
        #: The verified (or trusted) claims; None when acting as the service.
        self.claims = claims

    @property
    def user_id(self) -> uuid.UUID | None:
        """The acting user (None for the service)."""
        return self._scope.user_id

    def __repr__(self) -> str:
        who = f"user {self.user_id}" if self.user_id is not None else "service"
        return f"ScopedDatabase({self.database.target.redacted!r}, {who})"


class Database(_Sessions, Repositories):
    """A database (SQLite or Postgres) and its repositories.

    Calls on ``db.projects`` etc. run in their own transaction each; use :meth:`session` to
    group calls into one.  Thread-safe; close it (or use it as a context manager) when done.
    """

    def __init__(
        self,
        target: Target,
        *,
        check_schema: bool = True,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.target = target
        self._backend = backend_for(target.backend)
        self._verifier = verifier
        # First, so a SQLite file in a missing folder is DatabaseUnavailable (nothing to migrate).
        self.engine = create_engine(target)
        try:
            # Checked before connecting: connecting would create an empty file.
            if check_schema and self._backend.file_missing(target):
                raise SchemaOutOfDate(
                    f"SQLite file {target.url.database} does not exist: "
                    f"run `{self._migrate_command()}` to create it"
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
            with reading(self.engine) as conn:
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
        """Rows per table, in schema order, read in one read-only transaction."""
        with self._scope.read() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in TABLES
            }

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.target.backend

    def for_user(self, access_token: str | None) -> ScopedDatabase:
        """The repositories as the user of a Supabase access token (verified first).

        The token is checked by :class:`~dualdb.auth.TokenVerifier` (``SUPABASE_JWT_SECRET``
        and/or the JWKS of ``SUPABASE_URL``); any problem is
        :class:`~dualdb.errors.PermissionDenied`.  Locally (``APP_ENV=local``), ``None``
        stands for the fixed dummy user ``00000000-0000-0000-0000-000000000000`` on the
        local SQLite file (never on Postgres).
        """
        if access_token is None:
            # Only the local SQLite file has a stand-in user; a Postgres URL given explicitly
            # while APP_ENV is unset is still a real database.
            if self.target.app_env != "local" or self._backend.remote:
                raise PermissionDenied("no access token")
            return self.as_user(DUMMY_USER_ID)
        return self._scoped(self._token_verifier().verify(access_token))

    def as_user(self, user_id: uuid.UUID | str, *, email: str | None = None) -> ScopedDatabase:
        """The repositories as ``user_id``, for trusted server code (no token is checked)."""
        uid = v.uuid_("user_id", user_id)
        return self._scoped(Claims.for_user_id(uid, email=email))

    def as_service(self) -> ScopedDatabase:
        """The repositories as the service (workers): every row; ``service_role`` on Postgres."""
        on_begin = self._backend.service_hook()
        return ScopedDatabase(self, Scope(self.engine, on_begin=on_begin), None)

    def _scoped(self, claims: Claims) -> ScopedDatabase:
        hook = self._backend.user_hook(claims)
        return ScopedDatabase(
            self, Scope(self.engine, user_id=claims.user_id, on_begin=hook), claims
        )

    def _token_verifier(self) -> TokenVerifier:
        if self._verifier is None:
            try:
                self._verifier = TokenVerifier.from_settings()
            except ConfigError as exc:
                # Nothing can verify the token: refuse it, and say what to configure.
                raise PermissionDenied(f"cannot verify access tokens: {exc}") from None
        return self._verifier

    def checkpoint(self) -> bool:
        """Fold SQLite's write-ahead log into the database file and truncate it.

        SQLite trims the log to 32 MB after checkpoints on its own (``journal_size_limit``);
        this empties it, for long-running processes that go idle after a burst of writes
        (``dualdb worker`` calls it periodically).  It never waits for readers: it returns
        False when one still needs the log.  Nothing to do on Postgres (True).
        """
        with translated_errors():
            return self._backend.checkpoint(self.engine)

    def work_waiter(self) -> WorkWaiter:
        """What an idle worker waits on between claims: wakes on change, not on a timer.

        ``LISTEN dualdb_tasks`` on Postgres (migration 0009 notifies whenever a task becomes
        ready, whoever wrote it; plain polling behind the transaction pooler, which cannot
        carry ``LISTEN``), a cheap ``PRAGMA data_version`` check every few milliseconds on
        SQLite.  It holds a connection of its own: close it when done.
        """
        with translated_errors():
            return self._backend.work_waiter(self.target, self.engine)

    def close(self) -> None:
        """Release every pooled connection (and every thread's pinned one)."""
        release_pinned(self.engine)
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


def connect(
    url: str | None = None, *, check_schema: bool = True, verifier: TokenVerifier | None = None
) -> Database:
    """Open the database at ``url``, or the one the environment selects (``APP_ENV`` …).

    ``verifier`` checks the tokens given to :meth:`Database.for_user` (default: built from
    ``SUPABASE_URL`` / ``SUPABASE_JWT_SECRET`` on first use).

    Raises :class:`~dualdb.errors.SchemaOutOfDate` when it is not at the migration head (with
    the command that fixes it), :class:`~dualdb.errors.DatabaseUnavailable` when it cannot be
    reached, :class:`~dualdb.errors.ConfigError` for bad settings.
    """
    return Database(resolve(url), check_schema=check_schema, verifier=verifier)
