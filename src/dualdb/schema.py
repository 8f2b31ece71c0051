"""The canonical schema: every table, column, constraint and index, for both backends.

This module is the single source of truth.  Migrations are generated from it (``dualdb
generate``) and ``dualdb check`` compares a live database against it.  Backend-only objects
(the GIN index on ``tasks.dependant_on``) are marked with ``ddl_if`` so each dialect creates,
and the drift check expects, exactly its own.
"""

from __future__ import annotations

import sqlalchemy as sa

from dualdb.types import (
    JSONB,
    TASK_STATUSES,
    UUID,
    TaskStatus,
    Timestamp,
    UUIDArray,
    empty_uuid_array,
    new_uuid,
    utcnow,
)

#: Deterministic constraint names, so migrations can refer to them on both dialects.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: The fixed user that stands in for authentication locally (and owns seeded data).
DUMMY_USER_ID = "00000000-0000-0000-0000-000000000000"

_STATUS_SQL = ", ".join(f"'{s}'" for s in TASK_STATUSES)
#: A task a worker may claim now: queued, and every dependency Complete.
READY_SQL = f"status = '{TaskStatus.QUEUED.value}' AND unmet_dependencies = 0"
#: A task a worker is running (what ``requeue_stale`` scans).
RUNNING_SQL = f"status = '{TaskStatus.IN_PROGRESS.value}'"


def _id() -> sa.Column[object]:
    return sa.Column("id", UUID(), primary_key=True, server_default=new_uuid())


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", Timestamp(), nullable=False, server_default=utcnow())


def _partial_index(name: str, where: str, *columns: str) -> sa.Index:
    """An index over the rows matching ``where`` only, on both dialects."""
    clause = sa.text(where)
    return sa.Index(name, *columns, sqlite_where=clause, postgresql_where=clause)


def _project_fk() -> sa.Column[object]:
    return sa.Column(
        "project_id",
        UUID(),
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    )


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID(), primary_key=True),
    sa.Column("email", sa.Text(), nullable=True),
    _created_at(),
)

projects = sa.Table(
    "projects",
    metadata,
    _id(),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("user_id", UUID(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    _created_at(),
    sa.Column("updated_at", Timestamp(), nullable=True),
    sa.Index(None, "user_id", "created_at"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    _id(),
    sa.Column("task_type", sa.Text(), nullable=False),
    sa.Column("params", JSONB(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False, server_default="Queued"),
    sa.Column("dependant_on", UUIDArray(), nullable=False, server_default=empty_uuid_array()),
    sa.Column("output_location", sa.Text(), nullable=True),
    _created_at(),
    sa.Column("updated_at", Timestamp(), nullable=True),
    _project_fk(),
    # Task-queue columns (second migration).
    sa.Column("worker_id", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("generation_started_at", Timestamp(), nullable=True),
    sa.Column("heartbeat_at", Timestamp(), nullable=True),
    sa.Column("generation_processed_at", Timestamp(), nullable=True),
    # Queue readiness (third migration): how many dependencies are not yet Complete.
    sa.Column("unmet_dependencies", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.CheckConstraint(f"status IN ({_STATUS_SQL})", name="status"),
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "project_id", "status"),
    # A project's tasks in list order: keyset pages by (created_at, id) (migration 0011).
    sa.Index(None, "project_id", "created_at", "id"),
    # The claim reads the oldest ready row from here: its cost does not grow with finished or
    # blocked tasks, which are not in the index at all.
    _partial_index("ix_tasks_ready", READY_SQL, "created_at", "id"),
    _partial_index("ix_tasks_ready_by_type", READY_SQL, "task_type", "created_at", "id"),
    _partial_index("ix_tasks_running_heartbeat", RUNNING_SQL, "heartbeat_at"),
    sa.Index("ix_tasks_dependant_on_gin", "dependant_on", postgresql_using="gin").ddl_if(
        dialect="postgresql"
    ),
)

generations = sa.Table(
    "generations",
    metadata,
    _id(),
    sa.Column("tasks", UUIDArray(), nullable=False, server_default=empty_uuid_array()),
    sa.Column("location", sa.Text(), nullable=True),
    sa.Column("type", sa.Text(), nullable=True),
    _created_at(),
    sa.Column("updated_at", Timestamp(), nullable=True),
    _project_fk(),
    sa.Index(None, "project_id", "created_at"),
)

shots = sa.Table(
    "shots",
    metadata,
    _id(),
    sa.Column("name", sa.Text(), nullable=False),
    _created_at(),
    sa.Column("updated_at", Timestamp(), nullable=True),
    _project_fk(),
    sa.Index(None, "project_id", "created_at"),
)

shot_generations = sa.Table(
    "shot_generations",
    metadata,
    _id(),
    sa.Column("shot_id", UUID(), sa.ForeignKey("shots.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "generation_id",
        UUID(),
        sa.ForeignKey("generations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("position", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Index(None, "shot_id", "position"),
    sa.Index(None, "generation_id"),
)

#: The dependency edges of ``tasks.dependant_on`` (which stays the canonical record), indexed
#: both ways so "what does this task wait for" and "who waits for this task" are index reads
#: on both backends.
task_dependencies = sa.Table(
    "task_dependencies",
    metadata,
    sa.Column("task_id", UUID(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "dependency_id", UUID(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Index(None, "dependency_id"),
)

#: Every table, parents first.
TABLES: tuple[sa.Table, ...] = (
    users,
    projects,
    tasks,
    task_dependencies,
    generations,
    shots,
    shot_generations,
)

#: The triggers that keep the queue's rules in the database whoever writes (migration 0006),
#: per table — the same names on both backends.  ``dualdb check`` reports missing and unknown
#: ones (a SQLite table rebuilt by Alembic's batch mode loses its triggers).
TRIGGERS: dict[str, tuple[str, ...]] = {
    "tasks": (
        "tasks_before_insert",
        "tasks_after_insert",
        "tasks_check_params",
        "tasks_check_times",
        "tasks_check_dependencies",
        "tasks_check_counters",
        "tasks_check_status",
        "tasks_after_dependencies",
        "tasks_after_status",
        "tasks_before_delete",
        "tasks_after_delete",
    ),
    "task_dependencies": (
        "task_dependencies_before_insert",
        "task_dependencies_before_update",
        "task_dependencies_before_delete",
    ),
    "generations": ("generations_check_tasks_insert", "generations_check_tasks_update"),
    "projects": ("projects_after_delete",),
}

#: Postgres only: what Supabase's API roles may write inside their own rows (migration 0007),
#: and the notification that wakes workers when a task becomes ready (0009).
POSTGRES_TRIGGERS: dict[str, tuple[str, ...]] = {
    "tasks": ("tasks_api_rules", "tasks_notify_ready_insert", "tasks_notify_ready_update"),
    "users": ("users_api_times",),
    "projects": ("projects_api_times",),
    "shots": ("shots_api_times",),
    "generations": ("generations_api_times",),
}


#: Postgres only: the queue's verbs as SQL functions — the front end's in ``public``
#: (migration 0007, PostgREST's ``rpc()``), the workers' in ``dualdb`` (0008, which dualdb's own
#: queue calls).  ``dualdb check`` reports any that is missing.
POSTGRES_FUNCTIONS: tuple[str, ...] = (
    "public.enqueue_task(uuid, text, jsonb, uuid[], text, uuid)",
    "public.release_task(uuid)",
    "public.cancel_task(uuid, text)",
    "dualdb.claim_tasks(text, text[], integer)",
    "dualdb.heartbeat_task(uuid, text)",
    "dualdb.complete_task(uuid, text, text)",
    "dualdb.fail_task(uuid, text, text, boolean, integer)",
    "dualdb.release_claim(uuid, text)",
    "dualdb.requeue_stale(interval, integer)",
)
