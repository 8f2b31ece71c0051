"""The queue's rules in the database: triggers on both backends, whoever writes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

The database is shared (supabase-js through PostgREST, SQL scripts, other programs on
``local.db``), so every rule the queue relies on is kept by the database itself, with the same
trigger names and the same verdicts on SQLite and Postgres:

* **Shapes.** ``params`` is a JSON object, nested at most 64 levels, whose numbers are finite
  64-bit floats; ``dependant_on`` and ``generations.tasks`` are arrays of canonical UUIDs with
  no nulls; ``attempts`` and ``unmet_dependencies`` are never negative.
* **Dependencies.** A task may depend only on tasks of its own project, never on itself (nor,
  through an update, on a task that depends on it); an unfinished task never on a Failed or
  Cancelled one.  A task's id never changes, and a task others depend on never moves to
  another project.
* **Readiness.** ``task_dependencies`` and ``tasks.unmet_dependencies`` are derived from
  ``dependant_on`` by the triggers on any INSERT, any UPDATE of ``status`` or ``dependant_on``
  and any DELETE.  A direct write that disagrees with them is refused.
* **Status transitions.** ``Pending → Queued | Cancelled``, ``Queued → In Progress | Pending |
  Cancelled``, ``In Progress → Complete | Failed | Queued | Cancelled``; finished tasks never
  change.  A task starts (or is inserted ``In Progress``/``Complete``) only when every
  dependency is Complete.
* **Cascades.** A task that becomes Failed or Cancelled cancels every unfinished task that
  depends on it, transitively (one statement: SQLite's triggers do not fire themselves).
* **Completion.** A task with ``params.shot_id`` that becomes Complete (or is inserted
  Complete) gets its generation, placed at the end of the shot (when the shot is in its
  project), exactly once (``generation_processed_at``).
* **Deletes.** A task that an unfinished task depends on cannot be deleted while its project
  exists (deleting the project deletes them all); edges go with their tasks even where foreign
  keys are off, and the dependents' counters stop counting a deleted dependency.

Messages are fixed text (SQLite's ``RAISE`` takes only a literal): ``invalid <column>: …``
(SQLSTATE 22023 on Postgres; dualdb raises InvalidInput) and ``conflict: …`` (SQLSTATE 23000;
Conflict).  On Postgres the trigger functions live in the ``dualdb`` schema, outside PostgREST's,
and run as their owner, so they behave the same whichever role writes.

Alembic's batch mode recreates a SQLite table without its triggers: a later migration that
batch-alters ``tasks``, ``task_dependencies`` or ``generations`` must create them again
(``dualdb check`` reports missing ones).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, trigger) — the same names on both backends.
TRIGGERS: tuple[tuple[str, str], ...] = (
    ("tasks", "tasks_before_insert"),
    ("tasks", "tasks_after_insert"),
    ("tasks", "tasks_check_params"),
    ("tasks", "tasks_check_times"),
    ("tasks", "tasks_check_dependencies"),
    ("tasks", "tasks_check_counters"),
    ("tasks", "tasks_check_status"),
    ("tasks", "tasks_after_dependencies"),
    ("tasks", "tasks_after_status"),
    ("tasks", "tasks_before_delete"),
    ("tasks", "tasks_after_delete"),
    ("projects", "projects_after_delete"),
    ("task_dependencies", "task_dependencies_before_insert"),
    ("task_dependencies", "task_dependencies_before_update"),
    ("task_dependencies", "task_dependencies_before_delete"),
    ("generations", "generations_check_tasks_insert"),
    ("generations", "generations_check_tasks_update"),
)

# --- messages (one place, both backends) ---------------------------------------------------

M_PARAMS_OBJECT = "invalid params: must be a JSON object"
M_PARAMS_LIMITS = (
    "invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range"
)
M_DEPS_SHAPE = "invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)"
M_DEPS_SELF = "invalid dependant_on: a task cannot depend on itself"
M_DEPS_PROJECT = "invalid dependant_on: names a task that is not in this project"
M_DEPS_DEAD = "invalid dependant_on: names a Failed or Cancelled task, which will never complete"
M_DEPS_CYCLE = "invalid dependant_on: would make a dependency cycle"
M_DEPS_STARTED = "conflict: the dependencies of a started or finished task cannot change"
M_DEPS_MOVE = "conflict: tasks of its project depend on this task: it cannot move to another"
M_ID_FIXED = "conflict: the id of a task never changes"
M_ATTEMPTS = "invalid attempts: must be a non-negative integer"
M_UNMET = "conflict: unmet_dependencies is kept by the database (it counts unfinished dependencies)"
M_TRANSITION = (
    "conflict: status change not allowed (Pending -> Queued|Cancelled, Queued -> In Progress|"
    "Pending|Cancelled, In Progress -> Complete|Failed|Queued|Cancelled; finished tasks never "
    "change)"
)
M_NOT_READY = "conflict: a task cannot start or complete before every dependency is Complete"
M_DELETE = (
    "conflict: unfinished tasks depend on this task: cancel it (that cascades) before deleting"
)
M_EDGES = "conflict: task_dependencies is kept by the database from tasks.dependant_on"
M_TIME = "invalid timestamp: must be UTC text like 2026-01-31T12:00:00.000000Z"
M_ID_TAKEN = "conflict: a task with this id exists (a task is never replaced)"
M_ID = "invalid id: must be a canonical UUID (lowercase, with hyphens)"
M_GEN_TASKS = "invalid tasks: must be an array of task ids (canonical UUIDs, no nulls)"

UNFINISHED = "('Pending', 'Queued', 'In Progress')"
MAX_DOUBLE = "1.7976931348623157e308"
#: The same number written out exactly (Postgres compares numerics exactly: its literal
#: 1.7976931348623157e308 is a little below the largest double, which SQLite's is).
MAX_DOUBLE_EXACT = (
    "179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558"
    "632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245"
    "490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168"
    "738177180919299881250404026184124858368"
)

# =========================================================================================
# SQLite
# =========================================================================================

_HEX = "[0-9a-f]"
#: A canonical (lowercase, hyphenated) UUID, as a GLOB pattern.
UUID_GLOB = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
#: SQLite's JSON parser refuses documents nested past its own limit (2,000 levels in 3.40,
#: 1,000 from 3.45); one that opens as an object with more brackets than this is one of them.
S_PARSER_DEPTH = 1000
#: The fixed-width UTC text of ``dualdb.types.Timestamp``, as a GLOB pattern.
TIME_GLOB = (
    "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]."
    "[0-9][0-9][0-9][0-9][0-9][0-9]Z"
)
TIME_COLUMNS = (
    "created_at",
    "updated_at",
    "generation_started_at",
    "heartbeat_at",
    "generation_processed_at",
)
#: SQLite's clock in the fixed-width format of ``dualdb.types.Timestamp``.
S_NOW = "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')"
S_NEW_UUID = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
)


def _s_uuid_array(expr: str) -> str:
    """True when ``expr`` is NOT a JSON array of canonical UUID strings."""
    return (
        f"CASE WHEN json_valid({expr}) THEN CASE WHEN json_type({expr}) = 'array' THEN "
        f"EXISTS (SELECT 1 FROM json_each({expr}) j WHERE j.type <> 'text' "
        f"OR j.value NOT GLOB '{UUID_GLOB}') ELSE 1 END ELSE 1 END"
    )


def _s_params_checks() -> str:
    # The walk stops at depth 64: it never reads further into a document than the limit.
    # A document nested past what SQLite's parser takes is valid JSON that json_valid() calls
    # invalid; Postgres parses it, and finds it too deep: so does this, from its brackets.
    return f"""
    SELECT RAISE(ABORT, '{M_PARAMS_LIMITS}')
     WHERE typeof(NEW.params) = 'text' AND NOT json_valid(NEW.params)
       AND ltrim(NEW.params, ' ' || char(9, 10, 13)) GLOB '{{*'
       AND length(NEW.params)
           - length(replace(replace(NEW.params, '{{', ''), '[', '')) > {S_PARSER_DEPTH};
    SELECT RAISE(ABORT, '{M_PARAMS_OBJECT}')
     WHERE CASE WHEN json_valid(NEW.params) THEN json_type(NEW.params) <> 'object' ELSE 1 END;
    SELECT RAISE(ABORT, '{M_PARAMS_LIMITS}')
     WHERE EXISTS (
        WITH RECURSIVE walk(v, t, d) AS (
            SELECT NEW.params, 'object', 0
            UNION ALL
            SELECT j.value, j.type, w.d + 1 FROM walk w, json_each(w.v) j
             WHERE w.t IN ('object', 'array') AND w.d < 64
        )
        SELECT 1 FROM walk
         WHERE (t IN ('object', 'array') AND d >= 64)
            OR (t IN ('integer', 'real') AND abs(v) > {MAX_DOUBLE})
     );"""


def _s_times_checks() -> str:
    # Postgres' timestamptz needs no such check; on SQLite the text must sort as time does.
    return "\n".join(
        f"    SELECT RAISE(ABORT, '{M_TIME}') WHERE NEW.{c} IS NOT NULL "
        f"AND NEW.{c} NOT GLOB '{TIME_GLOB}';"
        for c in TIME_COLUMNS
    )


def _s_dependency_checks() -> str:
    deps = "json_each(NEW.dependant_on) j"
    return f"""
    SELECT RAISE(ABORT, '{M_DEPS_SHAPE}') WHERE {_s_uuid_array("NEW.dependant_on")};
    SELECT RAISE(ABORT, '{M_DEPS_SELF}')
     WHERE EXISTS (SELECT 1 FROM {deps} WHERE j.value = NEW.id);
    SELECT RAISE(ABORT, '{M_DEPS_PROJECT}')
     WHERE EXISTS (SELECT 1 FROM {deps} WHERE NOT EXISTS (
        SELECT 1 FROM tasks d WHERE d.id = j.value AND d.project_id = NEW.project_id));
    SELECT RAISE(ABORT, '{M_DEPS_DEAD}')
     WHERE NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete')
       AND EXISTS (SELECT 1 FROM {deps} JOIN tasks d ON d.id = j.value
                    WHERE d.status IN ('Failed', 'Cancelled'));"""


def _s_not_ready(deps: str) -> str:
    """``deps`` (an expression for a JSON array of task ids) has a dependency not Complete."""
    return (
        f"EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({deps}) THEN {deps} ELSE '[]' "
        "END) j JOIN tasks d ON d.id = j.value "
        "WHERE d.status <> 'Complete')"
    )


#: The number of unfinished dependencies of task NEW.id, from its edges.
S_UNMET_TRUTH = (
    "(SELECT count(*) FROM task_dependencies e JOIN tasks d ON d.id = e.dependency_id "
    "WHERE e.task_id = NEW.id AND d.status <> 'Complete')"
)

#: Completed with a shot: its generation, once, placed last on the shot (after an insert
#: or a status change to Complete).  Last is after the highest position, not at the count:
#: another program that deleted a placement leaves a gap, and the count would tie.
S_GENERATION = f"""
    INSERT INTO generations (id, tasks, location, type, created_at, updated_at, project_id)
        SELECT {S_NEW_UUID}, json_array(NEW.id), NEW.output_location, NEW.task_type,
               {S_NOW}, NULL, NEW.project_id
         WHERE NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
           AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null';
    INSERT INTO shot_generations (id, shot_id, generation_id, position)
        SELECT {S_NEW_UUID}, s.id, g.id,
               (SELECT coalesce(max(sg.position), -1) + 1 FROM shot_generations sg
                 WHERE sg.shot_id = s.id)
          FROM generations g, shots s
         WHERE NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
           AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null'
           AND g.rowid = last_insert_rowid()
           AND s.id = lower(json_extract(NEW.params, '$.shot_id'))
           AND s.project_id = NEW.project_id;
    UPDATE tasks SET generation_processed_at = {S_NOW}
     WHERE id = NEW.id AND NEW.status = 'Complete' AND NEW.generation_processed_at IS NULL
       AND coalesce(json_type(NEW.params, '$.shot_id'), 'null') <> 'null';
"""

#: The same count for task OLD.task_id (in the triggers of ``task_dependencies``).
S_UNMET_OF_OLD = S_UNMET_TRUTH.replace("NEW.id", "OLD.task_id")

SQLITE_TRIGGERS: dict[str, str] = {
    "tasks_before_insert": f"""
CREATE TRIGGER tasks_before_insert BEFORE INSERT ON tasks
BEGIN
    SELECT RAISE(ABORT, '{M_ID}') WHERE NEW.id IS NULL OR NEW.id NOT GLOB '{UUID_GLOB}';
    -- Before REPLACE deletes the old row (without its delete triggers): never replaced.
    SELECT RAISE(ABORT, '{M_ID_TAKEN}') WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.id = NEW.id);
    {_s_times_checks()}
    {_s_params_checks()}
    {_s_dependency_checks()}
    SELECT RAISE(ABORT, '{M_ATTEMPTS}')
     WHERE typeof(NEW.attempts) <> 'integer' OR NEW.attempts < 0;
    SELECT RAISE(ABORT, '{M_UNMET}') WHERE NEW.unmet_dependencies IS NULL;
    SELECT RAISE(ABORT, '{M_NOT_READY}')
     WHERE NEW.status IN ('In Progress', 'Complete') AND {_s_not_ready("NEW.dependant_on")};
END""",
    # The counter a writer gave is replaced by the truth; a task inserted Complete is one that
    # became Complete.
    "tasks_after_insert": f"""
CREATE TRIGGER tasks_after_insert AFTER INSERT ON tasks
BEGIN
    INSERT OR IGNORE INTO task_dependencies (task_id, dependency_id)
        SELECT NEW.id, j.value FROM json_each(NEW.dependant_on) j;
    UPDATE tasks SET unmet_dependencies = {S_UNMET_TRUTH}
     WHERE id = NEW.id AND unmet_dependencies IS NOT {S_UNMET_TRUTH};
{S_GENERATION}END""",
    "tasks_check_params": f"""
CREATE TRIGGER tasks_check_params BEFORE UPDATE OF params ON tasks
BEGIN
    {_s_params_checks()}
END""",
    "tasks_check_times": f"""
CREATE TRIGGER tasks_check_times BEFORE UPDATE OF {", ".join(TIME_COLUMNS)} ON tasks
BEGIN
{_s_times_checks()}
END""",
    "tasks_check_dependencies": f"""
CREATE TRIGGER tasks_check_dependencies BEFORE UPDATE OF id, dependant_on, project_id ON tasks
WHEN NEW.id IS NOT OLD.id OR NEW.dependant_on IS NOT OLD.dependant_on
  OR NEW.project_id IS NOT OLD.project_id
BEGIN
    SELECT RAISE(ABORT, '{M_ID_FIXED}') WHERE NEW.id IS NOT OLD.id;
    SELECT RAISE(ABORT, '{M_DEPS_STARTED}')
     WHERE OLD.status NOT IN ('Pending', 'Queued')
       AND (NEW.dependant_on IS NOT OLD.dependant_on OR NEW.project_id IS NOT OLD.project_id);
    {_s_dependency_checks()}
    SELECT RAISE(ABORT, '{M_DEPS_CYCLE}')
     WHERE NEW.id IN (
        WITH RECURSIVE reach(id) AS (
            SELECT j.value FROM json_each(NEW.dependant_on) j
            UNION
            SELECT e.dependency_id FROM task_dependencies e JOIN reach r ON e.task_id = r.id
        )
        SELECT id FROM reach
     );
    SELECT RAISE(ABORT, '{M_DEPS_MOVE}')
     WHERE NEW.project_id IS NOT OLD.project_id
       AND EXISTS (SELECT 1 FROM task_dependencies e JOIN tasks t ON t.id = e.task_id
                    WHERE e.dependency_id = NEW.id AND t.project_id IS NOT NEW.project_id);
END""",
    "tasks_check_counters": f"""
CREATE TRIGGER tasks_check_counters BEFORE UPDATE OF attempts, unmet_dependencies ON tasks
BEGIN
    SELECT RAISE(ABORT, '{M_ATTEMPTS}')
     WHERE typeof(NEW.attempts) <> 'integer' OR NEW.attempts < 0;
    SELECT RAISE(ABORT, '{M_UNMET}')
     WHERE NEW.unmet_dependencies IS NOT OLD.unmet_dependencies
       AND NEW.unmet_dependencies IS NOT {S_UNMET_TRUTH};
END""",
    "tasks_check_status": f"""
CREATE TRIGGER tasks_check_status BEFORE UPDATE OF status ON tasks
WHEN NEW.status IS NOT OLD.status
BEGIN
    SELECT RAISE(ABORT, '{M_TRANSITION}')
     WHERE NOT ((OLD.status = 'Pending' AND NEW.status IN ('Queued', 'Cancelled'))
             OR (OLD.status = 'Queued' AND NEW.status IN ('In Progress', 'Pending', 'Cancelled'))
             OR (OLD.status = 'In Progress'
                 AND NEW.status IN ('Complete', 'Failed', 'Queued', 'Cancelled')));
    SELECT RAISE(ABORT, '{M_NOT_READY}')
     WHERE NEW.status IN ('In Progress', 'Complete') AND {_s_not_ready("NEW.dependant_on")};
END""",
    # Edges follow the array: those no longer named go, new ones come, the counter follows.
    "tasks_after_dependencies": f"""
CREATE TRIGGER tasks_after_dependencies AFTER UPDATE OF dependant_on ON tasks
WHEN NEW.dependant_on IS NOT OLD.dependant_on
BEGIN
    DELETE FROM task_dependencies
     WHERE task_id = NEW.id
       AND dependency_id NOT IN (SELECT j.value FROM json_each(NEW.dependant_on) j);
    INSERT OR IGNORE INTO task_dependencies (task_id, dependency_id)
        SELECT NEW.id, j.value FROM json_each(NEW.dependant_on) j;
    UPDATE tasks SET unmet_dependencies = {S_UNMET_TRUTH}
     WHERE id = NEW.id AND unmet_dependencies IS NOT {S_UNMET_TRUTH};
END""",
    "tasks_after_status": f"""
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
{S_GENERATION}    -- Failed or Cancelled: every unfinished dependent, transitively, is Cancelled.
    UPDATE tasks
       SET status = 'Cancelled',
           error = 'cancelled: dependency ' || NEW.id || ' '
                   || CASE NEW.status WHEN 'Failed' THEN 'failed'
                      ELSE coalesce(NEW.error, 'cancelled') END,
           updated_at = {S_NOW}
     WHERE NEW.status IN ('Failed', 'Cancelled')
       AND (status IN {UNFINISHED} OR (status = 'Cancelled' AND error IS NULL))
       AND EXISTS (SELECT 1 FROM task_dependencies e0 JOIN tasks t0 ON t0.id = e0.task_id
                    WHERE e0.dependency_id = NEW.id
                      AND (t0.status IN {UNFINISHED}
                           OR (t0.status = 'Cancelled' AND t0.error IS NULL)))
       AND id IN (
        WITH RECURSIVE reach(id) AS (
            SELECT task_id FROM task_dependencies WHERE dependency_id = NEW.id
            UNION
            SELECT e.task_id FROM task_dependencies e JOIN reach r ON e.dependency_id = r.id
        )
        SELECT id FROM reach
       );
END""",
    "tasks_before_delete": f"""
CREATE TRIGGER tasks_before_delete BEFORE DELETE ON tasks
BEGIN
    SELECT RAISE(ABORT, '{M_DELETE}')
     WHERE EXISTS (SELECT 1 FROM task_dependencies e JOIN tasks t ON t.id = e.task_id
                    WHERE e.dependency_id = OLD.id AND t.status IN {UNFINISHED})
       AND EXISTS (SELECT 1 FROM projects p WHERE p.id = OLD.project_id);
END""",
    # Foreign keys are off by default in other programs' connections: edges go explicitly.
    # With foreign keys off (other programs' default) a deleted project's tasks would stay,
    # claimable; they go with it here (a no-op where the foreign key already cascaded).
    "projects_after_delete": """
CREATE TRIGGER projects_after_delete AFTER DELETE ON projects
BEGIN
    DELETE FROM tasks WHERE project_id = OLD.id;
END""",
    "tasks_after_delete": """
CREATE TRIGGER tasks_after_delete AFTER DELETE ON tasks
BEGIN
    DELETE FROM task_dependencies WHERE task_id = OLD.id OR dependency_id = OLD.id;
END""",
    "task_dependencies_before_insert": f"""
CREATE TRIGGER task_dependencies_before_insert BEFORE INSERT ON task_dependencies
BEGIN
    SELECT RAISE(ABORT, '{M_EDGES}')
     WHERE NOT EXISTS (SELECT 1 FROM tasks t, json_each(t.dependant_on) j
                        WHERE t.id = NEW.task_id AND j.value = NEW.dependency_id);
END""",
    "task_dependencies_before_update": f"""
CREATE TRIGGER task_dependencies_before_update BEFORE UPDATE ON task_dependencies
BEGIN
    SELECT RAISE(ABORT, '{M_EDGES}');
END""",
    # An edge may go only with one of its tasks, or when the array no longer names it.
    "task_dependencies_before_delete": f"""
CREATE TRIGGER task_dependencies_before_delete BEFORE DELETE ON task_dependencies
BEGIN
    SELECT RAISE(ABORT, '{M_EDGES}')
     WHERE EXISTS (SELECT 1 FROM tasks t, json_each(t.dependant_on) j
                    WHERE t.id = OLD.task_id AND j.value = OLD.dependency_id)
       AND EXISTS (SELECT 1 FROM tasks d WHERE d.id = OLD.dependency_id);
    -- Its dependency was deleted: the dependent's counter no longer counts it.
    UPDATE tasks SET unmet_dependencies = {S_UNMET_OF_OLD}
     WHERE id = OLD.task_id AND unmet_dependencies IS NOT {S_UNMET_OF_OLD}
       AND NOT EXISTS (SELECT 1 FROM tasks d WHERE d.id = OLD.dependency_id);
END""",
    "generations_check_tasks_insert": f"""
CREATE TRIGGER generations_check_tasks_insert BEFORE INSERT ON generations
BEGIN
    SELECT RAISE(ABORT, '{M_GEN_TASKS}') WHERE {_s_uuid_array("NEW.tasks")};
END""",
    "generations_check_tasks_update": f"""
CREATE TRIGGER generations_check_tasks_update BEFORE UPDATE OF tasks ON generations
BEGIN
    SELECT RAISE(ABORT, '{M_GEN_TASKS}') WHERE {_s_uuid_array("NEW.tasks")};
END""",
}

# =========================================================================================
# Postgres
# =========================================================================================

P_INVALID = "22023"  # invalid_parameter_value
P_CONFLICT = "23000"  # integrity_constraint_violation

P_UUID_RE = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
P_UNMET_TRUTH = (
    "(SELECT count(*) FROM public.task_dependencies e JOIN public.tasks d "
    "ON d.id = e.dependency_id WHERE e.task_id = NEW.id AND d.status <> 'Complete')"
)

P_UNMET_OF_OLD = P_UNMET_TRUTH.replace("NEW.id", "OLD.task_id")


def _p_raise(message: str) -> str:
    code = P_INVALID if message.startswith("invalid") else P_CONFLICT
    text = message.replace("'", "''")
    return f"RAISE EXCEPTION USING MESSAGE = '{text}', ERRCODE = '{code}'"


def _p_function(name: str, body: str, declare: str = "") -> str:
    # SECURITY DEFINER: the rules read and write as the tables' owner, so they hold the same
    # way whichever role writes (RLS and column grants apply to the writer's own statement).
    return f"""
CREATE FUNCTION dualdb.{name}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
{declare}
BEGIN
{body}
END
$fn$"""


def _p_uuid_array_check(expr: str, message: str) -> str:
    # SQL NULL and nested arrays get the verdict SQLite gives (not NOT NULL's, or the error
    # array_position() raises on a multidimensional array): checked first, on their own.
    return f"""
    IF {expr} IS NULL OR coalesce(array_ndims({expr}), 1) <> 1 THEN
        {_p_raise(message)};
    END IF;
    IF array_position({expr}, NULL) IS NOT NULL THEN
        {_p_raise(message)};
    END IF;"""


P_PARAMS_CHECKS = f"""
    IF jsonb_typeof(NEW.params) IS DISTINCT FROM 'object' THEN
        {_p_raise(M_PARAMS_OBJECT)};
    END IF;
    IF NOT dualdb.json_within_limits(NEW.params) THEN
        {_p_raise(M_PARAMS_LIMITS)};
    END IF;"""

# FOR SHARE: a dependency completing (or failing) right now either waits for this write, and
# then sees its edge, or this write waits for it and counts its new status — never a
# dependent stranded with a stale count.  (SQLite has one writer at a time.)
P_DEPENDENCY_CHECKS = f"""
{_p_uuid_array_check("NEW.dependant_on", M_DEPS_SHAPE)}
    PERFORM 1 FROM public.tasks d
      WHERE d.id = ANY (NEW.dependant_on) AND d.project_id = NEW.project_id FOR SHARE;
    IF NEW.id = ANY (NEW.dependant_on) THEN
        {_p_raise(M_DEPS_SELF)};
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(NEW.dependant_on) AS j(id) WHERE NOT EXISTS (
        SELECT 1 FROM public.tasks d WHERE d.id = j.id AND d.project_id = NEW.project_id)) THEN
        {_p_raise(M_DEPS_PROJECT)};
    END IF;
    IF NEW.status IN ('Pending', 'Queued', 'In Progress', 'Complete') AND EXISTS (
        SELECT 1 FROM public.tasks d WHERE d.id = ANY (NEW.dependant_on)
           AND d.status IN ('Failed', 'Cancelled')) THEN
        {_p_raise(M_DEPS_DEAD)};
    END IF;"""


def _p_not_ready(deps: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = ANY ({deps}) "
        "AND d.status <> 'Complete')"
    )


P_ATTEMPTS_CHECK = f"""
    IF NEW.attempts IS NULL OR NEW.attempts < 0 THEN
        {_p_raise(M_ATTEMPTS)};
    END IF;"""

#: Completed with a shot: its generation, once, placed last on the shot.
P_GENERATION = f"""
        IF NEW.generation_processed_at IS NULL AND NEW.params ? 'shot_id'
           AND NEW.params -> 'shot_id' <> 'null'::jsonb THEN
            gen := gen_random_uuid();
            INSERT INTO public.generations
                (id, tasks, location, type, created_at, updated_at, project_id)
                VALUES (gen, ARRAY[NEW.id], NEW.output_location, NEW.task_type,
                        clock_timestamp(), NULL, NEW.project_id);
            shot_text := lower(NEW.params ->> 'shot_id');
            IF shot_text ~ '{P_UUID_RE}' THEN
                -- The shot's row lock orders concurrent appends to the same shot.
                SELECT s.id INTO shot FROM public.shots s
                 WHERE s.id = shot_text::uuid AND s.project_id = NEW.project_id FOR UPDATE;
                IF shot IS NOT NULL THEN
                    INSERT INTO public.shot_generations (id, shot_id, generation_id, position)
                        VALUES (gen_random_uuid(), shot, gen,
                                (SELECT coalesce(max(sg.position), -1) + 1
                                   FROM public.shot_generations sg WHERE sg.shot_id = shot));
                END IF;
            END IF;
            UPDATE public.tasks SET generation_processed_at = clock_timestamp()
             WHERE id = NEW.id;
        END IF;"""
P_GENERATION_DECLARE = "DECLARE\n    gen uuid;\n    shot uuid;\n    shot_text text;"

POSTGRES_FUNCTIONS: dict[str, str] = {
    "tasks_before_insert": _p_function(
        "tasks_before_insert",
        f"""
    IF EXISTS (SELECT 1 FROM public.tasks t WHERE t.id = NEW.id) THEN
        {_p_raise(M_ID_TAKEN)};
    END IF;
{P_PARAMS_CHECKS}
{P_DEPENDENCY_CHECKS}
{P_ATTEMPTS_CHECK}
    IF NEW.unmet_dependencies IS NULL THEN
        {_p_raise(M_UNMET)};
    END IF;
    IF NEW.status IN ('In Progress', 'Complete') AND {_p_not_ready("NEW.dependant_on")} THEN
        {_p_raise(M_NOT_READY)};
    END IF;
    -- The counter a writer gave is replaced by the truth.
    NEW.unmet_dependencies := (SELECT count(*) FROM public.tasks d
                                WHERE d.id = ANY (NEW.dependant_on) AND d.status <> 'Complete');
    RETURN NEW;""",
    ),
    # A task inserted Complete is one that became Complete.
    "tasks_after_insert": _p_function(
        "tasks_after_insert",
        f"""
    INSERT INTO public.task_dependencies (task_id, dependency_id)
        SELECT DISTINCT NEW.id, j.id FROM unnest(NEW.dependant_on) AS j(id)
        ON CONFLICT DO NOTHING;
    IF NEW.status = 'Complete' THEN
{P_GENERATION}
    END IF;
    RETURN NULL;""",
        declare=P_GENERATION_DECLARE,
    ),
    "tasks_check_params": _p_function("tasks_check_params", f"{P_PARAMS_CHECKS}\n    RETURN NEW;"),
    # timestamptz is always well-formed; the trigger exists so both backends carry the same set.
    "tasks_check_times": _p_function("tasks_check_times", "    RETURN NEW;"),
    "tasks_check_dependencies": _p_function(
        "tasks_check_dependencies",
        f"""
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        {_p_raise(M_ID_FIXED)};
    END IF;
    IF OLD.status NOT IN ('Pending', 'Queued')
       AND (NEW.dependant_on IS DISTINCT FROM OLD.dependant_on
            OR NEW.project_id IS DISTINCT FROM OLD.project_id) THEN
        {_p_raise(M_DEPS_STARTED)};
    END IF;
{P_DEPENDENCY_CHECKS}
    IF NEW.id IN (
        WITH RECURSIVE reach(id) AS (
            SELECT j.id FROM unnest(NEW.dependant_on) AS j(id)
            UNION
            SELECT e.dependency_id FROM public.task_dependencies e
              JOIN reach r ON e.task_id = r.id
        )
        SELECT id FROM reach) THEN
        {_p_raise(M_DEPS_CYCLE)};
    END IF;
    IF NEW.project_id IS DISTINCT FROM OLD.project_id AND EXISTS (
        SELECT 1 FROM public.task_dependencies e JOIN public.tasks t ON t.id = e.task_id
         WHERE e.dependency_id = NEW.id AND t.project_id IS DISTINCT FROM NEW.project_id) THEN
        {_p_raise(M_DEPS_MOVE)};
    END IF;
    RETURN NEW;""",
    ),
    "tasks_check_counters": _p_function(
        "tasks_check_counters",
        f"""{P_ATTEMPTS_CHECK}
    IF NEW.unmet_dependencies IS DISTINCT FROM OLD.unmet_dependencies
       AND NEW.unmet_dependencies IS DISTINCT FROM {P_UNMET_TRUTH} THEN
        {_p_raise(M_UNMET)};
    END IF;
    RETURN NEW;""",
    ),
    "tasks_check_status": _p_function(
        "tasks_check_status",
        f"""
    IF NOT ((OLD.status = 'Pending' AND NEW.status IN ('Queued', 'Cancelled'))
         OR (OLD.status = 'Queued' AND NEW.status IN ('In Progress', 'Pending', 'Cancelled'))
         OR (OLD.status = 'In Progress'
             AND NEW.status IN ('Complete', 'Failed', 'Queued', 'Cancelled'))) THEN
        {_p_raise(M_TRANSITION)};
    END IF;
    IF NEW.status IN ('In Progress', 'Complete') AND {_p_not_ready("NEW.dependant_on")} THEN
        {_p_raise(M_NOT_READY)};
    END IF;
    RETURN NEW;""",
    ),
    "tasks_after_dependencies": _p_function(
        "tasks_after_dependencies",
        f"""
    DELETE FROM public.task_dependencies
     WHERE task_id = NEW.id AND NOT (dependency_id = ANY (NEW.dependant_on));
    INSERT INTO public.task_dependencies (task_id, dependency_id)
        SELECT DISTINCT NEW.id, j.id FROM unnest(NEW.dependant_on) AS j(id)
        ON CONFLICT DO NOTHING;
    UPDATE public.tasks SET unmet_dependencies = {P_UNMET_TRUTH}
     WHERE id = NEW.id AND unmet_dependencies IS DISTINCT FROM {P_UNMET_TRUTH};
    RETURN NULL;""",
    ),
    "tasks_after_status": _p_function(
        "tasks_after_status",
        f"""
    IF NEW.status = 'Complete' THEN
        -- "Still names it" is re-checked on the newest version of a row another transaction
        -- changed meanwhile (its dependant_on may no longer list this task).
        UPDATE public.tasks SET unmet_dependencies = unmet_dependencies - 1
         WHERE id IN (SELECT task_id FROM public.task_dependencies
                       WHERE dependency_id = NEW.id)
           AND NEW.id = ANY (tasks.dependant_on);
{P_GENERATION}
    ELSIF NEW.status IN ('Failed', 'Cancelled') AND EXISTS (
        -- Nothing left to cancel below (the cascade's own nested firings): no walk.
        SELECT 1 FROM public.task_dependencies e JOIN public.tasks t ON t.id = e.task_id
         WHERE e.dependency_id = NEW.id
           AND (t.status IN {UNFINISHED} OR (t.status = 'Cancelled' AND t.error IS NULL))) THEN
        UPDATE public.tasks
           SET status = 'Cancelled',
               error = 'cancelled: dependency ' || NEW.id || ' '
                       || CASE NEW.status WHEN 'Failed' THEN 'failed'
                          ELSE coalesce(NEW.error, 'cancelled') END,
               updated_at = clock_timestamp()
         WHERE (status IN {UNFINISHED} OR (status = 'Cancelled' AND error IS NULL))
           AND id IN (
            WITH RECURSIVE reach(id) AS (
                SELECT task_id FROM public.task_dependencies WHERE dependency_id = NEW.id
                UNION
                SELECT e.task_id FROM public.task_dependencies e
                  JOIN reach r ON e.dependency_id = r.id
            )
            SELECT id FROM reach);
    END IF;
    RETURN NULL;""",
        declare=P_GENERATION_DECLARE,
    ),
    "tasks_before_delete": _p_function(
        "tasks_before_delete",
        f"""
    IF EXISTS (SELECT 1 FROM public.task_dependencies e JOIN public.tasks t ON t.id = e.task_id
                WHERE e.dependency_id = OLD.id AND t.status IN {UNFINISHED})
       AND EXISTS (SELECT 1 FROM public.projects p WHERE p.id = OLD.project_id) THEN
        {_p_raise(M_DELETE)};
    END IF;
    RETURN OLD;""",
    ),
    "projects_after_delete": _p_function(
        "projects_after_delete",
        """
    DELETE FROM public.tasks WHERE project_id = OLD.id;
    RETURN NULL;""",
    ),
    "tasks_after_delete": _p_function(
        "tasks_after_delete",
        """
    DELETE FROM public.task_dependencies WHERE task_id = OLD.id OR dependency_id = OLD.id;
    RETURN NULL;""",
    ),
    "task_dependencies_before_insert": _p_function(
        "task_dependencies_before_insert",
        f"""
    IF NOT EXISTS (SELECT 1 FROM public.tasks t
                    WHERE t.id = NEW.task_id AND NEW.dependency_id = ANY (t.dependant_on)) THEN
        {_p_raise(M_EDGES)};
    END IF;
    RETURN NEW;""",
    ),
    "task_dependencies_before_update": _p_function(
        "task_dependencies_before_update", f"    {_p_raise(M_EDGES)};"
    ),
    "task_dependencies_before_delete": _p_function(
        "task_dependencies_before_delete",
        f"""
    IF EXISTS (SELECT 1 FROM public.tasks t
                WHERE t.id = OLD.task_id AND OLD.dependency_id = ANY (t.dependant_on))
       AND EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = OLD.dependency_id) THEN
        {_p_raise(M_EDGES)};
    END IF;
    -- Its dependency was deleted: the dependent's counter no longer counts it.
    IF NOT EXISTS (SELECT 1 FROM public.tasks d WHERE d.id = OLD.dependency_id) THEN
        UPDATE public.tasks SET unmet_dependencies = {P_UNMET_OF_OLD}
         WHERE id = OLD.task_id AND unmet_dependencies IS DISTINCT FROM {P_UNMET_OF_OLD};
    END IF;
    RETURN OLD;""",
    ),
    "generations_check_tasks_insert": _p_function(
        "generations_check_tasks_insert",
        f"""
{_p_uuid_array_check("NEW.tasks", M_GEN_TASKS)}
    RETURN NEW;""",
    ),
}
POSTGRES_FUNCTIONS["generations_check_tasks_update"] = POSTGRES_FUNCTIONS[
    "generations_check_tasks_insert"
].replace("generations_check_tasks_insert", "generations_check_tasks_update")

#: trigger → its timing, events and ``WHEN`` on Postgres (the same as SQLite's).
POSTGRES_TRIGGERS: dict[str, tuple[str, str]] = {
    "tasks_before_insert": ("BEFORE INSERT ON tasks", ""),
    "tasks_after_insert": ("AFTER INSERT ON tasks", ""),
    "tasks_check_params": ("BEFORE UPDATE OF params ON tasks", ""),
    "tasks_check_times": (
        f"BEFORE UPDATE OF {', '.join(TIME_COLUMNS)} ON tasks",
        "WHEN (false)",
    ),
    "tasks_check_dependencies": (
        "BEFORE UPDATE OF id, dependant_on, project_id ON tasks",
        "WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.dependant_on IS DISTINCT FROM OLD.dependant_on"
        " OR NEW.project_id IS DISTINCT FROM OLD.project_id)",
    ),
    "tasks_check_counters": ("BEFORE UPDATE OF attempts, unmet_dependencies ON tasks", ""),
    "tasks_check_status": (
        "BEFORE UPDATE OF status ON tasks",
        "WHEN (NEW.status IS DISTINCT FROM OLD.status)",
    ),
    "tasks_after_dependencies": (
        "AFTER UPDATE OF dependant_on ON tasks",
        "WHEN (NEW.dependant_on IS DISTINCT FROM OLD.dependant_on)",
    ),
    "tasks_after_status": (
        "AFTER UPDATE OF status ON tasks",
        "WHEN (NEW.status IS DISTINCT FROM OLD.status)",
    ),
    "tasks_before_delete": ("BEFORE DELETE ON tasks", ""),
    "tasks_after_delete": ("AFTER DELETE ON tasks", ""),
    "projects_after_delete": ("AFTER DELETE ON projects", ""),
    "task_dependencies_before_insert": ("BEFORE INSERT ON task_dependencies", ""),
    "task_dependencies_before_update": ("BEFORE UPDATE ON task_dependencies", ""),
    "task_dependencies_before_delete": ("BEFORE DELETE ON task_dependencies", ""),
    "generations_check_tasks_insert": ("BEFORE INSERT ON generations", ""),
    "generations_check_tasks_update": ("BEFORE UPDATE OF tasks ON generations", ""),
}

P_JSON_LIMITS = f"""
CREATE FUNCTION dualdb.json_within_limits(doc jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $fn$
    SELECT NOT jsonb_path_exists(
               doc, 'strict $.**{{64 to last}} ? (@.type() == "object" || @.type() == "array")')
       AND NOT jsonb_path_exists(
               doc,
               'strict $.** ? (@.type() == "number" '
               '&& (@ > {MAX_DOUBLE_EXACT} || @ < -{MAX_DOUBLE_EXACT}))')
$fn$"""

# =========================================================================================
# Backfill: edges and counters from the canonical arrays (both backends)
# =========================================================================================

BACKFILL_SQLITE = (
    "DELETE FROM task_dependencies WHERE NOT EXISTS (SELECT 1 FROM tasks t, "
    "json_each(t.dependant_on) j WHERE t.id = task_dependencies.task_id "
    "AND j.value = task_dependencies.dependency_id)",
    "INSERT OR IGNORE INTO task_dependencies (task_id, dependency_id) "
    "SELECT t.id, j.value FROM tasks t, json_each(t.dependant_on) j "
    "JOIN tasks x ON x.id = j.value WHERE json_valid(t.dependant_on)",
)
BACKFILL_POSTGRES = (
    "DELETE FROM task_dependencies e WHERE NOT EXISTS (SELECT 1 FROM tasks t "
    "WHERE t.id = e.task_id AND e.dependency_id = ANY (t.dependant_on))",
    "INSERT INTO task_dependencies (task_id, dependency_id) "
    "SELECT DISTINCT t.id, d.dep FROM tasks t, unnest(t.dependant_on) AS d(dep) "
    "JOIN tasks x ON x.id = d.dep ON CONFLICT DO NOTHING",
)
BACKFILL_COUNTERS = (
    "UPDATE tasks SET unmet_dependencies = ("
    "SELECT count(*) FROM task_dependencies e JOIN tasks d ON d.id = e.dependency_id "
    "WHERE e.task_id = tasks.id AND d.status <> 'Complete')"
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for statement in BACKFILL_POSTGRES:
            op.execute(statement)
        op.execute(BACKFILL_COUNTERS)
        op.execute("CREATE SCHEMA IF NOT EXISTS dualdb")
        op.execute("REVOKE ALL ON SCHEMA dualdb FROM PUBLIC")
        op.execute(P_JSON_LIMITS)
        for name, (when, condition) in POSTGRES_TRIGGERS.items():
            op.execute(POSTGRES_FUNCTIONS[name])
            op.execute(f"REVOKE ALL ON FUNCTION dualdb.{name}() FROM PUBLIC")
            op.execute(
                f"CREATE TRIGGER {name} {when} FOR EACH ROW {condition} "
                f"EXECUTE FUNCTION dualdb.{name}()"
            )
    else:
        for statement in BACKFILL_SQLITE:
            op.execute(statement)
        op.execute(BACKFILL_COUNTERS)
        for sql in SQLITE_TRIGGERS.values():
            op.execute(sql)


def downgrade() -> None:
    postgres = op.get_context().dialect.name == "postgresql"
    for table, name in reversed(TRIGGERS):
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP SCHEMA IF EXISTS dualdb CASCADE")
