# ruff: noqa: E501, W293 - the trigger bodies are frozen as SQLite stores them
"""A dependency's Failed/Cancelled check reads it by primary key (SQLite).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30

Migration 0006's triggers ``tasks_before_insert`` and ``tasks_check_dependencies`` refuse a
task whose dependencies include a Failed or Cancelled one with
``… json_each(NEW.dependant_on) j JOIN tasks d ON d.id = j.value WHERE d.status IN
('Failed', 'Cancelled')``.  With no statistics (dualdb never runs ``ANALYZE`` on SQLite) the
planner read that through ``ix_tasks_status_created_at``: every Failed and Cancelled task of
the table, for each task inserted with dependencies, so an insert's cost grew with the
finished work and a bulk insert of dependent tasks took quadratic time (1,000 / 2,000 / 4,000
/ 8,000 chained tasks, one chain in ten failed: 10,979 / 6,719 / 3,282 / 2,373 rows/s).
``+d.status`` (SQLite's way to keep a term off an index) leaves the primary key as the only
way in: each dependency is read by its id.

Nothing else changes: the same checks, in the same order, with the same errors.  Postgres
needs nothing (migration 0013).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The triggers as 0006 created them (``sqlite_master.sql``).
BEFORE: dict[str, str] = {
    "tasks_before_insert": r"""
CREATE TRIGGER tasks_before_insert BEFORE INSERT ON tasks
BEGIN
    SELECT RAISE(ABORT, 'invalid id: must be a canonical UUID (lowercase, with hyphens)') WHERE NEW.id IS NULL OR NEW.id NOT GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]';
    -- Before REPLACE deletes the old row (without its delete triggers): never replaced.
    SELECT RAISE(ABORT, 'conflict: a task with this id exists (a task is never replaced)') WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.id = NEW.id);
        SELECT RAISE(ABORT, 'invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z') WHERE NEW.created_at IS NOT NULL AND NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z';
    SELECT RAISE(ABORT, 'invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z') WHERE NEW.updated_at IS NOT NULL AND NEW.updated_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z';
    SELECT RAISE(ABORT, 'invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z') WHERE NEW.generation_started_at IS NOT NULL AND NEW.generation_started_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z';
    SELECT RAISE(ABORT, 'invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z') WHERE NEW.heartbeat_at IS NOT NULL AND NEW.heartbeat_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z';
    SELECT RAISE(ABORT, 'invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z') WHERE NEW.generation_processed_at IS NOT NULL AND NEW.generation_processed_at NOT GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z';
    
    SELECT RAISE(ABORT, 'invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range')
     WHERE typeof(NEW.params) = 'text' AND NOT json_valid(NEW.params)
       AND ltrim(NEW.params, ' ' || char(9, 10, 13)) GLOB '{*'
       AND length(NEW.params)
           - length(replace(replace(NEW.params, '{', ''), '[', '')) > 1000;
    SELECT RAISE(ABORT, 'invalid params: must be a JSON object')
     WHERE CASE WHEN json_valid(NEW.params) THEN json_type(NEW.params) <> 'object' ELSE 1 END;
    SELECT RAISE(ABORT, 'invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range')
     WHERE EXISTS (
        WITH RECURSIVE walk(v, t, d) AS (
            SELECT NEW.params, 'object', 0
            UNION ALL
            SELECT j.value, j.type, w.d + 1 FROM walk w, json_each(w.v) j
             WHERE w.t IN ('object', 'array') AND w.d < 64
        )
        SELECT 1 FROM walk
         WHERE (t IN ('object', 'array') AND d >= 64)
            OR (t IN ('integer', 'real') AND abs(v) > 1.7976931348623157e308)
     );
    
    SELECT RAISE(ABORT, 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)') WHERE CASE WHEN json_valid(NEW.dependant_on) THEN CASE WHEN json_type(NEW.dependant_on) = 'array' THEN EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE j.type <> 'text' OR j.value NOT GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') ELSE 1 END ELSE 1 END;
    SELECT RAISE(ABORT, 'invalid dependant_on: a task cannot depend on itself')
     WHERE EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE j.value = NEW.id);
    SELECT RAISE(ABORT, 'invalid dependant_on: names a task that is not in this project')
     WHERE EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE NOT EXISTS (
        SELECT 1 FROM tasks d WHERE d.id = j.value AND d.project_id = NEW.project_id));
    SELECT RAISE(ABORT, 'invalid dependant_on: names a Failed or Cancelled task, which will never complete')
     WHERE NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete')
       AND EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j JOIN tasks d ON d.id = j.value
                    WHERE d.status IN ('Failed', 'Cancelled'));
    SELECT RAISE(ABORT, 'invalid attempts: must be a non-negative integer')
     WHERE typeof(NEW.attempts) <> 'integer' OR NEW.attempts < 0;
    SELECT RAISE(ABORT, 'conflict: unmet_dependencies is kept by the database (it counts unfinished dependencies)') WHERE NEW.unmet_dependencies IS NULL;
    SELECT RAISE(ABORT, 'conflict: a task cannot start or complete before every dependency is Complete')
     WHERE NEW.status IN ('In Progress', 'Complete') AND EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(NEW.dependant_on) THEN NEW.dependant_on ELSE '[]' END) j JOIN tasks d ON d.id = j.value WHERE d.status <> 'Complete');
END
""",
    "tasks_check_dependencies": r"""
CREATE TRIGGER tasks_check_dependencies BEFORE UPDATE OF id, dependant_on, project_id ON tasks
WHEN NEW.id IS NOT OLD.id OR NEW.dependant_on IS NOT OLD.dependant_on
  OR NEW.project_id IS NOT OLD.project_id
BEGIN
    SELECT RAISE(ABORT, 'conflict: the id of a task never changes') WHERE NEW.id IS NOT OLD.id;
    SELECT RAISE(ABORT, 'conflict: the dependencies of a started or finished task cannot change')
     WHERE OLD.status NOT IN ('Pending', 'Queued')
       AND (NEW.dependant_on IS NOT OLD.dependant_on OR NEW.project_id IS NOT OLD.project_id);
    
    SELECT RAISE(ABORT, 'invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)') WHERE CASE WHEN json_valid(NEW.dependant_on) THEN CASE WHEN json_type(NEW.dependant_on) = 'array' THEN EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE j.type <> 'text' OR j.value NOT GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]') ELSE 1 END ELSE 1 END;
    SELECT RAISE(ABORT, 'invalid dependant_on: a task cannot depend on itself')
     WHERE EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE j.value = NEW.id);
    SELECT RAISE(ABORT, 'invalid dependant_on: names a task that is not in this project')
     WHERE EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j WHERE NOT EXISTS (
        SELECT 1 FROM tasks d WHERE d.id = j.value AND d.project_id = NEW.project_id));
    SELECT RAISE(ABORT, 'invalid dependant_on: names a Failed or Cancelled task, which will never complete')
     WHERE NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete')
       AND EXISTS (SELECT 1 FROM json_each(NEW.dependant_on) j JOIN tasks d ON d.id = j.value
                    WHERE d.status IN ('Failed', 'Cancelled'));
    SELECT RAISE(ABORT, 'invalid dependant_on: would make a dependency cycle')
     WHERE NEW.id IN (
        WITH RECURSIVE reach(id) AS (
            SELECT j.value FROM json_each(NEW.dependant_on) j
            UNION
            SELECT e.dependency_id FROM task_dependencies e JOIN reach r ON e.task_id = r.id
        )
        SELECT id FROM reach
     );
    SELECT RAISE(ABORT, 'conflict: tasks of its project depend on this task: it cannot move to another')
     WHERE NEW.project_id IS NOT OLD.project_id
       AND EXISTS (SELECT 1 FROM task_dependencies e JOIN tasks t ON t.id = e.task_id
                    WHERE e.dependency_id = NEW.id AND t.project_id IS NOT NEW.project_id);
END
""",
}

#: The same triggers, each with its one Failed/Cancelled check reading the dependency by id.
AFTER: dict[str, str] = {
    name: sql.replace(
        "JOIN tasks d ON d.id = j.value\n                    WHERE d.status IN",
        "JOIN tasks d ON d.id = j.value\n                    WHERE +d.status IN",
    )
    for name, sql in BEFORE.items()
}


def _replace(triggers: dict[str, str]) -> None:
    for name, sql in triggers.items():
        # IF EXISTS: a trigger lost to a batch rebuild is recreated (what `dualdb check`
        # tells the user to do: downgrade to 0005, then migrate, runs this again).
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(sql.strip("\n"))


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace(AFTER)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace(BEFORE)
