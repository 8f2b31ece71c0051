"""Wake workers: NOTIFY ``dualdb_tasks`` when a task becomes ready, whoever wrote it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Postgres only (SQLite has no NOTIFY; workers there watch ``PRAGMA data_version``).  A task is
ready when it is ``Queued`` with ``unmet_dependencies = 0``.  It becomes ready when it is
inserted so (``enqueue``, ``public.enqueue_task``, PostgREST, plain SQL), when its status turns
``Queued`` (``release``, ``fail`` with a retry, ``release_claim``, ``requeue_stale``), or when
its last dependency completes (0006's triggers lower the counter).  Two row triggers, named
``tasks_notify_ready_insert`` and ``tasks_notify_ready_update``, fire in exactly those cases
(their ``WHEN`` clause is checked without calling any function, so other writes — heartbeats,
claims, completions of tasks nobody waits for — cost nothing) and call
``pg_notify('dualdb_tasks', '')``.

Postgres delivers a notification at commit, and folds identical ones of one transaction into
one: a bulk enqueue of 10,000 tasks sends a single notification.  Workers ``LISTEN`` on a
connection of their own; behind Supabase's transaction pooler (which does not carry
``LISTEN``) they poll instead.

The function runs as its owner (``SECURITY DEFINER``), so it behaves the same whichever role
writes, and lives in the schema ``dualdb``, out of PostgREST's reach.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The channel workers LISTEN on (frozen here; dualdb.backends.postgres has the same).
CHANNEL = "dualdb_tasks"

NOTIFY_FUNCTION = f"""
CREATE FUNCTION dualdb.tasks_notify_ready() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
    -- Delivered at commit; identical notifications of one transaction are sent once.
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$"""

_READY = "NEW.status = 'Queued' AND NEW.unmet_dependencies = 0"

#: trigger name → when it fires.
TRIGGERS: dict[str, str] = {
    "tasks_notify_ready_insert": f"AFTER INSERT ON tasks FOR EACH ROW WHEN ({_READY})",
    "tasks_notify_ready_update": (
        f"AFTER UPDATE ON tasks FOR EACH ROW WHEN ({_READY} "
        "AND (OLD.status <> 'Queued' OR OLD.unmet_dependencies <> 0))"
    ),
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(NOTIFY_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION dualdb.tasks_notify_ready() FROM PUBLIC")
    for name, when in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION dualdb.tasks_notify_ready()")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for name in reversed(TRIGGERS):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON tasks")
    op.execute("DROP FUNCTION IF EXISTS dualdb.tasks_notify_ready()")
