"""Who may change what through Supabase's API: the queue's columns belong to workers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Postgres only (SQLite has no roles; the data-access layer applies the same rules to a scoped
user there).  Row Level Security (0004) keeps users out of each other's rows; inside their own
rows these triggers decide what the API roles (``authenticated``, ``anon`` — PostgREST's
``SET ROLE``, and dualdb's own ``for_user`` sessions) may write:

* **tasks** — a user creates tasks only as ``Queued`` or ``Pending``, with the queue's columns
  (``worker_id``, ``attempts``, ``error``, ``generation_started_at``, ``heartbeat_at``,
  ``generation_processed_at``) at their defaults and ``created_at`` set by the server; on a
  task that has not started (``Pending``/``Queued``) a user may release it, hold it, cancel it
  (with a reason in ``error``) or edit ``params`` and ``task_type`` — nothing else; a user may
  delete a task that is not running (the rules of 0006 still apply).
* **users, projects, shots, generations** — ``created_at`` is set by the server on insert and
  never changes; ``updated_at`` is the server's time of the change.

Refusals carry SQLSTATE 42501 (``insufficient_privilege``: PostgREST answers 403, dualdb raises
PermissionDenied).  The rules apply to every writer under Row Level Security
(``row_security_active``): ``anon``, ``authenticated`` and any custom role granted them — not the
owner, not ``service_role`` (BYPASSRLS), and not the rules of 0006, which run as the tables'
owner, so their own writes (cascades, counters, generations) pass.  A ``created_at`` or
``unmet_dependencies`` sent back unchanged-or-stale is kept as it was rather than refused.

The front end's queue verbs are SQL functions in ``public``, callable with supabase-js
``rpc()`` as the signed-in user under the same rules (``SECURITY INVOKER``: RLS and the triggers
above apply): ``enqueue_task(project_id, task_type, params, depends_on, status, id)``,
``release_task(task_id)`` and ``cancel_task(task_id, reason)`` (which returns the task and every
dependent the cancellation cascaded to).  Each is one statement and one round trip; refusals
carry the SQLSTATEs above, plus ``PT404`` (PostgREST answers 404) for a task the caller
cannot see.

Also: ``service_role`` no longer reads ``alembic_version`` (only the migrating role does).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE_COLUMNS = (
    "worker_id",
    "attempts",
    "generation_started_at",
    "heartbeat_at",
    "generation_processed_at",
    "unmet_dependencies",
)
#: Tables whose ``created_at``/``updated_at`` the server manages for the API roles.
TIMED_TABLES = ("users", "projects", "shots", "generations")


def _deny(message: str) -> str:
    return f"RAISE EXCEPTION USING MESSAGE = '{message}', ERRCODE = '42501'"


_QUEUE_UNCHANGED = " OR ".join(
    f"NEW.{c} IS DISTINCT FROM OLD.{c}"
    for c in (*QUEUE_COLUMNS, "output_location")
    if c != "unmet_dependencies"  # kept as it was (below), whatever was sent
)
_QUEUE_DEFAULTS = " OR ".join(
    [f"NEW.{c} IS NOT NULL" for c in QUEUE_COLUMNS if c not in ("attempts", "unmet_dependencies")]
    + ["NEW.attempts <> 0", "NEW.error IS NOT NULL", "NEW.output_location IS NOT NULL"]
)

TASKS_API_RULES = f"""
CREATE FUNCTION dualdb.tasks_api_rules() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
BEGIN
    -- Every role under RLS (anon, authenticated, and custom roles granted them) — not the
    -- owner, not service_role (BYPASSRLS), not 0006's rules running as the owner.
    IF NOT row_security_active(TG_RELID) THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status NOT IN ('Queued', 'Pending') THEN
            {_deny("a signed-in user creates tasks only as Queued or Pending")};
        END IF;
        IF {_QUEUE_DEFAULTS} THEN
            {_deny("the queue columns of a task belong to workers: leave them to their defaults")};
        END IF;
        NEW.created_at := clock_timestamp();
        NEW.updated_at := NULL;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        IF OLD.status = 'In Progress' THEN
            {_deny("a signed-in user cannot delete a running task")};
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status NOT IN ('Pending', 'Queued') THEN
        {_deny("a signed-in user changes only tasks that have not started")};
    END IF;
    IF NEW.status NOT IN ('Pending', 'Queued', 'Cancelled') THEN
        {_deny("a signed-in user may release, hold or cancel a task, not run it")};
    END IF;
    IF {_QUEUE_UNCHANGED} OR (NEW.error IS DISTINCT FROM OLD.error AND NEW.status <> 'Cancelled')
    THEN
        {_deny("the queue columns of a task belong to workers")};
    END IF;
    -- Kept, not refused: a front end that sends back the whole row it read (a rounded
    -- created_at, a counter that moved since) changes nothing it may not change.
    NEW.created_at := OLD.created_at;
    NEW.unmet_dependencies := OLD.unmet_dependencies;
    IF NEW.dependant_on IS DISTINCT FROM OLD.dependant_on
       OR NEW.project_id IS DISTINCT FROM OLD.project_id THEN
        {_deny("a signed-in user cannot change the dependencies or the project of a task")};
    END IF;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$fn$"""


#: The front end's queue verbs (``public``: PostgREST exposes them to ``rpc()``).
FUNCTIONS: dict[str, str] = {
    "enqueue_task(uuid, text, jsonb, uuid[], text, uuid)": """
CREATE FUNCTION public.enqueue_task(
    project_id uuid,
    task_type text,
    params jsonb DEFAULT '{}'::jsonb,
    depends_on uuid[] DEFAULT '{}'::uuid[],
    status text DEFAULT 'Queued',
    id uuid DEFAULT NULL
) RETURNS public.tasks
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
DECLARE
    made public.tasks;
BEGIN
    IF coalesce(array_ndims(enqueue_task.depends_on), 1) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE =
            'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)';
    END IF;
    IF enqueue_task.status IS DISTINCT FROM 'Queued'
       AND enqueue_task.status IS DISTINCT FROM 'Pending' THEN
        RAISE EXCEPTION USING MESSAGE = 'invalid status: a new task starts as Queued or Pending',
                              ERRCODE = '22023';
    END IF;
    -- Duplicates go, order stays (as the DAL's enqueue).
    INSERT INTO public.tasks AS t (id, project_id, task_type, params, dependant_on, status)
    VALUES (
        coalesce(enqueue_task.id, gen_random_uuid()),
        enqueue_task.project_id,
        enqueue_task.task_type,
        enqueue_task.params,
        ARRAY(SELECT d FROM unnest(coalesce(enqueue_task.depends_on, '{}'::uuid[]))
                            WITH ORDINALITY AS u(d, n)
              GROUP BY d ORDER BY min(n)),
        enqueue_task.status
    )
    RETURNING t.* INTO made;
    RETURN made;
END
$fn$""",
    "release_task(uuid)": """
CREATE FUNCTION public.release_task(task_id uuid) RETURNS public.tasks
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
DECLARE
    done public.tasks;
    now_status text;
BEGIN
    UPDATE public.tasks AS t SET status = 'Queued', updated_at = clock_timestamp()
     WHERE t.id = release_task.task_id AND t.status = 'Pending'
    RETURNING t.* INTO done;
    IF FOUND THEN
        RETURN done;
    END IF;
    SELECT t.status INTO now_status FROM public.tasks t WHERE t.id = release_task.task_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING MESSAGE = 'no such task', ERRCODE = 'PT404';
    END IF;
    RAISE EXCEPTION USING MESSAGE = 'conflict: the task is ' || now_status || ', not Pending',
                          ERRCODE = '23000';
END
$fn$""",
    "cancel_task(uuid, text)": """
CREATE FUNCTION public.cancel_task(task_id uuid, reason text DEFAULT 'cancelled')
RETURNS SETOF public.tasks
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
DECLARE
    done public.tasks;
    now_status text;
    waiting uuid[];
BEGIN
    -- What the cancellation will cascade to (the database does the cascading).
    waiting := ARRAY(
        WITH RECURSIVE reach(id) AS (
            SELECT e.task_id FROM public.task_dependencies e
             WHERE e.dependency_id = cancel_task.task_id
            UNION
            SELECT e.task_id FROM public.task_dependencies e JOIN reach r ON e.dependency_id = r.id
        )
        SELECT t.id FROM public.tasks t JOIN reach USING (id)
         WHERE t.status IN ('Pending', 'Queued', 'In Progress'));
    UPDATE public.tasks AS t
       SET status = 'Cancelled', error = coalesce(cancel_task.reason, 'cancelled'),
           updated_at = clock_timestamp()
     WHERE t.id = cancel_task.task_id AND t.status IN ('Pending', 'Queued', 'In Progress')
    RETURNING t.* INTO done;
    IF NOT FOUND THEN
        SELECT t.status INTO now_status FROM public.tasks t WHERE t.id = cancel_task.task_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING MESSAGE = 'no such task', ERRCODE = 'PT404';
        END IF;
        RAISE EXCEPTION USING MESSAGE = 'conflict: the task is ' || now_status
                                        || ': only unfinished tasks can be cancelled',
                              ERRCODE = '23000';
    END IF;
    RETURN NEXT done;
    RETURN QUERY SELECT t.* FROM public.tasks t
                  WHERE t.id = ANY (waiting) ORDER BY t.created_at, t.id;
END
$fn$""",
}


def _times_function(table: str, has_updated_at: bool) -> str:
    updated = "NEW.updated_at := NULL;" if has_updated_at else ""
    changed = "NEW.updated_at := clock_timestamp();" if has_updated_at else ""
    return f"""
CREATE FUNCTION dualdb.{table}_api_times() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
BEGIN
    IF NOT row_security_active(TG_RELID) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := clock_timestamp();
        {updated}
    ELSE
        NEW.created_at := OLD.created_at;
        {changed}
    END IF;
    RETURN NEW;
END
$fn$"""


#: trigger → (function SQL, timing and events)
TRIGGERS: dict[str, tuple[str, str]] = {
    "tasks_api_rules": (TASKS_API_RULES, "BEFORE INSERT OR UPDATE OR DELETE ON tasks"),
    **{
        f"{table}_api_times": (
            _times_function(table, table != "users"),
            f"BEFORE INSERT OR UPDATE ON {table}",
        )
        for table in TIMED_TABLES
    },
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for name, (function, when) in TRIGGERS.items():
        op.execute(function)
        op.execute(f"REVOKE ALL ON FUNCTION dualdb.{name}() FROM PUBLIC")
        op.execute(f"CREATE TRIGGER {name} {when} FOR EACH ROW EXECUTE FUNCTION dualdb.{name}()")
    for signature, function in FUNCTIONS.items():
        op.execute(function)
        op.execute(f"REVOKE ALL ON FUNCTION public.{signature} FROM PUBLIC, anon")
        op.execute(f"GRANT EXECUTE ON FUNCTION public.{signature} TO authenticated, service_role")
    op.execute("REVOKE SELECT ON alembic_version FROM service_role")
    # Only the database's own rules write the edges (TRUNCATE fires no row trigger).
    op.execute("REVOKE INSERT, UPDATE, DELETE ON task_dependencies FROM anon, authenticated")
    op.execute("REVOKE TRUNCATE ON task_dependencies, tasks FROM service_role")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("GRANT TRUNCATE ON task_dependencies, tasks TO service_role")
    op.execute("GRANT INSERT, UPDATE, DELETE ON task_dependencies TO authenticated")
    op.execute("GRANT SELECT ON alembic_version TO service_role")
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS public.{signature}")
    for name, (_, when) in reversed(TRIGGERS.items()):
        table = when.rsplit(" ON ", 1)[1]
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS dualdb.{name}()")
