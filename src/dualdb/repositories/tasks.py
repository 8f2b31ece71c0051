"""Tasks: the CRUD side of the ``tasks`` table (the queue verbs live in :mod:`dualdb.queue`)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.access import LOOKUP_CHUNK
from dualdb.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from dualdb.queue import TaskQueue
from dualdb.records import Page, Task
from dualdb.repositories.base import DEFAULT_BATCH, DEFAULT_LIMIT, Repository, key_or_new, utcnow
from dualdb.schema import shots, task_dependencies, tasks
from dualdb.scope import Scope
from dualdb.types import INITIAL_STATUSES, SerialisedJSON, TaskStatus
from dualdb.unset import UNSET, Unset

#: Bulk enqueues at least this large refresh the planner's statistics (ANALYZE on Postgres): a
#: planner that still believes the table is tiny picks bad plans for the following claims.
ANALYZE_AFTER_ROWS = 1000
RUNNING = TaskStatus.IN_PROGRESS.value
#: Statuses a task never leaves (except by an explicit retry of a failure).
FINISHED = (TaskStatus.COMPLETE.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)


class TasksRepository(Repository[Task]):
    """Create, read, update and delete ``tasks``; :meth:`enqueue` is :meth:`create`.

    The queue's verbs (:meth:`claim`, :meth:`complete`, …) are those of its
    :class:`~dualdb.queue.TaskQueue`, which owns every change of a task's queue state.
    """

    table = tasks
    record = Task
    entity = "task"
    filterable = frozenset({"project_id", "status", "task_type", "worker_id"})
    fields = frozenset({"id", "project_id", "task_type", "params", "status", "depends_on"})

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        queue = TaskQueue(scope, self._check_writable)
        # The queue's verbs, as the repository's (documented on TaskQueue, one place).
        self.claim = queue.claim
        self.claim_many = queue.claim_many
        self.heartbeat = queue.heartbeat
        self.complete = queue.complete
        self.fail = queue.fail
        self.cancel = queue.cancel
        self.release = queue.release
        self.release_claim = queue.release_claim
        self.requeue_stale = queue.requeue_stale
        self.counts = queue.counts

    def _validate_shot_params(
        self, conn: sa.Connection, prepared: Sequence[Mapping[str, Any]]
    ) -> None:
        """A ``shot_id`` in params must be a shot of the task's project (checked at enqueue)."""
        for values in prepared:
            params = values["params"]
            raw = (params.value if isinstance(params, SerialisedJSON) else params).get("shot_id")
            if raw is None:
                continue
            shot_id = v.uuid_("params.shot_id", raw)
            project = conn.execute(
                sa.select(shots.c.project_id).where(shots.c.id == shot_id)
            ).scalar()
            if project != values["project_id"]:
                raise InvalidInput("params.shot_id", f"shot {shot_id} is not in this project")

    def _after_insert(self, conn: sa.Connection, made: builtins.list[Task]) -> None:
        if len(made) >= ANALYZE_AFTER_ROWS:
            self._scope.backend.refresh_statistics(conn, ("tasks", "task_dependencies"))

    def _visible(self) -> sa.ColumnElement[bool] | None:
        owned = self._owned_projects()
        return None if owned is None else tasks.c.project_id.in_(owned)

    def _filter_value(self, key: str, value: Any) -> Any:
        if key == "task_type":
            return v.task_type(key, value)
        if key == "worker_id":
            return v.text(key, value, max_len=v.MAX_WORKER_ID)
        return super()._filter_value(key, value)

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        status = v.status("status", row.get("status", TaskStatus.QUEUED.value))
        if status not in INITIAL_STATUSES:
            raise InvalidInput("status", "a new task starts as 'Queued' or 'Pending'")
        deps = v.uuid_list("depends_on", row.get("depends_on", ()))
        values = {
            "id": key_or_new(row.get("id")),
            "project_id": v.uuid_("project_id", row.get("project_id")),
            "task_type": v.task_type("task_type", row.get("task_type")),
            # Checked and serialised once; the insert binds this text (see SerialisedJSON).
            "params": v.params_json("params", row.get("params")),
            "status": status,
            "dependant_on": deps,
            "output_location": None,
            "created_at": utcnow(),
            "updated_at": None,
            "worker_id": None,
            "attempts": 0,
            "error": None,
            "generation_started_at": None,
            "heartbeat_at": None,
            "generation_processed_at": None,
        }
        return values

    def create(
        self,
        project_id: uuid.UUID | str,
        task_type: str,
        params: Mapping[str, Any],
        *,
        depends_on: Sequence[uuid.UUID | str] = (),
        status: str = TaskStatus.QUEUED.value,
        id: uuid.UUID | str | None = None,
    ) -> Task:
        """Add a task: ``Queued`` (claimable once every dependency is Complete) or ``Pending``
        (held until :meth:`release`).  Dependencies must be tasks of the same project.
        """
        return self.create_many(
            [
                {
                    "id": id,
                    "project_id": project_id,
                    "task_type": task_type,
                    "params": params,
                    "depends_on": depends_on,
                    "status": status,
                }
            ]
        )[0]

    enqueue = create

    def _check_new(self, conn: sa.Connection, values: builtins.list[dict[str, Any]]) -> None:
        """Projects, shots named in params, and dependencies: tasks of the same project (or
        earlier in the batch) that can still complete.

        The database derives the dependency edges and the unmet-dependency counts (triggers
        of migration 0006), for this insert as for any other writer's.

        Nothing read here is written by the insert (as :meth:`Repository._check_new`
        requires): the dependencies looked up are those outside the batch, and a new task
        starts Queued or Pending, so the shots it names are not touched by it.
        """
        super()._check_new(conn, values)
        self._validate_shot_params(conn, values)
        status_of = self._dependency_statuses(conn, values)
        for row in values:
            for dep in row["dependant_on"]:
                dep_status = status_of[dep]
                if dep_status in (TaskStatus.FAILED.value, TaskStatus.CANCELLED.value):
                    raise InvalidInput(
                        "depends_on", f"task {dep} is {dep_status}: it will never complete"
                    )
            status_of[row["id"]] = row["status"]

    def _dependency_statuses(
        self, conn: sa.Connection, prepared: builtins.list[dict[str, Any]]
    ) -> dict[uuid.UUID, str]:
        """Statuses of every dependency; refuses unknown ones and ones in another project."""
        wanted = {d for values in prepared for d in values["dependant_on"]}
        batch = {values["id"]: values for values in prepared}
        outside = wanted - set(batch)
        existing: dict[uuid.UUID, Any] = {}
        # Only visible tasks: someone else's task "does not exist" for a scoped user, on
        # SQLite (filtered here) exactly as on Postgres (hidden by RLS).
        # (The database locks the dependencies again when the task is inserted, so a
        # dependency completing meanwhile never strands it; this read is for the errors.)
        query = sa.select(tasks.c.id, tasks.c.project_id, tasks.c.status).where(
            tasks.c.id.in_(sa.bindparam("ids", expanding=True)), *self._where()
        )
        wanted_outside = sorted(outside, key=str)
        # In chunks: Postgres takes at most 65,535 parameters per statement.
        for start in range(0, len(wanted_outside), LOOKUP_CHUNK):
            chunk = wanted_outside[start : start + LOOKUP_CHUNK]
            existing.update((r.id, r) for r in conn.execute(query, {"ids": chunk}))
        seen: set[uuid.UUID] = set()
        statuses: dict[uuid.UUID, str] = {k: r.status for k, r in existing.items()}
        for values in prepared:
            for dep in values["dependant_on"]:
                if dep in existing:
                    dep_project = existing[dep].project_id
                elif dep in seen:
                    dep_project = batch[dep]["project_id"]
                else:
                    raise InvalidInput("depends_on", f"task {dep} does not exist")
                if dep_project != values["project_id"]:
                    raise InvalidInput("depends_on", f"task {dep} belongs to another project")
            seen.add(values["id"])
        return statuses

    def list(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        status: str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[Task]:
        """Tasks in creation order, filtered by project, status, type or worker."""
        filters = {
            "project_id": project_id,
            "status": status,
            "task_type": task_type,
            "worker_id": worker_id,
        }
        return self._list({**filters, **unknown}, limit, cursor)

    def iter(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        status: str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        **unknown: Never,
    ) -> Iterator[Task]:
        """Every matching task, streamed in batches."""
        filters = {
            "project_id": project_id,
            "status": status,
            "task_type": task_type,
            "worker_id": worker_id,
        }
        return self._iter({**filters, **unknown}, batch_size)

    def update(
        self,
        id: uuid.UUID | str,
        *,
        params: Mapping[str, Any] | Unset = UNSET,
        task_type: str | Unset = UNSET,
    ) -> Task:
        """Change params or type of a task no worker has started (``Pending`` or ``Queued``)."""
        key = v.uuid_("id", id)
        values: dict[str, Any] = {}
        if not isinstance(params, Unset):
            values["params"] = v.params("params", params)
        if not isinstance(task_type, Unset):
            values["task_type"] = v.task_type("task_type", task_type)
        if not values:
            return self.get(key)
        with self._scope.write() as conn:
            self._check_writable(conn, key)
            current = conn.execute(
                sa.select(tasks.c.status, tasks.c.project_id).where(tasks.c.id == key)
            ).first()
            if current is None:
                raise NotFound(f"task {key} not found")
            if current.status not in INITIAL_STATUSES and self._scope.user_id is not None:
                raise PermissionDenied(
                    f"cannot change task {key}: it is {current.status}, and a signed-in user "
                    "changes only tasks that have not started"
                )
            if current.status not in INITIAL_STATUSES:
                raise Conflict(
                    f"task {key} is {current.status}: only Pending or Queued tasks can change"
                )
            if "params" in values:
                self._validate_shot_params(
                    conn, [{"params": values["params"], "project_id": current.project_id}]
                )
            return self._update(key, values)

    def delete(self, id: uuid.UUID | str) -> None:
        """Delete a task; refused while unfinished tasks depend on it (cancel it instead)."""
        key = v.uuid_("id", id)
        with self._scope.write() as conn:
            self._check_writable(conn, key)
            # A signed-in user's refusal comes first, as on Postgres (migration 0007's rule
            # fires before the queue's).
            running = conn.execute(
                sa.select(tasks.c.id).where(tasks.c.id == key, tasks.c.status == RUNNING)
            ).first()
            if running is not None and self._scope.user_id is not None:
                raise PermissionDenied(f"cannot delete task {key}: it is running")
            waiting = conn.execute(
                sa.select(task_dependencies.c.task_id)
                .join(tasks, tasks.c.id == task_dependencies.c.task_id)
                .where(task_dependencies.c.dependency_id == key, tasks.c.status.not_in(FINISHED))
                .limit(1)
            ).scalar()
            if waiting is not None:
                raise Conflict(
                    f"task {waiting} depends on task {key}: cancel it (cascades) before deleting"
                )
            super().delete(key)
