"""One migration history for both backends: Alembic, with its configuration built in code.

The functions here are what the CLI calls: :func:`upgrade`, :func:`downgrade`, :func:`status`,
:func:`check`, :func:`generate` and :func:`render_sql`.  Migrations live in ``versions/`` beside
this file and run unchanged on SQLite (batch mode) and Postgres (dialect branches).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import exc

from dualdb.backends import backend_for, backend_of
from dualdb.engine import create_engine, ping, reading, translate
from dualdb.errors import DatabaseUnavailable, DualdbError, MigrationError
from dualdb.migrations.autogen import compare_type, include_object_for
from dualdb.schema import metadata
from dualdb.target import Target

__all__ = [
    "MIGRATIONS_DIR",
    "MigrationStatus",
    "auth_problems",
    "check",
    "downgrade",
    "generate",
    "head_revision",
    "missing_triggers",
    "render_sql",
    "revisions",
    "status",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent

Progress = Callable[[str], None]


def _config() -> Config:
    cfg = Config(output_buffer=io.StringIO())
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "60")
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def revisions() -> list[str]:
    """Every revision shipped with this version of dualdb, oldest first."""
    return [r.revision for r in reversed(list(_script().walk_revisions()))]


def head_revision() -> str:
    """The newest revision shipped with this version of dualdb."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise MigrationError("no migrations found")
    return head


def _refuse_transaction_pooler(target: Target) -> None:
    if target.transaction_pooler:
        raise MigrationError(
            "migrations cannot run through Supabase's transaction pooler (port 6543): "
            "use the session pooler (port 5432) or the direct connection URL"
        )


@contextmanager
def _connection(target: Target) -> Iterator[sa.Connection]:
    """A connection for migration work, with the settings its backend needs while tables are
    rebuilt (SQLite: foreign keys off, verified afterwards; see ``Backend.migrating``)."""
    engine = create_engine(target)
    try:
        ping(engine)
        with engine.connect() as conn, backend_of(conn).migrating(conn):
            yield conn
    finally:
        engine.dispose()


def _run(target: Target, fn: Callable[[Config], None], **attributes: Any) -> None:
    cfg = _config()
    cfg.attributes.update(attributes)
    try:
        with _connection(target) as conn:
            cfg.attributes["connection"] = conn
            fn(cfg)
            conn.commit()
    except CommandError as err:
        raise MigrationError(_one_line(str(err))) from None
    except (exc.DBAPIError, exc.StatementError) as err:
        mapped = translate(err)
        if isinstance(mapped, DatabaseUnavailable):
            raise mapped from None
        raise MigrationError(
            f"migration failed: {_one_line(str(getattr(err, 'orig', err)))}"
        ) from None


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def _applied_recorder(progress: Progress | None, applied: list[str]) -> Any:
    def on_version_apply(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        revision = step.up_revision_id
        doc = step.up_revision.doc if step.up_revision is not None else ""
        applied.append(revision)
        if progress is not None:
            verb = "applied" if step.is_upgrade else "reverted"
            progress(f"{verb} {revision}: {doc}")

    return on_version_apply


def upgrade(target: Target, revision: str = "head", progress: Progress | None = None) -> list[str]:
    """Apply migrations up to ``revision`` (default ``head``); returns the revisions applied."""
    _refuse_transaction_pooler(target)
    applied: list[str] = []
    _run(
        target,
        lambda cfg: command.upgrade(cfg, revision),
        on_version_apply=_applied_recorder(progress, applied),
    )
    return applied


def downgrade(target: Target, revision: str, progress: Progress | None = None) -> list[str]:
    """Revert migrations down to ``revision`` (``base`` reverts everything)."""
    _refuse_transaction_pooler(target)
    applied: list[str] = []
    _run(
        target,
        lambda cfg: command.downgrade(cfg, revision),
        on_version_apply=_applied_recorder(progress, applied),
    )
    return applied


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands in the migration history."""

    backend: str
    url: str
    current: str | None
    head: str
    pending: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when the database is at the head revision."""
        return self.current == self.head

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output of ``dualdb status``)."""
        return {
            "backend": self.backend,
            "url": self.url,
            "current": self.current,
            "head": self.head,
            "pending": list(self.pending),
            "up_to_date": self.up_to_date,
        }


def current_revision(conn: sa.Connection) -> str | None:
    """The revision recorded in the database (None when never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def _pending(script: ScriptDirectory, current: str | None) -> list[str]:
    head = script.get_current_head()
    revs = list(script.iterate_revisions(head, current or "base"))
    return [r.revision for r in reversed(revs)]


T = TypeVar("T")


def _read(target: Target, fn: Callable[[sa.Connection], T]) -> T:
    """``fn`` on a reading connection to ``target`` (its own engine, disposed after)."""
    engine = create_engine(target)
    try:
        ping(engine)
        with reading(engine) as conn:
            return fn(conn)
    except (exc.DBAPIError, exc.StatementError) as err:
        raise translate(err) or DatabaseUnavailable("cannot read the database") from None
    finally:
        engine.dispose()


def _read_revision(target: Target) -> str | None:
    return _read(target, current_revision)


def status(target: Target) -> MigrationStatus:
    """The backend, redacted URL, current revision, head and pending revisions of ``target``."""
    script = _script()
    missing = backend_for(target.backend).file_missing(target)
    current = None if missing else _read_revision(target)
    try:
        pending = _pending(script, current)
    except CommandError:
        raise MigrationError(
            f"the database is at revision {current!r}, which this version of dualdb does not know"
        ) from None
    return MigrationStatus(
        backend=target.backend,
        url=target.redacted,
        current=current,
        head=head_revision(),
        pending=pending,
    )


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # modify_* entries come grouped per column
        return "; ".join(_describe(d) for d in diff)
    kind = diff[0]
    if kind == "add_table":
        return f"table {diff[1].name} is in the models but not in the database"
    if kind == "remove_table":
        return f"table {diff[1].name} is in the database but not in the models"
    if kind == "add_column":
        return f"column {diff[2]}.{diff[3].name} is in the models but not in the database"
    if kind == "remove_column":
        return f"column {diff[2]}.{diff[3].name} is in the database but not in the models"
    if kind in ("add_index", "add_constraint", "add_fk"):
        return f"{kind[4:]} {diff[1].name} is in the models but not in the database"
    if kind in ("remove_index", "remove_constraint", "remove_fk"):
        return f"{kind[7:]} {diff[1].name} is in the database but not in the models"
    if kind.startswith("modify_"):
        _, _schema, table, column, _info, old, new = diff
        return (
            f"column {table}.{column}: {kind[7:]} is {old!r} in the database, {new!r} in the models"
        )
    return repr(diff)


def _check_constraints(conn: sa.Connection) -> list[str]:
    """Alembic does not compare CHECK constraints; compare their names per table."""
    inspector = sa.inspect(conn)
    problems: list[str] = []
    live_tables = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in live_tables:
            continue
        want = {
            str(c.name)
            for c in table.constraints
            if isinstance(c, sa.CheckConstraint) and c.name is not None
        }
        have = {
            str(c["name"]) for c in inspector.get_check_constraints(table.name) if c.get("name")
        }
        problems += [
            f"check {n} is in the models but not in the database" for n in sorted(want - have)
        ]
        problems += [
            f"check {n} is in the database but not in the models" for n in sorted(have - want)
        ]
    return problems


def missing_triggers(conn: sa.Connection) -> list[tuple[str, str]]:
    """The ``(table, trigger)`` pairs the migrations create that the database lacks."""
    backend = backend_of(conn)
    return sorted(backend.triggers() - backend.live_triggers(conn))


def _check_triggers(conn: sa.Connection) -> list[str]:
    """The triggers that keep the queue's rules (Alembic knows nothing of triggers)."""
    backend = backend_of(conn)
    want = backend.triggers()
    have = backend.live_triggers(conn)
    return [
        f"trigger {name} on {table} is in the models but not in the database"
        for table, name in sorted(want - have)
    ] + [
        f"trigger {name} on {table} is in the database but not in the models"
        for table, name in sorted(have - want)
    ]


def auth_problems(target: Target) -> list[str]:
    """Problems with the ``auth`` functions of ``target`` (``auth.uid()``; see ``dualdb check``)."""
    return _read(target, lambda conn: backend_of(conn).auth_problems(conn))


def check(target: Target) -> list[str]:
    """Differences between the live schema of ``target`` and the models (empty means none)."""
    if backend_for(target.backend).file_missing(target):
        return [f"SQLite file {target.url.database} does not exist: run `dualdb migrate`"]
    engine = create_engine(target)
    try:
        ping(engine)
        with reading(engine) as conn:
            problems: list[str] = []
            current = current_revision(conn)
            head = head_revision()
            if current != head:
                problems.append(
                    f"database is at revision {current or 'base'}, head is {head}: "
                    "run `dualdb migrate`"
                )
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": compare_type,
                    "include_object": include_object_for(conn.dialect.name),
                    "target_metadata": metadata,
                },
            )
            problems += [_describe(d) for d in compare_metadata(ctx, metadata)]
            problems += _check_constraints(conn)
            if current == head:
                problems += _check_triggers(conn)
                problems += backend_of(conn).schema_problems(conn)
            problems += backend_of(conn).auth_problems(conn)
            return problems
    except (exc.DBAPIError, exc.StatementError) as err:
        raise translate(err) or DatabaseUnavailable("cannot read the database") from None
    finally:
        engine.dispose()


def _next_rev_id(script: ScriptDirectory) -> str:
    numbers = [int(r.revision) for r in script.walk_revisions() if r.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def generate(target: Target, message: str) -> Path | None:
    """Autogenerate a migration from the difference between the models and ``target``.

    ``target`` must be at the head revision.  Returns the new file, or None when the models
    and the database already agree.
    """
    if not message.strip():
        raise MigrationError("a migration needs a message: dualdb generate -m 'what changed'")
    _refuse_transaction_pooler(target)
    st = status(target)
    if not st.up_to_date:
        raise MigrationError(
            f"the database is at {st.current or 'base'}, not at head {st.head}: "
            "run `dualdb migrate` first, then generate"
        )
    script = _script()
    rev_id = _next_rev_id(script)
    written: list[Path] = []

    def directives(context: Any, revision: Any, directives: list[MigrationScript]) -> None:
        if (
            directives
            and directives[0].upgrade_ops is not None
            and directives[0].upgrade_ops.is_empty()
        ):
            directives[:] = []

    def run(cfg: Config) -> None:
        result = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
        scripts = result if isinstance(result, list) else [result]
        written.extend(Path(s.path) for s in scripts if s is not None)

    _run(target, run, process_revision_directives=directives)
    return written[0] if written else None


_REV = re.compile(r"^[A-Za-z0-9_]+$")


def render_sql(
    from_rev: str | None = None, to_rev: str = "head", dialect: str = "postgresql"
) -> str:
    """Offline SQL for ``from_rev`` → ``to_rev`` (version-table updates included).

    The output is what ``dualdb migrate`` would run, for review or ``supabase db push``.
    """
    for rev in (from_rev, to_rev):
        if rev is not None and not _REV.match(rev):
            raise MigrationError(f"not a revision: {rev!r}")
    cfg = _config()
    cfg.set_main_option("dualdb.offline_dialect", dialect)
    span = f"{from_rev}:{to_rev}" if from_rev else to_rev
    try:
        command.upgrade(cfg, span, sql=True)
    except CommandError as err:
        raise MigrationError(_one_line(str(err))) from None
    except DualdbError:
        raise
    buffer = cfg.output_buffer
    assert isinstance(buffer, io.StringIO)
    return buffer.getvalue()
