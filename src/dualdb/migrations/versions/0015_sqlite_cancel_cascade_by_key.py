# ruff: noqa: E501 - the trigger body is frozen as SQLite stores it
"""A failed or cancelled task reaches its dependents by key (SQLite).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30

Migration 0006's trigger ``tasks_after_status`` cancels every unfinished dependent of a task
that fails or is cancelled, transitively: ``UPDATE tasks … WHERE NEW.status IN ('Failed',
'Cancelled') AND (status IN ('Pending', 'Queued', 'In Progress') OR (status = 'Cancelled' AND
error IS NULL)) AND EXISTS (<an unfinished direct dependent>) AND id IN (<the dependents,
recursively>)``.  With no statistics (dualdb never runs ``ANALYZE`` on SQLite) the planner drove
that update from ``ix_tasks_status_created_at``: it read every unfinished and every Cancelled
task of the table and tested each against the dependents, so failing or cancelling one task
cost O(unfinished + Cancelled tasks) — 11,300 SQLite VM steps with 1,000 Queued tasks in the
table, 220,300 with 20,000, 30,300 with 6,000 Cancelled ones — and a statement cancelling many
tasks at once took quadratic time (5,000 / 10,000 / 20,000 ready tasks: 4.3 / 16 / 101 s).

Here ``+status`` (SQLite's way to keep a term off an index) leaves the dependents' keys as the
only way in: about 275 VM steps whatever the table holds.  ``+t0.status`` does the same in the
guard (today's plan reads ``t0`` by key already; this keeps it so).  The guard — nothing left
to cancel below, no walk — now also stands in the walk's first step: with the update driven by
the walk, it would otherwise be tested only after the walk, and a task whose dependents are all
cancelled already would walk them all again.

Nothing else changes: the same rows cancelled, with the same error and time, and the same
generation on completion.  Postgres is not changed: its function tests the guard before it
walks, and its planner has statistics.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The trigger as 0006 created it (``sqlite_master.sql``).
BEFORE = r"""
CREATE TRIGGER tasks_after_status AFTER UPDATE OF status ON tasks
WHEN NEW.status IS NOT OLD.status
BEGIN
    -- Completed: one fewer unmet dependency for each task waiting on it.
    UPDATE tasks SET unmet_dependencies = unmet_dependencies - 1
     WHERE NEW.status = 'Complete'
       AND id IN (SELECT task_id FROM task_dependencies WHERE dependency_id = NEW.id)
       AND EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(tasks.dependant_on)
                                           THEN tasks.dependant_on ELSE '[]' END) j
                    WHERE j.value = NEW.id);

    INSERT INTO generations (id, tasks, location, type, created_at, updated_at, project_id)
        SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))), json_array(NEW.id), NEW.output_location, NEW.task_type,
               (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'), NULL, NEW.project_id
         WHERE NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
           AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null';
    INSERT INTO shot_generations (id, shot_id, generation_id, position)
        SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))), s.id, g.id,
               (SELECT coalesce(max(sg.position), -1) + 1 FROM shot_generations sg
                 WHERE sg.shot_id = s.id)
          FROM generations g, shots s
         WHERE NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
           AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null'
           AND g.rowid = last_insert_rowid()
           AND s.id = lower(json_extract(NEW.params, '$.shot_id'))
           AND s.project_id = NEW.project_id;
    UPDATE tasks SET generation_processed_at = (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
     WHERE id = NEW.id AND NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
       AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null';
    -- Failed or Cancelled: every unfinished dependent, transitively, is Cancelled.
    UPDATE tasks
       SET status = 'Cancelled',
           error = 'cancelled: dependency ' || NEW.id || ' '
                   || CASE NEW.status WHEN 'Failed' THEN 'failed'
                      ELSE coalesce(NEW.error, 'cancelled') END,
           updated_at = (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
     WHERE NEW.status IN ('Failed', 'Cancelled')
       AND (status IN ('Pending', 'Queued', 'In Progress') OR (status = 'Cancelled' AND error IS NULL))
       AND EXISTS (SELECT 1 FROM task_dependencies e0 JOIN tasks t0 ON t0.id = e0.task_id
                    WHERE e0.dependency_id = NEW.id
                      AND (t0.status IN ('Pending', 'Queued', 'In Progress')
                           OR (t0.status = 'Cancelled' AND t0.error IS NULL)))
       AND id IN (
        WITH RECURSIVE reach(id) AS (
            SELECT task_id FROM task_dependencies WHERE dependency_id = NEW.id
            UNION
            SELECT e.task_id FROM task_dependencies e JOIN reach r ON e.dependency_id = r.id
        )
        SELECT id FROM reach
       );
END
"""

#: The status tests of the cascade, each kept off the status index.
_UNFINISHED = "(status IN ('Pending', 'Queued', 'In Progress') OR (status = 'Cancelled'"
_DIRECT = "(t0.status IN ('Pending', 'Queued', 'In Progress')\n                           OR (t0.status = 'Cancelled'"
#: The guard (an unfinished direct dependent), and the walk's first step.
_GUARD = ("EXISTS (SELECT 1 FROM task_dependencies e0", "t0.error IS NULL)))")
_SEED = "SELECT task_id FROM task_dependencies WHERE dependency_id = NEW.id\n"


def _after(before: str) -> str:
    """0006's trigger with the cascade driven by the dependents' keys (the docstring)."""
    # Each edit has exactly one place (the completion branch, say, must keep its walk-free
    # decrement): a text that drifted would otherwise be edited elsewhere, or not at all.
    for part in (_UNFINISHED, _DIRECT, _GUARD[0], _SEED):
        assert before.count(part) == 1, part
    sql = before.replace(_UNFINISHED, _UNFINISHED.replace("(status", "(+status"))
    sql = sql.replace(_DIRECT, _DIRECT.replace("(t0.status", "(+t0.status"))
    start = sql.index(_GUARD[0])
    guard = sql[start : sql.index(_GUARD[1], start) + len(_GUARD[1])]
    first_step = f"{_SEED}               AND NEW.status IN ('Failed', 'Cancelled') AND {guard}\n"
    return sql.replace(_SEED, first_step)


#: The trigger this migration creates.
AFTER = _after(BEFORE)


def _replace(sql: str) -> None:
    # IF EXISTS: a trigger lost to a batch rebuild is recreated (what `dualdb check` tells
    # the user to do: downgrade to 0005, then migrate, runs this again).
    op.execute("DROP TRIGGER IF EXISTS tasks_after_status")
    op.execute(sql.strip("\n"))


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace(AFTER)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace(BEFORE)
