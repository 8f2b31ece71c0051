# ruff: noqa: E501 - 0008's function body is frozen as the server prints it
"""A worker's claim of one task runs a cached plan (Postgres).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

``dualdb.claim_tasks`` (migration 0008) claimed through a join of the picked rows with
``tasks`` (``WITH pick AS (… LIMIT max_tasks FOR UPDATE SKIP LOCKED) UPDATE … FROM pick``).
PL/pgSQL caches a statement's plan, but the generic plan of that join, which cannot know
``max_tasks``, hashes the whole ``tasks`` table; so every call planned the statement afresh,
about 350 µs of a claim that otherwise costs what a raw ``UPDATE`` costs (docs/benchmarks.md,
C and D).

A claim of one task (``max_tasks = 1``: ``db.tasks.claim`` and the stock worker) now runs
``UPDATE … WHERE id = (SELECT … LIMIT 1 FOR UPDATE SKIP LOCKED)``, whose one plan is the
right one for every call, so it is planned once per session.  The clock is still read inside
the statement, after its snapshot (so after the dependency the task waited for completed):
one ``clock_timestamp()`` for the three times.  A batch (``max_tasks > 1``) keeps 0008's
statement, whose planning is shared by its tasks.

The checks, their errors, what is returned and the grants are unchanged.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READY = "t.status = 'Queued' AND t.unmet_dependencies = 0"
#: The task-type filter of each branch: all types, one type, several.
FILTERS = ("", "AND t.task_type = claim_tasks.task_types[1]",
           "AND t.task_type = ANY (claim_tasks.task_types)")  # fmt: skip


def _claim_one(type_filter: str) -> str:
    """The oldest ready task: one plan, good for every call (no parameter in its shape)."""
    return f"""
            RETURN QUERY
            UPDATE public.tasks done
               SET status = 'In Progress', worker_id = worker, attempts = done.attempts + 1,
                   generation_started_at = c.now, heartbeat_at = c.now, updated_at = c.now
              FROM (SELECT clock_timestamp() AS now) c
             WHERE done.id = (SELECT t.id FROM public.tasks t WHERE {READY} {type_filter}
                               ORDER BY t.created_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING done.*;"""


def _claim_many(type_filter: str) -> str:
    """0008's batch: up to ``max_tasks`` oldest ready tasks, the clock read per picked row."""
    return f"""
            RETURN QUERY
            WITH pick AS (
                SELECT t.id, clock_timestamp() AS now FROM public.tasks t
                 WHERE {READY} {type_filter}
                 ORDER BY t.created_at, t.id LIMIT claim_tasks.max_tasks FOR UPDATE SKIP LOCKED
            ), done AS (
                UPDATE public.tasks t
                   SET status = 'In Progress', worker_id = worker, attempts = t.attempts + 1,
                       generation_started_at = pick.now, heartbeat_at = pick.now,
                       updated_at = pick.now
                  FROM pick WHERE t.id = pick.id
                RETURNING t.*
            )
            SELECT * FROM done ORDER BY done.created_at, done.id;"""


def _claim(type_filter: str) -> str:
    return f"""
        IF claim_tasks.max_tasks = 1 THEN{_claim_one(type_filter)}
        ELSE{_claim_many(type_filter)}
        END IF;"""


AFTER = f"""
CREATE OR REPLACE FUNCTION dualdb.claim_tasks(worker_id text, task_types text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1)
 RETURNS SETOF public.tasks
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
DECLARE
    worker text := dualdb.checked_text('worker_id', claim_tasks.worker_id, 200, true);
BEGIN
    IF claim_tasks.max_tasks IS NULL OR claim_tasks.max_tasks < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'invalid max_tasks: must be at least 1';
    END IF;
    IF claim_tasks.max_tasks > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid max_tasks: must be at most 1000';
    END IF;
    IF cardinality(claim_tasks.task_types) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid task_types: must name at least one type (or be NULL for all)';
    END IF;
    -- One statement per kind of filter, not one with "task_types IS NULL OR …": each reads
    -- its partial index (ix_tasks_ready, or ix_tasks_ready_by_type in order for one type)
    -- whatever plan is cached.  Within each, one task or a batch (see this migration).
    IF claim_tasks.task_types IS NULL THEN{_claim(FILTERS[0])}
    ELSIF cardinality(claim_tasks.task_types) = 1 THEN{_claim(FILTERS[1])}
    ELSE{_claim(FILTERS[2])}
    END IF;
END
$function$
"""

#: 0008's function, as the server printed it (``pg_get_functiondef``).
BEFORE = r"""
CREATE OR REPLACE FUNCTION dualdb.claim_tasks(worker_id text, task_types text[] DEFAULT NULL::text[], max_tasks integer DEFAULT 1)
 RETURNS SETOF tasks
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
DECLARE
    worker text := dualdb.checked_text('worker_id', claim_tasks.worker_id, 200, true);
BEGIN
    IF claim_tasks.max_tasks IS NULL OR claim_tasks.max_tasks < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'invalid max_tasks: must be at least 1';
    END IF;
    IF claim_tasks.max_tasks > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid max_tasks: must be at most 1000';
    END IF;
    IF cardinality(claim_tasks.task_types) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid task_types: must name at least one type (or be NULL for all)';
    END IF;
    -- One statement per kind of filter, not one with "task_types IS NULL OR …": each reads
    -- its partial index (ix_tasks_ready, or ix_tasks_ready_by_type in order for one type)
    -- whatever plan is cached.
    IF claim_tasks.task_types IS NULL THEN

        RETURN QUERY
        WITH pick AS (
            SELECT t.id, clock_timestamp() AS now FROM public.tasks t
             WHERE t.status = 'Queued' AND t.unmet_dependencies = 0
             ORDER BY t.created_at, t.id LIMIT claim_tasks.max_tasks FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE public.tasks t
               SET status = 'In Progress', worker_id = worker, attempts = t.attempts + 1,
                   generation_started_at = pick.now, heartbeat_at = pick.now,
                   updated_at = pick.now
              FROM pick WHERE t.id = pick.id
            RETURNING t.*
        )
        SELECT * FROM done ORDER BY done.created_at, done.id;
    ELSIF cardinality(claim_tasks.task_types) = 1 THEN

        RETURN QUERY
        WITH pick AS (
            SELECT t.id, clock_timestamp() AS now FROM public.tasks t
             WHERE t.status = 'Queued' AND t.unmet_dependencies = 0 AND t.task_type = claim_tasks.task_types[1]
             ORDER BY t.created_at, t.id LIMIT claim_tasks.max_tasks FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE public.tasks t
               SET status = 'In Progress', worker_id = worker, attempts = t.attempts + 1,
                   generation_started_at = pick.now, heartbeat_at = pick.now,
                   updated_at = pick.now
              FROM pick WHERE t.id = pick.id
            RETURNING t.*
        )
        SELECT * FROM done ORDER BY done.created_at, done.id;
    ELSE

        RETURN QUERY
        WITH pick AS (
            SELECT t.id, clock_timestamp() AS now FROM public.tasks t
             WHERE t.status = 'Queued' AND t.unmet_dependencies = 0 AND t.task_type = ANY (claim_tasks.task_types)
             ORDER BY t.created_at, t.id LIMIT claim_tasks.max_tasks FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE public.tasks t
               SET status = 'In Progress', worker_id = worker, attempts = t.attempts + 1,
                   generation_started_at = pick.now, heartbeat_at = pick.now,
                   updated_at = pick.now
              FROM pick WHERE t.id = pick.id
            RETURNING t.*
        )
        SELECT * FROM done ORDER BY done.created_at, done.id;
    END IF;
END
$function$

"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(AFTER)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(BEFORE)
