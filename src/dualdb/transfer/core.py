"""Writing rows from a source (a database or a dump) into a database, then verifying them.

The one writer behind ``dualdb copy`` and ``dualdb load``.  Rows go in foreign-key order
(:data:`~dualdb.transfer.rows.SPECS`), a batch per transaction.  A row whose key is already
in the target with the same content is left alone, so a run interrupted at any point (even by
SIGKILL: every committed batch is whole) is finished by running it again.

The database's rules hold for copied rows as for any other write (migration 0006): nothing is
switched off.  ``task_dependencies`` is never written — the triggers derive it from
``tasks.dependant_on`` — and ``tasks.unmet_dependencies`` is recomputed by them; both are
verified afterwards like every other column.  A task is inserted only after every task it
depends on, so the triggers accept an exact copy: a Complete or In Progress task finds its
dependencies Complete, and a Queued task gets the same unmet count it had.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from dualdb.backends import backend_of
from dualdb.database import Database
from dualdb.engine import reading, translated_errors
from dualdb.errors import Conflict, VerificationFailed
from dualdb.hotpath import Statement
from dualdb.transfer.rows import (
    IN_CHUNK,
    SPEC,
    SPECS,
    Checksum,
    Row,
    TableSpec,
    canonical_line,
    fetch_by_key,
    fetch_edges,
    same_content,
    to_params,
)
from dualdb.types import TaskStatus

#: What to do with a row whose key is in the target with different content.
OnConflict = Literal["fail", "skip", "overwrite"]
ON_CONFLICT: tuple[str, ...] = ("fail", "skip", "overwrite")

#: Called after each committed batch: (table, rows done, rows in all).
ProgressCallback = Callable[[str, int, int], None]

DEFAULT_BATCH = 1000


class Source(Protocol):
    """Where rows come from: each table's rows in key order, a page at a time."""

    def count(self, spec: TableSpec) -> int:
        """How many rows :meth:`pages` gives for ``spec``."""
        ...

    def pages(self, spec: TableSpec) -> Iterator[list[Row]]:
        """The rows of ``spec``, in key order."""
        ...


@dataclass
class TableResult:
    """What happened to one table's rows."""

    rows: int = 0
    inserted: int = 0
    #: Already in the target, identical (a rerun finds the first run's rows here).
    identical: int = 0
    #: In the target with different content: left (skip), replaced (overwrite).
    conflicting: int = 0
    #: The target's rows after the run, compared with the source's (None: not verified).
    checksum: str | None = None


@dataclass
class TransferResult:
    """What a copy or load did (or, with ``dry_run``, would do), table by table."""

    tables: dict[str, TableResult] = field(default_factory=dict)
    dry_run: bool = False
    #: Every table's rows compared, after writing (not on a dry run).
    verified: bool = False

    @property
    def inserted(self) -> int:
        """Rows written in all."""
        return sum(t.inserted for t in self.tables.values())


class _ReadAhead(Iterator[list[Row]]):
    """A source's pages, the next one read early when :meth:`read_next` is called: while the
    target's server stores the current page (a ``COPY``), instead of after it.

    An error reading a page is raised where that page is asked for, as without reading
    ahead: the page being written is not undone by it.
    """

    def __init__(self, pages: Iterator[list[Row]]) -> None:
        self._pages = pages
        self._next: list[Row] | None = None
        self._error: Exception | None = None
        self._done = False

    def read_next(self) -> None:
        """Read the next page now, unless it has been read (or there is none)."""
        if self._next is not None or self._error is not None or self._done:
            return
        try:
            self._next = next(self._pages)
        except StopIteration:
            self._done = True
        except Exception as err:  # (raised by __next__, where the loop asks for the page)
            self._error = err

    def __next__(self) -> list[Row]:
        self.read_next()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._next is None:
            raise StopIteration
        page, self._next = self._next, None
        return page


def requeued(spec: TableSpec, row: Row) -> Row:
    """A task that was In Progress as Queued, its worker cleared (``--requeue-running``)."""
    if spec.name != "tasks":
        return row
    values = dict(zip(spec.columns, row, strict=True))
    if values["status"] != TaskStatus.IN_PROGRESS.value:
        return row
    values.update(
        status=TaskStatus.QUEUED.value,
        worker_id=None,
        heartbeat_at=None,
        generation_started_at=None,
    )
    return tuple(values[c] for c in spec.columns)


class _Mapped:
    """A source with every row passed through ``fn``."""

    def __init__(self, source: Source, fn: Callable[[TableSpec, Row], Row]) -> None:
        self._source = source
        self._fn = fn

    def count(self, spec: TableSpec) -> int:
        return self._source.count(spec)

    def pages(self, spec: TableSpec) -> Iterator[list[Row]]:
        for page in self._source.pages(spec):
            yield [self._fn(spec, r) for r in page]


def _conflict(spec: TableSpec, row: Row, *, checked: bool = True) -> Conflict:
    key = ", ".join(str(k) for k in spec.key_of(row))
    written = "nothing was written" if checked else "it changed during the copy"
    return Conflict(
        f"{spec.name} {key} exists in the target with different content "
        f"({written}): pass --on-conflict skip or overwrite"
    )


def transfer(
    source: Source,
    dst: Database,
    *,
    on_conflict: OnConflict = "fail",
    requeue_running: bool = False,
    dry_run: bool = False,
    verify: bool = True,
    progress: ProgressCallback | None = None,
) -> TransferResult:
    """Write ``source``'s rows into ``dst`` and, with ``verify``, compare them afterwards.

    Conflicts are looked for before anything is written when ``on_conflict`` is ``"fail"``
    (and on a dry run), so a refused copy writes nothing.
    """
    if requeue_running:
        source = _Mapped(source, requeued)
    result = TransferResult(dry_run=dry_run)
    if on_conflict == "fail" or dry_run:
        _plan(source, dst, result, fail=on_conflict == "fail" and not dry_run, counting=dry_run)
        if dry_run:
            return result
    skipped: dict[str, set[tuple[Any, ...]]] = {}
    for spec in SPECS:
        if spec.derived:
            continue
        table = result.tables.setdefault(spec.name, TableResult())
        table.inserted = table.identical = table.conflicting = 0
        skipped[spec.name] = _write_table(source, dst, spec, on_conflict, table, progress)
    if verify:
        verify_rows(source, dst, result, skipped)
    return result


def _plan(
    source: Source, dst: Database, result: TransferResult, *, fail: bool, counting: bool
) -> None:
    """Look for conflicts (``fail``: raise the first) and, when ``counting``, count what
    would be inserted, found identical or found conflicting."""
    with reading(dst.engine) as conn, translated_errors():
        for spec in SPECS:
            if spec.derived:
                continue
            table = result.tables.setdefault(spec.name, TableResult())
            if not counting and _empty(conn, spec):
                continue  # nothing there to conflict with (a fresh target: no second read)
            for page in source.pages(spec):
                found = fetch_by_key(conn, spec, (r[spec.key[0]] for r in page))
                for row in page:
                    table.rows += 1
                    there = found.get(spec.key_of(row))
                    if there is None:
                        table.inserted += 1
                    elif same_content(spec, there, row):
                        table.identical += 1
                    elif fail:
                        raise _conflict(spec, row)
                    else:
                        table.conflicting += 1


def _empty(conn: sa.Connection, spec: TableSpec) -> bool:
    return conn.execute(sa.select(sa.literal(1)).select_from(spec.table).limit(1)).first() is None


@dataclass
class _Page:
    """What writing one page did (applied to the table's counts once committed)."""

    inserted: int = 0
    identical: int = 0
    conflicting: int = 0
    skipped: list[tuple[Any, ...]] = field(default_factory=list)
    #: Tasks whose dependencies are not in the target yet (for the pages that follow).
    waiting: list[Row] = field(default_factory=list)


def _write_table(
    source: Source,
    dst: Database,
    spec: TableSpec,
    on_conflict: OnConflict,
    table: TableResult,
    progress: ProgressCallback | None,
) -> set[tuple[Any, ...]]:
    """Write one table, a transaction per page; the keys of the rows left as they were."""
    total = source.count(spec)
    table.rows = total
    skipped: set[tuple[Any, ...]] = set()
    waiting: list[Row] = []  # tasks whose dependencies are not in the target yet
    done = 0
    # The triggers' plans were made when the table was small: a planner that still believes
    # so scans the whole table for each row inserted (measured: quadratic on Postgres).  The
    # statistics are refreshed each time the rows written double: O(log n) ANALYZEs.
    analyze_at = 1
    stats = (spec.name, "task_dependencies") if spec.name == "tasks" else (spec.name,)
    # Into a table that was empty when its copy began there is nothing to compare a page
    # with: its rows go in without their keys being looked up.  Should one be there after all
    # (written meanwhile by someone else), the insert fails and rolls back, and from that
    # page on every page is looked up first.
    with reading(dst.engine) as conn, translated_errors():
        look_up = not _empty(conn, spec)
    pages = _ReadAhead(source.pages(spec))
    for page in pages:
        with translated_errors():
            while True:
                try:
                    with dst.engine.begin() as conn:
                        outcome = _write_page(
                            conn, spec, page, waiting, on_conflict, look_up, pages.read_next
                        )
                        analyze_at = _refresh(
                            conn, stats, table.inserted + outcome.inserted, analyze_at
                        )
                    break
                except sa.exc.IntegrityError:
                    if look_up:
                        raise
                    # A key was there after all: the page again, looked up.  Only the page's
                    # rows are: a task still waiting from an earlier page that someone else
                    # wrote meanwhile fails this again, as a Conflict naming the key.
                    look_up = True
        table.inserted += outcome.inserted
        table.identical += outcome.identical
        table.conflicting += outcome.conflicting
        skipped.update(outcome.skipped)
        waiting = outcome.waiting
        done += len(page)
        if progress is not None:
            progress(spec.name, done, total)
    if done != total:
        # The pages and the count read one snapshot: a difference is a paging fault, which
        # would otherwise go unseen (verification reads the same pages).
        raise VerificationFailed(spec.name, f"{total} rows in the source, {done} were read")
    while waiting:
        with translated_errors(), dst.engine.begin() as conn:
            inserted, still = _insert_tasks(conn, spec, waiting)
        if not inserted:
            raise Conflict(
                f"task {still[0][0]} depends on tasks that are neither in the source nor in "
                "the target: nothing more could be written"
            )
        table.inserted += inserted
        waiting = still
    return skipped


def _write_page(
    conn: sa.Connection,
    spec: TableSpec,
    page: list[Row],
    waiting: list[Row],
    on_conflict: OnConflict,
    look_up: bool,
    meanwhile: Callable[[], object] | None = None,
) -> _Page:
    """Write one page (after the tasks still ``waiting``), comparing each row with the
    target's row of the same key when ``look_up``; what it did.  ``meanwhile`` is handed to
    the bulk load (:meth:`~dualdb.backends.base.Backend.copy_rows`)."""
    out = _Page()
    new: list[Row] = page
    if look_up:
        found = fetch_by_key(conn, spec, (r[spec.key[0]] for r in page))
        new = []
        for row in page:
            there = found.get(spec.key_of(row))
            if there is None:
                new.append(row)
            elif same_content(spec, there, row):
                out.identical += 1
            elif on_conflict == "skip":
                out.conflicting += 1
                out.skipped.append(spec.key_of(row))
            elif on_conflict == "overwrite":
                out.conflicting += 1
                _overwrite(conn, spec, row)
            else:  # a row changed in the target since the check
                raise _conflict(spec, row, checked=False)
    if spec.name == "tasks":
        out.inserted, out.waiting = _insert_tasks(conn, spec, waiting + new, meanwhile)
    else:
        out.inserted = _insert(conn, spec, new, meanwhile)
    return out


def _refresh(conn: sa.Connection, stats: tuple[str, ...], inserted: int, at: int) -> int:
    """Refresh the planner's statistics of ``stats`` once ``inserted`` reaches ``at``; the
    count at which to refresh them next."""
    if inserted < at:
        return at
    backend_of(conn).refresh_statistics(conn, stats)
    return 2 * inserted


def _insert(
    conn: sa.Connection,
    spec: TableSpec,
    rows: Sequence[Row],
    meanwhile: Callable[[], object] | None = None,
) -> int:
    """Insert ``rows`` the fastest way the backend has: ``COPY`` on Postgres for a full
    batch, else one ``executemany`` of a statement compiled once, on the driver."""
    if not rows:
        return 0
    if not backend_of(conn).copy_rows(conn, spec.table, spec.columns, rows, meanwhile):
        statement = _insert_statement(spec.name, conn.dialect)
        statement.many(conn.connection.dbapi_connection, spec.columns, rows)
    return len(rows)


@functools.lru_cache(maxsize=64)
def _insert_statement(table: str, dialect: Dialect) -> Statement:
    # Every column is given, in the table's order (as rows hold them).
    return Statement(SPEC[table].table.insert(), dialect)


def _overwrite(conn: sa.Connection, spec: TableSpec, row: Row) -> None:
    """Replace the target's row by ``row`` where the database's rules allow the change.

    ``unmet_dependencies`` stays the database's to count; a task change the queue's rules
    refuse (a finished task never changes) is a Conflict naming the task.
    """
    params = to_params(spec, row)
    keys = {spec.columns[i] for i in spec.key}
    values = {k: v for k, v in params.items() if k not in keys and k != "unmet_dependencies"}
    where = sa.and_(*(spec.table.c[k] == params[k] for k in keys))
    try:
        with conn.begin_nested():
            conn.execute(sa.update(spec.table).where(where).values(values))
    except sa.exc.DBAPIError as err:
        first = str(err.orig).strip().splitlines()[0] if err.orig is not None else ""
        raise Conflict(f"{spec.name} {row[spec.key[0]]} cannot be overwritten: {first}") from None


def _insert_tasks(
    conn: sa.Connection,
    spec: TableSpec,
    candidates: list[Row],
    meanwhile: Callable[[], object] | None = None,
) -> tuple[int, list[Row]]:
    """Insert the candidates whose dependencies are in the target, dependencies first.

    Returns how many went in and the rest (waiting for tasks of a later page).
    """
    deps_at = spec.columns.index("dependant_on")
    ids = {r[0] for r in candidates}
    outside = sorted({d for r in candidates for d in r[deps_at] or () if d not in ids})
    present: set[str] = set()
    tasks = spec.table
    for i in range(0, len(outside), IN_CHUNK):
        query = sa.select(tasks.c.id).where(tasks.c.id.in_(outside[i : i + IN_CHUNK]))
        present.update(str(v) for v in conn.execute(query).scalars())
    inserted = 0
    remaining = candidates
    while remaining:
        level = [r for r in remaining if all(d in present for d in r[deps_at] or ())]
        if not level:
            break
        _insert(conn, spec, level, meanwhile)
        inserted += len(level)
        present.update(r[0] for r in level)
        remaining = [r for r in remaining if r[0] not in present]
    return inserted, remaining


def verify_rows(
    source: Source,
    dst: Database,
    result: TransferResult,
    skipped: dict[str, set[tuple[Any, ...]]] | None = None,
) -> None:
    """Compare every source row with the target's row of the same key, table by table.

    Both sides' rows are counted and hashed the same way (:class:`Checksum`), in key order;
    ``task_dependencies`` is compared for the tasks of the source.  Rows ``skipped`` (left as
    the target had them) are left out on both sides.  The first difference is
    :class:`VerificationFailed` naming the table.
    """
    skipped = skipped or {}
    with reading(dst.engine) as conn, translated_errors():
        for spec in SPECS:
            left_out = skipped.get(spec.name, set())
            ours, theirs = Checksum(), Checksum()
            previous: Row | None = None
            for page in source.pages(spec):
                if spec.derived:
                    # The edges of a task left as the target had it follow that task's array.
                    kept = skipped.get("tasks", set())
                    there = _edges_between(conn, page, previous)
                    previous = page[-1]
                    for row in page:
                        if (row[0],) not in kept:
                            ours.add(spec, row)
                    for row in there:
                        if (row[0],) not in kept:
                            theirs.add(spec, row)
                    continue
                found = fetch_by_key(conn, spec, (r[spec.key[0]] for r in page))
                for row in page:
                    key = spec.key_of(row)
                    if key in left_out:
                        continue
                    line = (canonical_line(spec, row) + "\n").encode()
                    ours.add_encoded(line)
                    if (other := found.get(key)) is not None:
                        # The same text has the same canonical line: made once.
                        if other == row:
                            theirs.add_encoded(line)
                        else:
                            theirs.add_line(canonical_line(spec, other))
            if ours.rows != theirs.rows:
                raise VerificationFailed(
                    spec.name, f"{ours.rows} rows in the source, {theirs.rows} in the target"
                )
            if ours.digest != theirs.digest:
                raise VerificationFailed(
                    spec.name, f"content differs ({ours.digest} against {theirs.digest})"
                )
            table = result.tables.setdefault(spec.name, TableResult(rows=ours.rows))
            table.checksum = ours.digest
    result.verified = True


def _edges_between(conn: sa.Connection, page: list[Row], previous: Row | None) -> list[Row]:
    """The target's edges of the page's tasks, between the previous page's last key and this
    page's last key (so a task whose edges span two pages is counted once)."""
    rows = fetch_edges(conn, (r[0] for r in page))
    return [r for r in rows if (previous is None or r > previous) and r <= page[-1]]


__all__ = [
    "DEFAULT_BATCH",
    "ON_CONFLICT",
    "SPEC",
    "OnConflict",
    "ProgressCallback",
    "Source",
    "TableResult",
    "TransferResult",
    "transfer",
    "verify_rows",
]
