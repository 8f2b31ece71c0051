"""The task queue: claim, heartbeat, complete, fail, cancel, release, requeue stale work.

Lifecycle (see docs/queue.md)::

    Pending --release--> Queued --claim--> In Progress --complete--> Complete
                           ^                    |  \\--fail--------> Failed --cascade--> Cancelled
                           |--fail(retry) / requeue_stale / release_claim
    any unfinished --cancel--> Cancelled (and every dependent, transitively)

Readiness is explicit: ``tasks.unmet_dependencies`` counts dependencies that are not yet
Complete (kept in step through the ``task_dependencies`` edges by the database's triggers,
migration 0006, whoever writes), so a claim reads the oldest
row of the partial index ``ix_tasks_ready`` — its cost does not depend on how many tasks are
finished or blocked.

On Postgres the workers' verbs (claim, heartbeat, complete, fail, release_claim,
requeue_stale) are SQL functions in the database (migration 0008), which workers in any
language call; this module calls the same functions, so the semantics have one implementation
there.  They claim with ``FOR UPDATE SKIP LOCKED``.  SQLite has no stored functions: this
module runs the same statements itself: a claim is a single ``UPDATE … RETURNING``, atomic
because SQLite's write statement takes the write lock before it reads.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY as PG_ARRAY

from dualdb import validation as v
from dualdb.access import owned_projects
from dualdb.errors import (
    Conflict,
    DualdbError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    UnreadableRow,
)
from dualdb.hotpath import Statement
from dualdb.records import Task
from dualdb.schema import (
    READY_SQL,
    RUNNING_SQL,
    task_dependencies,
    tasks,
)
from dualdb.scope import Scope
from dualdb.types import UNFINISHED_STATUSES, TaskStatus, Timestamp, Unreadable

log = logging.getLogger("dualdb")

#: Attempts (claims) a task gets before a stale or failed-with-retry task is marked Failed.
DEFAULT_MAX_ATTEMPTS = 3
#: The longest ``requeue_stale`` age: a heartbeat older than a century is no heartbeat.
MAX_STALE_AGE = timedelta(days=36_500)
#: Unreadable rows one claim fails before giving up (and answering "nothing ready").
MAX_UNREADABLE_PER_CLAIM = 100

QUEUED = TaskStatus.QUEUED.value
PENDING = TaskStatus.PENDING.value
RUNNING = TaskStatus.IN_PROGRESS.value
COMPLETE = TaskStatus.COMPLETE.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value
UNFINISHED = UNFINISHED_STATUSES


def _now() -> datetime:
    return datetime.now(UTC)


def _sql_verb(function: str, *args: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """``SELECT … FROM dualdb.<function>(args)``: a worker verb of migration 0008, read as task
    rows through the columns' types (so JSON arrives as text, and an unreadable value becomes
    a marker instead of failing in the driver)."""
    call = getattr(sa.func.dualdb, function)(*args)
    rows = call.table_valued(*(sa.column(c.name, c.type) for c in tasks.c), name="verb")
    return sa.select(*(rows.c[name] for name in Task.field_names()))


def _arg(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.ColumnElement[Any]:
    return sa.bindparam(name) if type_ is None else sa.cast(sa.bindparam(name), type_)


#: The workers' verbs on Postgres: one function call, one round trip each.
_SQL_VERBS = {
    "claim_many": _sql_verb(
        "claim_tasks",
        _arg("worker"),
        _arg("types", PG_ARRAY(sa.Text())),
        _arg("max_tasks", sa.Integer()),
    ),
    "heartbeat": _sql_verb("heartbeat_task", _arg("key"), _arg("worker")),
    "complete": _sql_verb("complete_task", _arg("key"), _arg("worker"), _arg("location")),
    "fail": _sql_verb(
        "fail_task",
        _arg("key"),
        _arg("worker"),
        _arg("error"),
        _arg("retry"),
        _arg("max_attempts", sa.Integer()),
    ),
    "release_claim": _sql_verb("release_claim", _arg("key"), _arg("worker")),
    "requeue_stale": _sql_verb(
        "requeue_stale", _arg("older_than"), _arg("max_attempts", sa.Integer())
    ),
}


#: The columns of a :class:`~dualdb.records.Task`, in its fields' order.
_TASK_COLUMNS = tuple(tasks.c[name] for name in Task.field_names())


class _FullPath(Exception):
    """The hot path met what only the full path handles, having written nothing: the verb
    runs again through SQLAlchemy, which gives the verdict."""


def _held_by(key: Any, worker: Any) -> tuple[sa.ColumnElement[bool], ...]:
    """The task ``key``, In Progress and claimed by ``worker`` (values or bind parameters)."""
    return (tasks.c.id == key, tasks.c.status == RUNNING, tasks.c.worker_id == worker)


#: Where a task row has its params (RETURNING and reads give the record's fields in order).
_PARAMS_AT = Task.field_names().index("params")


def _stamped_on_completion(row: Sequence[Any]) -> bool:
    """Whether the database may write a completed task's own row again after the update
    returned it (``row``, as the driver gave it): migration 0006's generation trigger stamps
    ``generation_processed_at`` on a task whose params have a ``shot_id`` (not null), and no
    other trigger writes the completed row (releasing dependents writes theirs).

    Asked of the stored text, not of the decoded params: SQLite's ``json_type`` takes the
    first of duplicated keys and Python the last, so any ``"shot_id"`` in the text counts.
    ``test_queue.py`` compares what a completion returns with the row."""
    params = row[_PARAMS_AT]
    return not isinstance(params, str) or '"shot_id"' in params


class TaskQueue:
    """The queue's verbs: the one writer of a task's queue state in Python.

    :class:`~dualdb.repositories.TasksRepository` owns one and exposes its verbs
    (``db.tasks.claim(...)``); the rows themselves are created, edited and deleted by the
    repository.  ``check_writable`` is the repository's rule for "may the acting user write
    this task" (the same rule every other write of the repository follows).
    """

    def __init__(
        self, scope: Scope, check_writable: Callable[[sa.Connection, uuid.UUID], None]
    ) -> None:
        self._scope = scope
        self._check_writable = check_writable

    # --- helpers -------------------------------------------------------------------------

    def _task(self, conn: sa.Connection, key: uuid.UUID) -> Task:
        row = conn.execute(sa.select(tasks).where(tasks.c.id == key)).first()
        if row is None:
            raise NotFound(f"task {key} not found")
        return Task.from_row(row)

    def _visible_task(self, conn: sa.Connection, key: uuid.UUID) -> Task:
        """The task, if the acting user may write it (same rule as every other write)."""
        self._check_writable(conn, key)
        return self._task(conn, key)

    def _owner_filter(
        self, project_id: sa.ColumnElement[Any] = tasks.c.project_id
    ) -> list[sa.ColumnElement[bool]]:
        owned = owned_projects(self._scope)
        return [] if owned is None else [project_id.in_(owned)]

    def _clock(self, minus: timedelta | None = None) -> sa.ColumnElement[datetime]:
        """The queue's clock, read by each statement as it runs (so after any lock wait).

        Postgres uses the server's ``clock_timestamp()``: one clock for workers on many
        machines.  SQLite (one machine) reads the app's clock through a function dualdb
        registers on its connections, once per statement, after the statement took the
        write lock (:meth:`~dualdb.backends.Backend.clock`).  Either way a task never appears
        to start before the dependency it waited for completed.  ``minus`` (how long ago):
        on SQLite, whose stored times are text, the app's clock now, minus it.
        """
        clock = self._scope.backend.clock()
        if minus is None:
            return sa.type_coerce(clock, Timestamp())
        if self._scope.backend.server_clock:
            return sa.type_coerce(clock - minus, Timestamp())
        return sa.literal(_now() - minus, Timestamp())

    def _worker_verb(self, verb: str) -> None:
        """Workers act as the service: a signed-in user never runs tasks (as through the API,
        where the database refuses it; checked here first so both backends say the same)."""
        if self._scope.user_id is not None:
            raise PermissionDenied(
                f"cannot {verb.replace('_', ' ')}: a signed-in user does not run tasks "
                "(workers act as the service)"
            )

    # --- the hot path (:mod:`dualdb.hotpath`) ------------------------------------------------

    @functools.cached_property
    def _compiled(self) -> dict[str, Statement]:
        return {}

    def _statement(self, name: str) -> Statement:
        """The statement ``name`` compiled once: a function of migration 0008 on Postgres,
        dualdb's own claim/complete/read-back on SQLite."""
        statement = self._compiled.get(name)
        if statement is None:
            if self._scope.backend.queue_functions:
                source: sa.ClauseElement = _SQL_VERBS[name]
            elif name == "claim":
                source = self._claim_many_any
            elif name == "claim_one":
                source = self._claim_many_statement(typed=False, one=True)
            elif name == "complete":
                source = self._complete_statement
            else:  # "task": one task by id
                source = sa.select(*_TASK_COLUMNS).where(tasks.c.id == sa.bindparam("key"))
            statement = self._compiled[name] = Statement(source, self._scope.engine.dialect)
        return statement

    def _driver_tasks(self, name: str, driver: Any, params: Mapping[str, Any]) -> list[Task]:
        """Run statement ``name`` on the driver's connection: the tasks it returns
        (:class:`~dualdb.errors.UnreadableRow` if one does not decode)."""
        statement = self._statement(name)
        fetched = statement.fetch(driver, params)
        if not fetched:
            return []
        build = statement.builder(Task, Task.from_values)
        return [build(row) for row in fetched]

    def _function(self, verb: str, **params: Any) -> list[Task] | None:
        """Postgres: the database's function for ``verb``, one statement that is its own
        transaction, on the driver's connection — None where the scope does not drive
        (session, RLS actor)."""
        if not (self._scope.backend.queue_functions and self._scope.drives):
            return None
        return [Task.from_values(r) for r in self._scope.write_rows(self._statement(verb), params)]

    # --- verbs ---------------------------------------------------------------------------

    def _ready_pick(self, typed: bool, limit: sa.BindParameter[int] | int) -> sa.Select[Any]:
        """``SELECT id`` of the ``limit`` oldest ready tasks, read from the partial ready index
        (SQLite; Postgres claims with migration 0008's ``claim_tasks``).

        The predicate is a literal (not bound parameters) so the planner can match the
        partial index, and the index is named (``INDEXED BY``): without statistics SQLite's
        planner prefers ``ix_tasks_status_created_at`` and would walk every blocked task.
        """
        index = "ix_tasks_ready_by_type" if typed else "ix_tasks_ready"

        def col(name: str) -> sa.ColumnElement[Any]:
            return sa.literal_column(name)

        pick = (
            sa.select(col("id"))
            .select_from(sa.text(f"tasks INDEXED BY {index}"))
            .where(sa.text(READY_SQL))
            .order_by(col("created_at"), col("id"))
            .limit(limit)
        )
        if typed:
            pick = pick.where(col("task_type").in_(sa.bindparam("types", expanding=True)))
        return pick

    def claim(self, worker_id: str, task_types: Sequence[str] | None = None) -> Task | None:
        """Atomically take the oldest ready task (``Queued``, every dependency Complete).

        Sets it ``In Progress`` with the worker, claim and heartbeat time, attempts + 1.
        Returns None when nothing is ready.  Safe under any number of processes/machines.
        (:meth:`claim_many` with a limit of one.)
        """
        claimed = self.claim_many(worker_id, 1, task_types)
        return claimed[0] if claimed else None

    def claim_many(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None = None
    ) -> list[Task]:
        """Atomically take up to ``limit`` (1 to 1,000) of the oldest ready tasks, oldest first.

        Each is set ``In Progress`` as :meth:`claim` sets one; the list is empty when nothing
        is ready.  One statement: ``dualdb.claim_tasks(…, max_tasks)`` on Postgres, one
        ``UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`` on SQLite (``id = (SELECT …
        LIMIT 1)`` for one task; SQLite takes the write lock before it reads, as ``BEGIN
        IMMEDIATE`` would).  A row that does not decode is
        marked Failed and left out (the claim then tries to take another in its place), as
        :meth:`claim` does.
        """
        self._worker_verb("claim")
        worker = v.text("worker_id", worker_id, max_len=v.MAX_WORKER_ID)
        count = v.limit("limit", limit)
        types = v.task_types("task_types", task_types)
        fast = self._claim_fast(worker, count, types)
        if fast is None:
            claimed: list[Task] = []
            with self._scope.write() as conn:
                self._claim_into(conn, claimed, worker, types, count, 0)
            fast = claimed
        # SQLite's RETURNING has no order; Postgres' function returns oldest first.
        return fast if len(fast) < 2 else sorted(fast, key=lambda t: (t.created_at, t.id))

    def _claim_into(
        self,
        conn: sa.Connection,
        claimed: list[Task],
        worker: str,
        types: list[str] | None,
        wanted: int,
        unreadable: int,
    ) -> None:
        """Claim up to ``wanted`` tasks into ``claimed``, in ``conn``'s transaction: a row that
        does not decode is marked Failed, saying why, and another claimed in its place (until
        ``unreadable``, the bad rows met so far, reaches :data:`MAX_UNREADABLE_PER_CLAIM`)."""
        if self._scope.backend.queue_functions:
            stmt: sa.Executable = _SQL_VERBS["claim_many"]
        else:
            stmt = self._claim_many_typed if types is not None else self._claim_many_any
        while wanted > 0 and unreadable < MAX_UNREADABLE_PER_CLAIM:
            rows = conn.execute(stmt, {"worker": worker, "types": types, "max_tasks": wanted}).all()
            bad = 0
            for row in rows:
                try:
                    claimed.append(Task.from_row(row))
                except UnreadableRow as err:
                    # Failed, saying why, and not returned: the others go on.
                    self._fail_unreadable(conn, row._mapping["id"], err, worker)
                    bad += 1
            unreadable += bad
            if len(rows) < wanted:
                break  # nothing more is ready
            wanted = bad  # take others in the places of the unreadable ones

    def _claim_fast(self, worker: str, count: int, types: list[str] | None) -> list[Task] | None:
        """The claim on the hot path, one statement that is its own transaction, or None where
        it does not apply (a session, an RLS actor, a type filter on SQLite)."""
        if not self._scope.drives:
            return None
        if self._scope.backend.queue_functions:
            statement = self._statement("claim_many")
        elif types is None:
            statement = self._statement("claim_one" if count == 1 else "claim")
        else:
            return None  # SQLite's typed claim: an expanding IN, on the full path
        params = {"worker": worker, "types": types, "max_tasks": count}
        rows = self._scope.write_rows(statement, params)
        return self._claim_committed(rows, worker, types, count)

    def _claim_committed(
        self, rows: list[Sequence[Any]], worker: str, types: list[str] | None, count: int
    ) -> list[Task]:
        """The tasks of a claim that is already committed (one statement): the rows that do
        not decode are this worker's now, so they are marked Failed, saying why, and
        others are claimed in their places — what a claim does in one transaction
        (:meth:`_claim_into`), in a second one."""
        claimed: list[Task] = []
        unreadable: list[tuple[Any, UnreadableRow]] = []
        for values in rows:
            try:
                claimed.append(Task.from_values(values))
            except UnreadableRow as err:
                unreadable.append((values[0], err))
        if unreadable:
            readable = len(claimed)
            try:
                with self._scope.write() as conn:
                    for key, why in unreadable:
                        self._fail_unreadable(conn, key, why, worker)
                    if len(rows) == count:  # more may be ready
                        wanted = len(unreadable)
                        self._claim_into(conn, claimed, worker, types, wanted, wanted)
            except DualdbError as err:
                # The claimed readable tasks are this worker's whatever happens here: hand
                # them over (the unreadable ones stay In Progress until requeue_stale).
                del claimed[readable:]  # claimed in the transaction that was rolled back
                log.warning(
                    "could not fail %d unreadable claimed task(s): %s", len(unreadable), err
                )
        return claimed

    def _fail_unreadable(
        self, conn: sa.Connection, key: Any, err: UnreadableRow, worker: str
    ) -> None:
        """Mark Failed, saying why, a task ``worker`` has just claimed and cannot read (still
        its own: another writer may have changed it since a claim that committed)."""
        # Not even its id decodes (SQLite text another tool wrote): address it as stored.
        which = (
            sa.type_coerce(tasks.c.id, sa.Text()) == sa.literal(key.stored, sa.Text())
            if isinstance(key, Unreadable)
            else tasks.c.id == key
        )
        conn.execute(
            tasks.update()
            .where(which, tasks.c.status == RUNNING, tasks.c.worker_id == worker)
            .values(
                status=FAILED,
                error=f"unreadable row: {err}"[: v.MAX_ERROR],
                updated_at=self._clock(),
            ),
        )

    # The hot statements are built once per repository: building them cost more than running
    # them (SQLAlchemy's construction and cache-key work, measured in docs/benchmarks.md).

    @functools.cached_property
    def _claim_many_any(self) -> sa.Update:
        return self._claim_many_statement(typed=False)

    @functools.cached_property
    def _claim_many_typed(self) -> sa.Update:
        return self._claim_many_statement(typed=True)

    def _claim_many_statement(self, typed: bool, one: bool = False) -> sa.Update:
        # UPDATE … WHERE id IN (SELECT id … LIMIT n): the write lock is taken before the pick
        # reads, and the clock read after it (:meth:`_clock`).  With ``one``, the claim of a
        # single task: ``id = (SELECT id … LIMIT 1)``, the same rows, but SQLite looks the one
        # key up instead of building a list of keys (a tenth of a claim→complete's SQL, in
        # callgrind's count of instructions).
        if one:
            pick = self._ready_pick(typed, 1)
            which = tasks.c.id == pick.scalar_subquery()
        else:
            pick = self._ready_pick(typed, sa.bindparam("max_tasks", type_=sa.Integer()))
            which = tasks.c.id.in_(pick.scalar_subquery())
        now = self._clock()
        return (
            tasks.update()
            .where(which)
            .values(
                status=RUNNING,
                worker_id=sa.bindparam("worker"),
                generation_started_at=now,
                heartbeat_at=now,
                updated_at=now,
                attempts=tasks.c.attempts + 1,
            )
            .returning(*_TASK_COLUMNS)
        )

    @functools.cached_property
    def _complete_statement(self) -> sa.Update:
        return (
            tasks.update()
            .where(*_held_by(sa.bindparam("key"), sa.bindparam("worker")))
            .values(
                status=COMPLETE,
                output_location=sa.bindparam("location"),
                updated_at=self._clock(),
                error=None,
            )
            .returning(*_TASK_COLUMNS)
        )

    def heartbeat(self, id: uuid.UUID | str, worker_id: str) -> Task:
        """Record that ``worker_id`` is still working on the task (keeps it from going stale)."""
        return self._held_verb(
            "heartbeat", "heartbeat", id, worker_id, {"heartbeat_at": self._clock()}
        )

    def _held_verb(
        self, verb: str, said: str, id: uuid.UUID | str, worker_id: str, values: dict[str, Any]
    ) -> Task:
        """A worker's one-row verb on the task it holds: the database's function ``verb`` on
        Postgres, an update of ``values`` on SQLite; refusals say "cannot ``said``"."""
        self._worker_verb(verb)
        key = v.uuid_("id", id)
        worker = v.text("worker_id", worker_id, max_len=v.MAX_WORKER_ID)
        if (done := self._function(verb, key=key, worker=worker)) is not None:
            return done[0]
        with self._scope.write() as conn:
            if self._scope.backend.queue_functions:
                return self._call(conn, verb, key=key, worker=worker)
            return self._update_held(conn, key, worker, said, **values)

    def _call(self, conn: sa.Connection, verb: str, **params: Any) -> Task:
        """Run the database's function for ``verb`` (Postgres), which returns one task."""
        return Task.from_row(conn.execute(_SQL_VERBS[verb], params).one())

    def _update_held(
        self, conn: sa.Connection, key: uuid.UUID, worker: str, verb: str, **values: Any
    ) -> Task:
        """Update the task ``worker`` holds (In Progress, visible); Conflict saying why if not."""
        row = conn.execute(
            tasks.update().where(*_held_by(key, worker)).values(**values).returning(*tasks.c),
        ).first()
        if row is None:
            self._explain_refusal(conn, key, worker, verb)
        return Task.from_row(row)

    def _explain_refusal(
        self, conn: sa.Connection, key: uuid.UUID, worker: str, verb: str
    ) -> NoReturn:
        task = self._visible_task(conn, key)
        if task.status != RUNNING:
            raise Conflict(f"cannot {verb} task {key}: it is {task.status}, not In Progress")
        raise Conflict(f"cannot {verb} task {key}: it is claimed by another worker")

    def complete(self, id: uuid.UUID | str, worker_id: str, output_location: str) -> Task:
        """Mark the task Complete with its output, as the worker that claimed it.

        Location and status are written in one statement; the database's triggers then make
        dependents whose last unmet dependency this was claimable and, when
        ``params["shot_id"]`` is set, create the generation (placed last on the shot when it
        is in the task's project) exactly once — as they do for any writer.  Repeating the
        same call after success returns the task unchanged (a retry after a lost reply is
        safe).
        """
        self._worker_verb("complete")
        key = v.uuid_("id", id)
        worker = v.text("worker_id", worker_id, max_len=v.MAX_WORKER_ID)
        location = v.text("output_location", output_location, max_len=v.MAX_LOCATION)
        try:
            done = self._complete_fast(key, worker, location)
        except _FullPath:
            done = None  # refused or repeated: the full path says which
        if done is not None:
            return done
        with self._scope.write() as conn:
            if self._scope.backend.queue_functions:
                return self._call(conn, "complete", key=key, worker=worker, location=location)
            params = {"key": key, "worker": worker, "location": location}
            row = conn.execute(self._complete_statement, params).first()
            if row is None:
                task = self._visible_task(conn, key)
                if (task.status, task.worker_id, task.output_location) == (
                    COMPLETE,
                    worker,
                    location,
                ):
                    return task
                self._explain_refusal(conn, key, worker, "complete")
            # The database's triggers did the rest in the same statement: dependents whose
            # last unmet dependency this was are ready, and a shot task has its generation.
            return self._task(conn, key)

    def _complete_fast(self, key: uuid.UUID, worker: str, location: str) -> Task | None:
        """Complete on the hot path, or None where it does not apply; :class:`_FullPath`
        when the task is not held by ``worker`` (nothing was written)."""
        if self._scope.backend.queue_functions:
            done = self._function("complete", key=key, worker=worker, location=location)
            return None if done is None else done[0]
        if not self._scope.drives:
            return None
        backend = self._scope.backend
        complete = self._statement("complete")
        params = {"key": key, "worker": worker, "location": location}

        def run(driver: Any) -> Task:
            before = backend.rows_written(driver)
            returned = complete.fetch(driver, params)
            if not returned:
                raise _FullPath
            if before is not None and (
                backend.rows_written(driver) == before + 1
                or not _stamped_on_completion(returned[0])
            ):
                # No trigger wrote this row after RETURNING gave it (the update wrote nothing
                # else, or what else it wrote was other tasks' counters): that row is the task
                # as stored.
                return complete.builder(Task, Task.from_values)(returned[0])
            # Read back: the triggers may have written the row after the update returned it.
            # Committed already: a Complete task changes no more, but another tool may have
            # deleted it meanwhile.
            stored = self._driver_tasks("task", driver, {"key": key})
            if not stored:
                raise NotFound(f"task {key} not found")
            return stored[0]

        return self._scope.on_driver(run)

    def fail(
        self,
        id: uuid.UUID | str,
        worker_id: str,
        error: str,
        *,
        retry: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> Task:
        """Record a failure, as the worker that claimed the task.

        With ``retry`` and attempts left (``attempts < max_attempts``) the task goes back to
        Queued; otherwise it is Failed and every dependent, transitively, is Cancelled with
        the cause recorded.
        """
        self._worker_verb("fail")
        key = v.uuid_("id", id)
        worker = v.text("worker_id", worker_id, max_len=v.MAX_WORKER_ID)
        message = v.text("error", error, max_len=v.MAX_ERROR, strip=False)
        limit = v.non_negative_int("max_attempts", max_attempts, maximum=v.MAX_ATTEMPTS)
        done = self._function(
            "fail", key=key, worker=worker, error=message, retry=bool(retry), max_attempts=limit
        )
        if done is not None:
            return done[0]
        with self._scope.write() as conn:
            if self._scope.backend.queue_functions:
                return self._call(
                    conn,
                    "fail",
                    key=key,
                    worker=worker,
                    error=message,
                    retry=bool(retry),
                    max_attempts=limit,
                )
            current = conn.execute(
                sa.select(tasks.c.attempts).where(*_held_by(key, worker))
            ).first()
            if current is None:
                self._explain_refusal(conn, key, worker, "fail")
            requeue = retry and current.attempts < limit
            task = self._update_held(
                conn,
                key,
                worker,
                "fail",
                status=QUEUED if requeue else FAILED,
                error=message,
                updated_at=self._clock(),
                **({"worker_id": None, "heartbeat_at": None} if requeue else {}),
            )
            # Failing cascades to the dependents in the database (trigger tasks_after_status).
            return task

    def cancel(self, id: uuid.UUID | str, reason: str = "cancelled") -> list[Task]:
        """Cancel an unfinished task and every dependent, transitively.

        Returns the cancelled tasks (the task itself first).  A worker still running it will
        find its ``complete``/``fail`` refused.
        """
        key = v.uuid_("id", id)
        why = v.text("reason", reason, max_len=v.MAX_ERROR)
        with self._scope.write() as conn:
            task = self._visible_task(conn, key)
            if task.status not in UNFINISHED:
                raise Conflict(
                    f"task {key} is {task.status}: only unfinished tasks can be cancelled"
                )
            if task.status == RUNNING and self._scope.user_id is not None:
                raise PermissionDenied(
                    f"cannot cancel task {key}: it is running, and a signed-in user changes "
                    "only tasks that have not started"
                )
            waiting = self._unfinished_dependents(conn, key)
            row = conn.execute(
                tasks.update()
                .where(tasks.c.id == key, tasks.c.status.in_(UNFINISHED))
                .values(status=CANCELLED, error=why, updated_at=self._clock())
                .returning(*tasks.c),
            ).first()
            if row is None:  # finished meanwhile (another transaction, on Postgres)
                raise Conflict(
                    f"task {key} finished meanwhile: only unfinished tasks can be cancelled"
                )
            return [Task.from_row(row), *self._tasks(conn, waiting)]

    def _unfinished_dependents(self, conn: sa.Connection, key: uuid.UUID) -> list[uuid.UUID]:
        """Every unfinished task that depends on ``key``, transitively: what a failure or a
        cancellation of ``key`` cancels (the database does the cancelling)."""
        edge = task_dependencies
        reach = (
            sa.select(edge.c.task_id.label("id"))
            .where(edge.c.dependency_id == key)
            .cte("reach", recursive=True)
        )
        reach = reach.union(
            sa.select(edge.c.task_id).join(reach, edge.c.dependency_id == reach.c.id)
        )
        query = sa.select(tasks.c.id).where(
            tasks.c.id.in_(sa.select(reach.c.id)), tasks.c.status.in_(UNFINISHED)
        )
        return list(conn.execute(query).scalars())

    def _tasks(self, conn: sa.Connection, keys: list[uuid.UUID]) -> list[Task]:
        """The tasks ``keys``, oldest first."""
        if not keys:
            return []
        rows = conn.execute(
            sa.select(tasks).where(tasks.c.id.in_(keys)).order_by(tasks.c.created_at, tasks.c.id)
        ).all()
        return [Task.from_row(r) for r in rows]

    def release(self, id: uuid.UUID | str) -> Task:
        """Let a Pending (held) task be claimed: Pending → Queued."""
        key = v.uuid_("id", id)
        with self._scope.write() as conn:
            row = conn.execute(
                tasks.update()
                .where(tasks.c.id == key, tasks.c.status == PENDING, *self._owner_filter())
                .values(status=QUEUED, updated_at=self._clock())
                .returning(*tasks.c),
            ).first()
            if row is None:
                task = self._visible_task(conn, key)
                raise Conflict(f"task {key} is {task.status}, not Pending")
            return Task.from_row(row)

    def release_claim(self, id: uuid.UUID | str, worker_id: str) -> Task:
        """Give a claimed task back (In Progress → Queued) without using up an attempt."""
        return self._held_verb(
            "release_claim",
            "release",
            id,
            worker_id,
            {
                "status": QUEUED,
                "worker_id": None,
                "heartbeat_at": None,
                "attempts": tasks.c.attempts - 1,
                "updated_at": self._clock(),
            },
        )

    def requeue_stale(
        self, older_than: timedelta, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> list[Task]:
        """Recover tasks whose worker stopped heartbeating for longer than ``older_than``.

        Each goes back to Queued while ``attempts < max_attempts``, else becomes Failed (and
        its dependents Cancelled).  Returns the tasks changed.
        """
        self._worker_verb("requeue_stale")
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInput("older_than", "must be a non-negative timedelta")
        if older_than > MAX_STALE_AGE:
            # Past this, "now - older_than" leaves the range of SQLite's and Python's dates.
            raise InvalidInput("older_than", f"must be at most {MAX_STALE_AGE.days} days")
        limit = v.non_negative_int("max_attempts", max_attempts, maximum=v.MAX_ATTEMPTS)
        with self._scope.write() as conn:
            if self._scope.backend.queue_functions:
                rows = conn.execute(
                    _SQL_VERBS["requeue_stale"], {"older_than": older_than, "max_attempts": limit}
                ).all()
                return [Task.from_row(row) for row in rows]
            cutoff = self._clock(minus=older_than)
            # A task started by a writer that never heartbeats (plain SQL) goes stale from
            # its start, or its last change.
            last_sign = sa.func.coalesce(
                tasks.c.heartbeat_at,
                tasks.c.generation_started_at,
                tasks.c.updated_at,
                tasks.c.created_at,
                type_=Timestamp(),
            )
            pick = (
                sa.select(tasks.c.id, tasks.c.attempts, tasks.c.worker_id)
                .where(sa.text(RUNNING_SQL), last_sign < cutoff)
                .order_by(last_sign, tasks.c.id)
            )
            changed: list[Task] = []
            for stale in conn.execute(pick).all():
                gone = f"worker {stale.worker_id or '(none)'} stopped heartbeating"
                requeue = stale.attempts < limit
                waiting = [] if requeue else self._unfinished_dependents(conn, stale.id)
                values: dict[str, Any] = (
                    {"status": QUEUED, "worker_id": None, "heartbeat_at": None}
                    if requeue
                    else {"status": FAILED}
                )
                row = conn.execute(
                    tasks.update()
                    .where(tasks.c.id == stale.id, tasks.c.status == RUNNING)
                    .values(
                        **values,
                        updated_at=self._clock(),
                        error=f"requeued: {gone}"
                        if requeue
                        else f"failed after {stale.attempts} attempts: {gone}",
                    )
                    .returning(*tasks.c),
                ).one()
                changed.append(Task.from_row(row))
                changed += self._tasks(conn, waiting)
            return changed

    def counts(self, project_id: uuid.UUID | str | None = None) -> dict[str, int]:
        """Tasks per status (every status present, zeros included)."""
        clauses = self._owner_filter()
        if project_id is not None:
            clauses.append(tasks.c.project_id == v.uuid_("project_id", project_id))
        stmt = sa.select(tasks.c.status, sa.func.count()).where(*clauses).group_by(tasks.c.status)
        rows = self._scope.fetch(lambda conn: conn.execute(stmt).all())
        found = {status: int(n) for status, n in rows}
        return {s.value: found.get(s.value, 0) for s in TaskStatus}
