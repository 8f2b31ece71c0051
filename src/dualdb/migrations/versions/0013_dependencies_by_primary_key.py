# ruff: noqa: E501 - the function bodies are frozen as the server prints them
"""Dependencies are looked up by primary key, one id at a time (Postgres).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30

Two trigger functions looked a task's dependencies up with ``d.id = ANY (NEW.dependant_on)``.
PL/pgSQL caches a statement's plan per session, but for an array parameter the planner cannot
know how many ids it holds, so:

- ``dualdb.tasks_check_status`` (every status change: each claim and each completion) planned
  its lookup again on every call, even for a task with no dependencies, and the planning cost
  grew with the table: a claim on a table of 100,000 finished tasks cost 1.45-1.5x a claim on
  a table of 1,000, with the raw driver's claim alike (docs/benchmarks.md, D). It now looks
  dependencies up only when there are some, each by its primary key: 1.07-1.14x.
- ``dualdb.tasks_before_insert`` (migration 0010) kept, in a session whose first inserts went
  into a small table, a plan that walked a whole index of ``tasks`` for each lookup: a bulk
  insert of dependent tasks (``COPY``, ``create_many``) into a new database slowed down with
  every row (4,000 tasks in chains: 525 rows/s, and falling). Each dependency is now read by
  its primary key, in one locking read of the task's own project (20,000 tasks: 6,600
  rows/s).

Both functions run with ``enable_seqscan = off``: a lookup by primary key is always the right
plan, whatever the statistics said when the plan was cached.

The checks, their order, their errors and the counter are unchanged. SQLite's triggers are
unchanged (their lookups go by primary key).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: 0010's ``tasks_before_insert`` and 0006's ``tasks_check_status``, as the server printed them
#: (``pg_get_functiondef``).
BEFORE = (
    r"""
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
""",
    r"""
CREATE OR REPLACE FUNCTION dualdb.tasks_check_status()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public'
AS $function$

BEGIN

    IF NOT ((OLD.status = 'Pending' AND NEW.status IN ('Queued', 'Cancelled'))
         OR (OLD.status = 'Queued' AND NEW.status IN ('In Progress', 'Pending', 'Cancelled'))
         OR (OLD.status = 'In Progress'
             AND NEW.status IN ('Complete', 'Failed', 'Queued', 'Cancelled'))) THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: status change not allowed (Pending -> Queued|Cancelled, Queued -> In Progress|Pending|Cancelled, In Progress -> Complete|Failed|Queued|Cancelled; finished tasks never change)', ERRCODE = '23000';
    END IF;
    IF NEW.status IN ('In Progress', 'Complete') AND EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete') THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task cannot start or complete before every dependency is Complete', ERRCODE = '23000';
    END IF;
    RETURN NEW;
END
$function$
""",
)

AFTER = (
    r"""
CREATE OR REPLACE FUNCTION dualdb.tasks_before_insert()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public'
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    dep uuid;
    dep_status text;
    outside boolean := false;
    dead boolean := false;
    unfinished integer := 0;
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
    -- Only a task with dependencies needs these lookups.  Each dependency is read by its
    -- primary key, one id at a time (migration 0013): a lookup of an array of ids could be
    -- planned as a walk of a whole index, cached while the table was small, so that a bulk
    -- insert of dependent tasks took quadratic time.
    IF cardinality(NEW.dependant_on) > 0 THEN
        -- The project test is written so that no index can serve it: the primary key is
        -- then the only index the lookup can use.  A dependency in another project (or a
        -- task without one) is neither returned nor locked.
        FOR dep IN SELECT DISTINCT j.id FROM unnest(NEW.dependant_on) AS j(id) LOOP
            SELECT d.status INTO dep_status FROM public.tasks d
             WHERE d.id = dep AND (d.project_id = NEW.project_id) IS TRUE FOR SHARE;
            IF NOT FOUND THEN
                outside := true;
            ELSIF dep_status <> 'Complete' THEN
                unfinished := unfinished + 1;
                dead := dead OR dep_status IN ('Failed', 'Cancelled');
            END IF;
        END LOOP;
        IF NEW.id = ANY (NEW.dependant_on) THEN
            RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: a task cannot depend on itself', ERRCODE = '22023';
        END IF;
        IF outside THEN
            RAISE EXCEPTION USING MESSAGE = 'invalid dependant_on: names a task that is not in this project', ERRCODE = '22023';
        END IF;
        IF dead AND NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete') THEN
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
    IF NEW.status IN ('In Progress', 'Complete') AND unfinished > 0 THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: a task cannot start or complete before every dependency is Complete', ERRCODE = '23000';
    END IF;
    -- The counter a writer gave is replaced by the truth.
    NEW.unmet_dependencies := unfinished;
    RETURN NEW;
END
$function$
""",
    r"""
CREATE OR REPLACE FUNCTION dualdb.tasks_check_status()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public'
 SET enable_seqscan TO 'off'
AS $function$
DECLARE
    dep uuid;
BEGIN

    IF NOT ((OLD.status = 'Pending' AND NEW.status IN ('Queued', 'Cancelled'))
         OR (OLD.status = 'Queued' AND NEW.status IN ('In Progress', 'Pending', 'Cancelled'))
         OR (OLD.status = 'In Progress'
             AND NEW.status IN ('Complete', 'Failed', 'Queued', 'Cancelled'))) THEN
        RAISE EXCEPTION USING MESSAGE = 'conflict: status change not allowed (Pending -> Queued|Cancelled, Queued -> In Progress|Pending|Cancelled, In Progress -> Complete|Failed|Queued|Cancelled; finished tasks never change)', ERRCODE = '23000';
    END IF;
    -- Only a task with dependencies is looked up, each dependency by its primary key
    -- (migration 0013): a lookup of an array of ids was planned afresh for every claim and
    -- completion, at a cost that grew with the table.
    IF NEW.status IN ('In Progress', 'Complete') AND cardinality(NEW.dependant_on) > 0 THEN
        FOREACH dep IN ARRAY NEW.dependant_on LOOP
            IF EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = dep AND d.status <> 'Complete') THEN
                RAISE EXCEPTION USING MESSAGE = 'conflict: a task cannot start or complete before every dependency is Complete', ERRCODE = '23000';
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END
$function$
""",
)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for function in AFTER:
        op.execute(function)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for function in BEFORE:
        op.execute(function)
