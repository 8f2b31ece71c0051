"""The workers' queue verbs as SQL functions: one implementation for every language.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

Postgres only (SQLite has no stored functions; there dualdb's Python queue runs the same
statements itself).  A worker in any language calls these as ``service_role`` (or as the
tables' owner) over a plain Postgres connection, and dualdb's own queue calls them too, so the
queue's semantics have one implementation on Postgres:

* ``dualdb.claim_tasks(worker_id, task_types = NULL, max_tasks = 1)`` — take up to
  ``max_tasks`` of the oldest ready tasks (``Queued``, every dependency ``Complete``), of one
  of ``task_types`` if given; ``FOR UPDATE SKIP LOCKED``, so any number of workers on any
  number of machines each get different tasks.  Returns them oldest first (none when nothing
  is ready).
* ``dualdb.heartbeat_task(task_id, worker_id)`` — the worker still holds the task.
* ``dualdb.complete_task(task_id, worker_id, output_location)`` — ``Complete`` with its output;
  the triggers of 0006 release dependents and make the shot's generation.  Repeating the same
  call after success returns the task unchanged.
* ``dualdb.fail_task(task_id, worker_id, error, retry = false, max_attempts = 3)`` — back to
  ``Queued`` when ``retry`` and attempts are left, else ``Failed`` (dependents are cancelled by
  0006's cascade).
* ``dualdb.release_claim(task_id, worker_id)`` — give a claimed task back without using up an
  attempt.
* ``dualdb.requeue_stale(older_than, max_attempts = 3)`` — recover tasks whose worker stopped
  heartbeating; returns each task changed, followed by the dependents a failure cancelled.

Each is one statement, one round trip.  Refusals carry a stable SQLSTATE and message:
``22023`` ``invalid <argument>: …``, ``23000`` ``conflict: cannot <verb> task <id>: …`` and
``PT404`` ``task <id> not found`` — the words dualdb's Python queue uses on SQLite.

They live in the schema ``dualdb``, which PostgREST does not expose: the front end's verbs
(``public.enqueue_task``, ``release_task``, ``cancel_task``, migration 0007) are all it sees.
Only ``service_role`` (and the owner) may execute them; ``SECURITY INVOKER``, so they run
with the caller's rights.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Limits, as dualdb.validation has them (frozen here: a migration does not import the app).
MAX_WORKER_ID = 200
MAX_LOCATION = 2048
MAX_ERROR = 10_000
MAX_TASKS = 1_000
MAX_STALE_DAYS = 36_500
#: The ASCII whitespace Python's ``str.strip()`` removes (it also strips ``\x1c``-``\x1f``,
#: which this does not: dualdb strips before it calls, so only other callers may differ).
_SPACE = r"E' \t\n\r\f\x0b'"

_HEADER = "LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public"


def _claim(type_filter: str) -> str:
    """The claim of up to ``max_tasks`` oldest ready tasks (of the types ``type_filter`` keeps).

    The clock is read per picked row, in the statement's own scan (``clock_timestamp()``, not
    the transaction's start), so a task never appears to start before the dependency it
    waited for completed.
    """
    return f"""
        RETURN QUERY
        WITH pick AS (
            SELECT t.id, clock_timestamp() AS now FROM public.tasks t
             WHERE t.status = 'Queued' AND t.unmet_dependencies = 0 {type_filter}
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


#: signature → CREATE statement.  Helpers first: later functions call them.
FUNCTIONS: dict[str, str] = {
    "checked_text(text, text, integer, boolean)": f"""
CREATE FUNCTION dualdb.checked_text(field text, value text, max_len integer, strip boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog AS $fn$
DECLARE
    cleaned text := CASE WHEN strip THEN btrim(value, {_SPACE}) ELSE value END;
BEGIN
    IF cleaned IS NULL OR cleaned = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid ' || field || ': must not be empty';
    END IF;
    IF length(cleaned) > max_len THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('invalid %s: must be at most %s characters (got %s)',
                             field, max_len, length(cleaned));
    END IF;
    RETURN cleaned;
END
$fn$""",
    "refuse_held(text, uuid)": """
CREATE FUNCTION dualdb.refuse_held(verb text, task_id uuid) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
DECLARE
    now_status text;
BEGIN
    -- Why a worker's verb found no task it holds: no such task, not running, or not its own.
    SELECT t.status INTO now_status FROM public.tasks t WHERE t.id = refuse_held.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'PT404', MESSAGE = format('task %s not found', task_id);
    END IF;
    IF now_status <> 'In Progress' THEN
        RAISE EXCEPTION USING ERRCODE = '23000', MESSAGE = format(
            'conflict: cannot %s task %s: it is %s, not In Progress', verb, task_id, now_status);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '23000', MESSAGE = format(
        'conflict: cannot %s task %s: it is claimed by another worker', verb, task_id);
END
$fn$""",
    "unfinished_dependents(uuid)": """
CREATE FUNCTION dualdb.unfinished_dependents(task_id uuid) RETURNS uuid[]
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
    -- Every unfinished task that waits for task_id, transitively: what its failure cancels.
    WITH RECURSIVE reach(id) AS (
        SELECT e.task_id FROM public.task_dependencies e WHERE e.dependency_id = $1
        UNION
        SELECT e.task_id FROM public.task_dependencies e JOIN reach r ON e.dependency_id = r.id
    )
    SELECT coalesce(array_agg(t.id), '{}') FROM public.tasks t JOIN reach USING (id)
     WHERE t.status IN ('Pending', 'Queued', 'In Progress')
$fn$""",
    "claim_tasks(text, text[], integer)": f"""
CREATE FUNCTION dualdb.claim_tasks(
    worker_id text, task_types text[] DEFAULT NULL, max_tasks integer DEFAULT 1
) RETURNS SETOF public.tasks
{_HEADER} AS $fn$
DECLARE
    worker text := dualdb.checked_text('worker_id', claim_tasks.worker_id, {MAX_WORKER_ID}, true);
BEGIN
    IF claim_tasks.max_tasks IS NULL OR claim_tasks.max_tasks < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'invalid max_tasks: must be at least 1';
    END IF;
    IF claim_tasks.max_tasks > {MAX_TASKS} THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid max_tasks: must be at most {MAX_TASKS}';
    END IF;
    IF cardinality(claim_tasks.task_types) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid task_types: must name at least one type (or be NULL for all)';
    END IF;
    -- One statement per kind of filter, not one with "task_types IS NULL OR …": each reads
    -- its partial index (ix_tasks_ready, or ix_tasks_ready_by_type in order for one type)
    -- whatever plan is cached.
    IF claim_tasks.task_types IS NULL THEN
{_claim("")}
    ELSIF cardinality(claim_tasks.task_types) = 1 THEN
{_claim("AND t.task_type = claim_tasks.task_types[1]")}
    ELSE
{_claim("AND t.task_type = ANY (claim_tasks.task_types)")}
    END IF;
END
$fn$""",
    "heartbeat_task(uuid, text)": f"""
CREATE FUNCTION dualdb.heartbeat_task(task_id uuid, worker_id text) RETURNS public.tasks
{_HEADER} AS $fn$
DECLARE
    worker text := dualdb.checked_text('worker_id', heartbeat_task.worker_id,
                                       {MAX_WORKER_ID}, true);
    done public.tasks;
BEGIN
    UPDATE public.tasks t SET heartbeat_at = clock_timestamp()
     WHERE t.id = heartbeat_task.task_id AND t.status = 'In Progress' AND t.worker_id = worker
    RETURNING t.* INTO done;
    IF NOT FOUND THEN
        PERFORM dualdb.refuse_held('heartbeat', heartbeat_task.task_id);
    END IF;
    RETURN done;
END
$fn$""",
    "complete_task(uuid, text, text)": f"""
CREATE FUNCTION dualdb.complete_task(task_id uuid, worker_id text, output_location text)
RETURNS public.tasks
{_HEADER} AS $fn$
DECLARE
    worker text := dualdb.checked_text('worker_id', complete_task.worker_id,
                                       {MAX_WORKER_ID}, true);
    location text := dualdb.checked_text('output_location', complete_task.output_location,
                                         {MAX_LOCATION}, true);
    done public.tasks;
BEGIN
    UPDATE public.tasks t
       SET status = 'Complete', output_location = location, error = NULL,
           updated_at = clock_timestamp()
     WHERE t.id = complete_task.task_id AND t.status = 'In Progress' AND t.worker_id = worker;
    IF NOT FOUND THEN
        SELECT t.* INTO done FROM public.tasks t WHERE t.id = complete_task.task_id;
        -- The same call again after a lost reply: done already, nothing to change.
        IF FOUND AND (done.status, done.worker_id, done.output_location)
                     = ('Complete', worker, location) THEN
            RETURN done;
        END IF;
        PERFORM dualdb.refuse_held('complete', complete_task.task_id);
    END IF;
    -- Read after the statement: its AFTER triggers (0006) have run, the generation is made.
    SELECT t.* INTO done FROM public.tasks t WHERE t.id = complete_task.task_id;
    RETURN done;
END
$fn$""",
    "fail_task(uuid, text, text, boolean, integer)": f"""
CREATE FUNCTION dualdb.fail_task(
    task_id uuid, worker_id text, error text, retry boolean DEFAULT false,
    max_attempts integer DEFAULT 3
) RETURNS public.tasks
{_HEADER} AS $fn$
DECLARE
    worker text := dualdb.checked_text('worker_id', fail_task.worker_id, {MAX_WORKER_ID}, true);
    message text := dualdb.checked_text('error', fail_task.error, {MAX_ERROR}, false);
    retrying boolean := coalesce(fail_task.retry, false);
    done public.tasks;
BEGIN
    IF fail_task.max_attempts IS NULL OR fail_task.max_attempts < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid max_attempts: must not be negative';
    END IF;
    -- t.attempts in SET is the locked row's: the retry is decided on what the worker holds.
    UPDATE public.tasks t
       SET status = CASE WHEN retrying AND t.attempts < fail_task.max_attempts
                         THEN 'Queued' ELSE 'Failed' END,
           worker_id = CASE WHEN retrying AND t.attempts < fail_task.max_attempts
                            THEN NULL ELSE t.worker_id END,
           heartbeat_at = CASE WHEN retrying AND t.attempts < fail_task.max_attempts
                               THEN NULL ELSE t.heartbeat_at END,
           error = message, updated_at = clock_timestamp()
     WHERE t.id = fail_task.task_id AND t.status = 'In Progress' AND t.worker_id = worker
    RETURNING t.* INTO done;
    IF NOT FOUND THEN
        PERFORM dualdb.refuse_held('fail', fail_task.task_id);
    END IF;
    -- A failure cascades to the dependents in the database (0006's tasks_after_status).
    RETURN done;
END
$fn$""",
    "release_claim(uuid, text)": f"""
CREATE FUNCTION dualdb.release_claim(task_id uuid, worker_id text) RETURNS public.tasks
{_HEADER} AS $fn$
DECLARE
    worker text := dualdb.checked_text('worker_id', release_claim.worker_id,
                                       {MAX_WORKER_ID}, true);
    done public.tasks;
BEGIN
    UPDATE public.tasks t
       SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL,
           attempts = t.attempts - 1, updated_at = clock_timestamp()
     WHERE t.id = release_claim.task_id AND t.status = 'In Progress' AND t.worker_id = worker
    RETURNING t.* INTO done;
    IF NOT FOUND THEN
        PERFORM dualdb.refuse_held('release', release_claim.task_id);
    END IF;
    RETURN done;
END
$fn$""",
    "requeue_stale(interval, integer)": f"""
CREATE FUNCTION dualdb.requeue_stale(older_than interval, max_attempts integer DEFAULT 3)
RETURNS SETOF public.tasks
{_HEADER} AS $fn$
DECLARE
    stale record;
    gone text;
    waiting uuid[];
    done public.tasks;
BEGIN
    IF requeue_stale.older_than IS NULL OR requeue_stale.older_than < interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid older_than: must be a non-negative interval';
    END IF;
    IF requeue_stale.older_than > interval '{MAX_STALE_DAYS} days' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid older_than: must be at most {MAX_STALE_DAYS} days';
    END IF;
    IF requeue_stale.max_attempts IS NULL OR requeue_stale.max_attempts < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'invalid max_attempts: must not be negative';
    END IF;
    -- A task started by a writer that never heartbeats (plain SQL) goes stale from its
    -- start, or its last change.
    FOR stale IN
        SELECT t.id, t.attempts, t.worker_id FROM public.tasks t
         WHERE t.status = 'In Progress'
           AND coalesce(t.heartbeat_at, t.generation_started_at, t.updated_at, t.created_at)
               < clock_timestamp() - requeue_stale.older_than
         ORDER BY coalesce(t.heartbeat_at, t.generation_started_at, t.updated_at,
                           t.created_at), t.id
         FOR UPDATE SKIP LOCKED
    LOOP
        gone := format('worker %s stopped heartbeating',
                       coalesce(nullif(stale.worker_id, ''), '(none)'));
        IF stale.attempts < requeue_stale.max_attempts THEN
            UPDATE public.tasks t
               SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL,
                   error = 'requeued: ' || gone, updated_at = clock_timestamp()
             WHERE t.id = stale.id
            RETURNING t.* INTO done;
            RETURN NEXT done;
        ELSE
            waiting := dualdb.unfinished_dependents(stale.id);
            UPDATE public.tasks t
               SET status = 'Failed', updated_at = clock_timestamp(),
                   error = format('failed after %s attempts: %s', stale.attempts, gone)
             WHERE t.id = stale.id
            RETURNING t.* INTO done;
            RETURN NEXT done;
            -- Cancelled by the cascade (0006) during the UPDATE above.
            RETURN QUERY SELECT t.* FROM public.tasks t
                          WHERE t.id = ANY (waiting) ORDER BY t.created_at, t.id;
        END IF;
    END LOOP;
END
$fn$""",
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for signature, function in FUNCTIONS.items():
        op.execute(function)
        op.execute(f"REVOKE ALL ON FUNCTION dualdb.{signature} FROM PUBLIC")
    # The helpers run with the caller's rights inside the verbs, so the caller needs them too.
    for signature in FUNCTIONS:
        op.execute(f"GRANT EXECUTE ON FUNCTION dualdb.{signature} TO service_role")
    op.execute("GRANT USAGE ON SCHEMA dualdb TO service_role")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("REVOKE USAGE ON SCHEMA dualdb FROM service_role")
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS dualdb.{signature}")
