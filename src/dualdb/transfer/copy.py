"""``dualdb copy``: move projects (or everything) from one database to another, verified."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from dualdb import migrations
from dualdb import validation as v
from dualdb.backends import backend_for
from dualdb.database import Database
from dualdb.engine import reading, translated_errors
from dualdb.errors import ConfigError, InvalidInput, NotFound, SchemaOutOfDate
from dualdb.transfer.core import (
    DEFAULT_BATCH,
    ON_CONFLICT,
    OnConflict,
    ProgressCallback,
    TransferResult,
    transfer,
)
from dualdb.transfer.rows import (
    TRANSFER_TABLES,
    Row,
    TableSpec,
    count_rows,
    read_pages,
)


class DatabaseSource:
    """The rows of ``projects`` (or of every project) of a database, read on ``conn``."""

    def __init__(
        self, conn: sa.Connection, projects: Sequence[uuid.UUID] | None, batch_size: int
    ) -> None:
        self._conn = conn
        self._projects = projects
        self._batch = batch_size

    def count(self, spec: TableSpec) -> int:
        """Rows of ``spec`` in scope."""
        return count_rows(self._conn, spec, self._projects)

    def pages(self, spec: TableSpec) -> Iterator[list[Row]]:
        """Rows of ``spec`` in scope, in key order."""
        yield from read_pages(self._conn, spec, self._projects, self._batch)


@contextmanager
def snapshot(db: Database) -> Iterator[sa.Connection]:
    """One read-only transaction on ``db`` that sees one snapshot throughout."""
    options = backend_for(db.target.backend).snapshot_read_options()
    with translated_errors(), db.engine.connect() as conn:
        conn = conn.execution_options(**options)
        with conn.begin():
            yield conn


def refuse_remote(dst: Database, allow_remote: bool, verb: str) -> None:
    """ConfigError when ``dst`` is a Postgres (web) database and ``allow_remote`` is false."""
    if (backend_for(dst.target.backend).remote or dst.target.app_env == "web") and not (
        allow_remote
    ):
        raise ConfigError(
            f"refusing to {verb} the {dst.target.app_env} Postgres database "
            f"{dst.target.redacted}: pass --allow-remote if you really mean it"
        )


def check_revision(db: Database, role: str, head: str | None = None) -> str:
    """The revision of ``db``; SchemaOutOfDate (with the fixing command) if not the head."""
    head = head or migrations.head_revision()
    with translated_errors(), reading(db.engine) as conn:
        current = migrations.current_revision(conn)
    if current != head:
        raise SchemaOutOfDate(
            f"the {role} database {db.target.redacted} is at revision {current or 'none'}, "
            f"this dualdb needs {head}: run `{db._migrate_command()}`"
        )
    return current


def _same_database(src: Database, dst: Database) -> bool:
    a, b = src.target, dst.target
    return a.backend == b.backend and backend_for(a.backend).same_database(a, b)


def project_ids(values: Sequence[uuid.UUID | str] | None) -> list[uuid.UUID] | None:
    """``--project`` values as UUIDs (InvalidInput naming the bad one); None stays None."""
    if values is None:
        return None
    return sorted({v.uuid_("project", p) for p in values})


def check_batch_size(batch_size: int) -> None:
    """InvalidInput unless 1 ≤ ``batch_size`` ≤ 100,000."""
    if not 1 <= batch_size <= 100_000:
        raise InvalidInput("batch_size", "must be between 1 and 100000")


def copy(
    src_db: Database,
    dst_db: Database,
    *,
    projects: Sequence[uuid.UUID | str] | None = None,
    on_conflict: OnConflict = "fail",
    requeue_running: bool = False,
    dry_run: bool = False,
    allow_remote: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: ProgressCallback | None = None,
) -> TransferResult:
    """Copy ``projects`` (with everything under them and their owners), or every row, from
    ``src_db`` to ``dst_db``; then compare both sides table by table.

    Works between any two backends; values arrive exactly (docs/copy.md).  Rows go in
    foreign-key order, ``batch_size`` per transaction; rows already in the target unchanged
    are left alone, so rerunning an interrupted copy finishes it.  ``on_conflict`` says what
    to do with a row whose key is in the target with other content: ``"fail"`` (checked
    before anything is written), ``"skip"`` (keep the target's) or ``"overwrite"`` (where
    the queue's rules allow the change).  ``requeue_running`` turns In Progress tasks into
    Queued ones with no worker.  ``dry_run`` only counts.

    Raises :class:`~dualdb.errors.SchemaOutOfDate` unless both databases are at this
    dualdb's migration head, :class:`~dualdb.errors.ConfigError` for a Postgres target
    without ``allow_remote`` (or the same database twice), :class:`~dualdb.errors.NotFound`
    for a project the source lacks, :class:`~dualdb.errors.Conflict` for a conflicting row,
    :class:`~dualdb.errors.VerificationFailed` when the target's rows differ afterwards.
    """
    if on_conflict not in ON_CONFLICT:
        raise InvalidInput("on_conflict", f"must be one of {', '.join(ON_CONFLICT)}")
    check_batch_size(batch_size)
    ids = project_ids(projects)
    if _same_database(src_db, dst_db):
        raise ConfigError("the source and the target are the same database")
    if not dry_run:
        refuse_remote(dst_db, allow_remote, "copy into")
    head = migrations.head_revision()
    check_revision(src_db, "source", head)
    check_revision(dst_db, "target", head)
    with snapshot(src_db) as conn:
        if ids is not None:
            _check_projects(conn, ids)
        source = DatabaseSource(conn, ids, batch_size)
        return transfer(
            source,
            dst_db,
            on_conflict=on_conflict,
            requeue_running=requeue_running,
            dry_run=dry_run,
            progress=progress,
        )


def _check_projects(conn: sa.Connection, ids: list[uuid.UUID]) -> None:
    projects = TRANSFER_TABLES["projects"]
    found = {
        str(p)
        for p in conn.execute(
            sa.select(projects.c.id).where(projects.c.id.in_([str(i) for i in ids]))
        ).scalars()
    }
    missing = [str(i) for i in ids if str(i) not in found]
    if missing:
        raise NotFound(f"project {missing[0]} is not in the source database")
