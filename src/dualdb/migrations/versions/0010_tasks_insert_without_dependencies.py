# ruff: noqa: E501 - the function bodies are frozen as the server prints them
"""Inserting a task costs the same however many tasks there are (Postgres).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

``dualdb.tasks_before_insert`` (migration 0006) ran its five dependency queries for every new
task, with or without dependencies.  With an empty ``dependant_on`` they find nothing, but the
planner, believing the partial index ``ix_tasks_ready_by_type`` nearly empty (statistics taken
before a bulk insert), read each of them by scanning that whole index: every insert of a ready
task scanned every ready task inserted before it, so a bulk insert (``COPY``, ``executemany``,
``create_many``) of 10,000 tasks took about 25 s, and the cost grew with the square of the
batch.  The function now skips them when there is no dependency (the counter is then 0).

Its one remaining query for such a task, "is this id taken?", had the same trap: a session
whose first inserts went into an empty, freshly vacuumed table cached a plan that read
``tasks`` sequentially, and kept it (until the next ``ANALYZE``) for every later insert.  The
function now runs with ``enable_seqscan = off``: every lookup it makes goes by primary key, so
an index is always the right plan.  Measured with ``COPY`` after ``TRUNCATE`` + ``VACUUM
ANALYZE``: 20,000 tasks 1,151 → 26,080 rows/s, 60,000 tasks 255 → 24,688 rows/s.

Otherwise the function is unchanged: the same checks, in the same order, with the same errors.

SQLite's triggers are unchanged (their lookups go by primary key).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: 0006's function, as the server printed it (``pg_get_functiondef``).
BEFORE = r"""
CREATE OR REPLACE FUNCTION dualdb.tasks_before_insert()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public'
AS $function$

BEGIN

    IF EXISTS (SELECT 1 FROM public.tasks t WHERE t.id = NEW.id) THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task with this id exists (a task is never replaced)', ERRCODE = '23000';
    END IF;

    IF jsonb_typeof(NEW.params) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid params: must be a JSON object', ERRCODE = '22023';
    END IF;
    IF NOT dualdb.json_within_limits(NEW.params) THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range', ERRCODE = '22023';
    END IF;


    IF NEW.dependant_on IS NULL OR coalesce(array_ndims(NEW.dependant_on), 1) <> 1 THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)', ERRCODE = '22023';
    END IF;
    IF array_position(NEW.dependant_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)', ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM public.tasks d
      WHERE d.id = ANY (NEW.dependant_on) AND d.project_id = NEW.project_id FOR SHARE;
    IF NEW.id = ANY (NEW.dependant_on) THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: a task cannot depend on itself', ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(NEW.dependant_on) AS j(id) WHERE NOT EXISTS (
        SELECT 1 FROM public.tasks d WHERE d.id = j.id AND d.project_id = NEW.project_id)) THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: names a task that is not in this project', ERRCODE = '22023';
    END IF;
    IF NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete') AND EXISTS (
        SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on)
           AND d.status IN ('Failed', 'Cancelled')) THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: names a Failed or Cancelled task, which will never complete', ERRCODE = '22023';
    END IF;

    IF NEW.attempts IS NULL OR NEW.attempts < 0 THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid attempts: must be a non-negative integer', ERRCODE = '22023';
    END IF;
    IF NEW.unmet_dependencies IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: unmet_dependencies is kept by the database (it counts unfinished dependencies)', ERRCODE = '23000';
    END IF;
    IF NEW.status IN ('In Progress', 'Complete') AND EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete') THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task cannot start or complete before every dependency is Complete', ERRCODE = '23000';
    END IF;
    -- The counter a writer gave is replaced by the truth.
    NEW.unmet_dependencies := (SELECT count(*) FROM public.tasks d
                                WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete');
    RETURN NEW;
END
$function$
"""

AFTER = r"""
CREATE OR REPLACE FUNCTION dualdb.tasks_before_insert()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public'
 SET enable_seqscan TO 'off'
AS $function$

BEGIN

    IF EXISTS (SELECT 1 FROM public.tasks t WHERE t.id = NEW.id) THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task with this id exists (a task is never replaced)', ERRCODE = '23000';
    END IF;

    IF jsonb_typeof(NEW.params) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid params: must be a JSON object', ERRCODE = '22023';
    END IF;
    IF NOT dualdb.json_within_limits(NEW.params) THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range', ERRCODE = '22023';
    END IF;


    IF NEW.dependant_on IS NULL OR coalesce(array_ndims(NEW.dependant_on), 1) <> 1 THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)', ERRCODE = '22023';
    END IF;
    IF array_position(NEW.dependant_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)', ERRCODE = '22023';
    END IF;
    -- Only a task with dependencies needs these queries.  With none, they used to run anyway,
    -- and with the ready index believed empty (stale statistics) the planner read them
    -- through it: every insert scanned every ready task, a bulk insert took quadratic time.
    IF cardinality(NEW.dependant_on) > 0 THEN
        PERFORM 1 FROM public.tasks d
          WHERE d.id = ANY (NEW.dependant_on) AND d.project_id = NEW.project_id FOR SHARE;
        IF NEW.id = ANY (NEW.dependant_on) THEN
            RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: a task cannot depend on itself', ERRCODE = '22023';
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(NEW.dependant_on) AS j(id) WHERE NOT EXISTS (
            SELECT 1 FROM public.tasks d WHERE d.id = j.id AND d.project_id = NEW.project_id)) THEN
            RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: names a task that is not in this project', ERRCODE = '22023';
        END IF;
        IF NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete') AND EXISTS (
            SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on)
               AND d.status IN ('Failed', 'Cancelled')) THEN
            RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: names a Failed or Cancelled task, which will never complete', ERRCODE = '22023';
        END IF;
    END IF;

    IF NEW.attempts IS NULL OR NEW.attempts < 0 THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid attempts: must be a non-negative integer', ERRCODE = '22023';
    END IF;
    IF NEW.unmet_dependencies IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: unmet_dependencies is kept by the database (it counts unfinished dependencies)', ERRCODE = '23000';
    END IF;
    IF cardinality(NEW.dependant_on) = 0 THEN
        NEW.unmet_dependencies := 0;
        RETURN NEW;
    END IF;
    IF NEW.status IN ('In Progress', 'Complete') AND EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete') THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task cannot start or complete before every dependency is Complete', ERRCODE = '23000';
    END IF;
    -- The counter a writer gave is replaced by the truth.
    NEW.unmet_dependencies := (SELECT count(*) FROM public.tasks d
                                WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete');
    RETURN NEW;
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
