"""Audit and repair the data: the queue's rules, checked against the rows that are there.

The database keeps the queue's rules itself (triggers, migration 0006), but rows can still
break them: rows written while a program had dropped or disabled the triggers, or with
SQLite's foreign keys off (they are off in every connection that does not turn them on), or
rows older than the rules.  :func:`audit` lists every rule the live data breaks, with a count
and a few ids per rule; :func:`repair` recomputes what can be recomputed, in one transaction.

Every check is one query per engine that cannot fail on a garbage row: on SQLite each
``json_each`` reads a column only after ``json_valid``/``json_type`` said it is the expected
kind of JSON, and ids are printed from their bytes when they are not text.  The derived rules
(edges, counters, dependencies) look only at tasks whose ``dependant_on`` has the right shape;
the others are reported by the shape rules, and :func:`repair` leaves them alone.

What repair changes, in this order (and nothing else):

1. with ``delete_orphans``: rows whose parent is gone, as ``ON DELETE CASCADE`` would have
   deleted them (their own children go with them);
2. dependency edges rebuilt from ``dependant_on``: missing edges added, extra edges removed
   (edges whose task or dependency is gone, or that ``dependant_on`` does not name);
3. Pending and Queued tasks waiting on a Failed, Cancelled or missing task are cancelled with
   the queue's own ``cancel`` (the database cancels their dependents, as usual);
4. ``unmet_dependencies`` set to the number of dependencies that are not Complete (the
   database's trigger accepts exactly that value);
5. Complete tasks with a ``params.shot_id`` whose generation was never made get it (placed
   last on the shot, as completion does) and ``generation_processed_at``: exactly once.

Rows that break a shape rule are left out of every fix (the database refuses writes to them);
a fix the database still refuses for one row is undone for that row and reported, and the
rest goes on.  Everything else is reported and left for a person to decide.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import sqlalchemy as sa

from dualdb import migrations
from dualdb.backends import backend_for, backend_of
from dualdb.database import Session
from dualdb.engine import (
    create_engine,
    ping,
    reading,
    translated_errors,
)
from dualdb.errors import DualdbError, InvalidInput, SchemaOutOfDate
from dualdb.schema import TABLES, shots, task_dependencies, tasks
from dualdb.scope import Scope
from dualdb.target import Target
from dualdb.types import (
    INITIAL_STATUSES,
    MAX_JSON_DEPTH,
    MAX_JSON_NUMBER,
    TASK_STATUSES,
    TIMESTAMP_GLOB,
    UNFINISHED_STATUSES,
    UUID,
    UUID_GLOB,
    Timestamp,
    format_timestamp,
    to_uuid,
)

#: The largest double written out exactly, for Postgres' exact numeric comparison.
_EXACT_MAX = format(Decimal(MAX_JSON_NUMBER), "f")

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STALE_AFTER",
    "MAX_IDS",
    "Change",
    "DataReport",
    "Finding",
    "RepairReport",
    "audit",
    "repair",
    "rule_names",
]

#: Ids listed per broken rule (the count is always complete).
MAX_IDS = 10
#: An In Progress task whose heartbeat is older than this is reported as stuck.  Longer than
#: the stock worker's default (60 s) many times over, so a live worker's task is never listed.
DEFAULT_STALE_AFTER = timedelta(minutes=10)
#: How long :func:`repair` waits for other transactions' locks on Postgres (SQLite waits for
#: its write lock for the engine's busy timeout, 30 s).
DEFAULT_LOCK_TIMEOUT = timedelta(seconds=30)

_STATUSES = "(" + ", ".join(f"'{s}'" for s in TASK_STATUSES) + ")"
_UNFINISHED = "(" + ", ".join(f"'{s}'" for s in UNFINISHED_STATUSES) + ")"
_WAITING = INITIAL_STATUSES  # not started: Pending or Queued
_DEAD = "('Failed', 'Cancelled')"
_TASK_TIMES = tuple(c.name for c in tasks.c if isinstance(c.type, Timestamp))


# =========================================================================================
# Results
# =========================================================================================


@dataclass(frozen=True)
class Finding:
    """One rule the data breaks: how many rows, and the first :data:`MAX_IDS` of them."""

    rule: str
    description: str
    count: int
    ids: tuple[str, ...]
    #: True when :func:`repair` fixes this rule (for rows that break no shape rule).
    repairable: bool
    #: What to do about it when :func:`repair` does not.
    advice: str = ""


@dataclass(frozen=True)
class DataReport:
    """What :func:`audit` found: schema drift, and every data rule the rows break."""

    backend: str
    url: str
    #: Differences between the live schema and the models (:func:`dualdb.migrations.check`).
    schema: tuple[str, ...]
    #: False when the data could not be audited (the database is not at the migration head).
    audited: bool
    findings: tuple[Finding, ...]
    #: Every data rule checked, broken or not.
    rules: tuple[str, ...] = field(default_factory=tuple)

    @property
    def clean(self) -> bool:
        """True when the schema matches and the data breaks no rule."""
        return self.audited and not self.schema and not self.findings

    def finding(self, rule: str) -> Finding | None:
        """The finding of ``rule``, or None when the data keeps it."""
        return next((f for f in self.findings if f.rule == rule), None)


@dataclass(frozen=True)
class Change:
    """One kind of change :func:`repair` made (or, in a dry run, would make)."""

    fix: str
    description: str
    count: int
    ids: tuple[str, ...]


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` changed, what it could not, and what is still broken after it."""

    backend: str
    url: str
    dry_run: bool
    changes: tuple[Change, ...]
    #: Rows a fix applied to but the database refused (``"task <id> not cancelled: …"``).
    skipped: tuple[str, ...]
    #: The audit of the data as repair left it (inside the same transaction).
    remaining: DataReport

    @property
    def changed(self) -> bool:
        """True when repair changed (or, dry, would change) at least one row."""
        return bool(self.changes)

    def change(self, fix: str) -> Change | None:
        """The change named ``fix``, or None when there was none."""
        return next((c for c in self.changes if c.fix == fix), None)


# =========================================================================================
# SQL per engine: the same rules, written once, with each engine's fragments
# =========================================================================================


class _Engine:
    """The SQL fragments the rules are written with, for one engine."""

    name: ClassVar[str]
    #: Appended to ``ORDER BY <text>`` so both engines sort ids the same (bytewise).
    collate: ClassVar[str]
    #: Checks that only SQLite needs (Postgres' column types make them impossible to break).
    text_forms: ClassVar[bool]

    def show(self, x: str) -> str:
        """``x`` (an id) as short printable text."""
        raise NotImplementedError

    def sound(self, x: str) -> str:
        """``x`` is an array of canonical task ids with no nulls."""
        raise NotImplementedError

    def array(self, x: str, alias: str) -> str:
        """A FROM item: the elements of ``x`` as ``alias.value`` (none unless ``x`` is sound)."""
        raise NotImplementedError

    def elements(self, x: str, alias: str) -> str:
        """A join clause adding :meth:`array` of ``x`` (which refers to an earlier FROM item)."""
        raise NotImplementedError

    def names(self, array: str, value: str) -> str:
        """``array`` (sound) contains ``value``."""
        return f"EXISTS (SELECT 1 FROM {self.array(array, '_n')} WHERE _n.value = {value})"

    def single(self, array: str) -> str:
        """The element of a sound one-element ``array``, else NULL."""
        raise NotImplementedError

    def well_formed(self, x: str) -> str:
        """``x`` is stored as a canonical UUID."""
        raise NotImplementedError

    def params_object(self, t: str) -> str:
        """``t.params`` is a JSON object."""
        raise NotImplementedError

    def params_beyond_limits(self, t: str) -> str:
        """``t.params`` nests deeper than 64 levels or holds a number no float can hold."""
        raise NotImplementedError

    def bad_attempts(self, t: str) -> str:
        raise NotImplementedError

    def has_shot(self, t: str) -> str:
        """``t.params.shot_id`` is set (not missing, not JSON null): the completion rule's test."""
        raise NotImplementedError

    def shot_text(self, t: str) -> str:
        """``t.params.shot_id`` when it is a string, else NULL."""
        raise NotImplementedError

    def stale(self, t: str) -> str:
        """``t``'s heartbeat is missing or older than the cutoff (parameters of :meth:`clock`)."""
        raise NotImplementedError

    def clock(self, stale_after: timedelta) -> dict[str, Any]:
        raise NotImplementedError

    def uuid_param(self, name: str) -> str:
        raise NotImplementedError

    def sound_row(self, t: str) -> str:
        """The task row ``t`` breaks no shape rule, so the database accepts writes to it."""
        raise NotImplementedError

    def locks(self, tables: list[str], timeout: timedelta) -> list[str]:
        """Statements run first in :func:`repair`'s transaction."""
        raise NotImplementedError

    #: Execution options of :func:`audit`'s read-only transaction.
    read_options: ClassVar[dict[str, Any]]


class _SQLite(_Engine):
    name = "sqlite"
    collate = ""
    text_forms = True
    # A deferred BEGIN (dualdb.engine.reading) reads one WAL snapshot without the write lock.
    read_options: ClassVar[dict[str, Any]] = {}

    def show(self, x: str) -> str:
        # Text that is not printable ASCII (or not text at all) is shown as its bytes: the
        # driver would fail to decode invalid UTF-8, and a report must never fail.
        return (
            f"substr(CASE WHEN typeof({x}) = 'text' AND {x} NOT GLOB '*[^ -~]*' THEN {x} "
            f"ELSE quote(CAST({x} AS BLOB)) END, 1, 80)"
        )

    def sound(self, x: str) -> str:
        # CASE, not AND: json_type and json_each raise on text that is not JSON.
        return (
            f"(CASE WHEN json_valid({x}) THEN CASE WHEN json_type({x}) = 'array' THEN "
            f"NOT EXISTS (SELECT 1 FROM json_each({x}) AS _u WHERE _u.type <> 'text' "
            f"OR _u.value NOT GLOB '{UUID_GLOB}') ELSE 0 END ELSE 0 END)"
        )

    def array(self, x: str, alias: str) -> str:
        return f"json_each(CASE WHEN {self.sound(x)} THEN {x} ELSE '[]' END) AS {alias}"

    def elements(self, x: str, alias: str) -> str:
        return f"CROSS JOIN {self.array(x, alias)}"

    def single(self, array: str) -> str:
        return (
            f"CASE WHEN {self.sound(array)} THEN CASE WHEN json_array_length({array}) = 1 "
            f"THEN json_extract({array}, '$[0]') END END"
        )

    def well_formed(self, x: str) -> str:
        return f"(typeof({x}) = 'text' AND {x} GLOB '{UUID_GLOB}')"

    def params_object(self, t: str) -> str:
        return (
            f"(CASE WHEN json_valid({t}.params) THEN json_type({t}.params) = 'object' ELSE 0 END)"
        )

    def params_beyond_limits(self, t: str) -> str:
        # The walk stops at the depth limit: it never reads further into a document than that.
        return f"""(CASE WHEN json_valid({t}.params) THEN EXISTS (
            WITH RECURSIVE walk(v, ty, d) AS (
                SELECT {t}.params, json_type({t}.params), 0
                UNION ALL
                SELECT j.value, j.type, w.d + 1 FROM walk w, json_each(w.v) j
                 WHERE w.ty IN ('object', 'array') AND w.d < {MAX_JSON_DEPTH}
            )
            SELECT 1 FROM walk
             WHERE (ty IN ('object', 'array') AND d >= {MAX_JSON_DEPTH})
                OR (ty IN ('integer', 'real') AND abs(v) > {MAX_JSON_NUMBER!r})
        ) ELSE 0 END)"""

    def bad_attempts(self, t: str) -> str:
        return f"(typeof({t}.attempts) <> 'integer' OR {t}.attempts < 0)"

    def has_shot(self, t: str) -> str:
        return (
            f"(CASE WHEN json_valid({t}.params) THEN "
            f"coalesce(json_type({t}.params, '$.shot_id'), 'null') <> 'null' ELSE 0 END)"
        )

    def shot_text(self, t: str) -> str:
        return (
            f"CASE WHEN {self.has_shot(t)} THEN CASE WHEN json_type({t}.params, '$.shot_id') "
            f"= 'text' THEN json_extract({t}.params, '$.shot_id') END END"
        )

    def stale(self, t: str) -> str:
        return f"({t}.heartbeat_at IS NULL OR {t}.heartbeat_at < :cutoff)"

    def clock(self, stale_after: timedelta) -> dict[str, Any]:
        return {"cutoff": format_timestamp(datetime.now(UTC) - stale_after)}

    def uuid_param(self, name: str) -> str:
        return f":{name}"

    def sound_row(self, t: str) -> str:
        times = " AND ".join(
            f"({t}.{c} IS NULL OR (typeof({t}.{c}) = 'text' AND {t}.{c} GLOB '{TIMESTAMP_GLOB}'))"
            for c in _TASK_TIMES
        )
        return (
            f"({self.well_formed(f'{t}.id')} AND {self.well_formed(f'{t}.project_id')} "
            f"AND {self.params_object(t)} AND {self.sound(f'{t}.dependant_on')} "
            f"AND NOT {self.bad_attempts(t)} AND {t}.status IN {_STATUSES} AND {times})"
        )

    def locks(self, tables: list[str], timeout: timedelta) -> list[str]:
        # BEGIN IMMEDIATE (dualdb.backends.sqlite) already holds the database's write lock.
        return []


class _Postgres(_Engine):
    name = "postgresql"
    collate = ' COLLATE "C"'
    text_forms = False
    # One snapshot for every rule, and a promise not to write.
    read_options: ClassVar[dict[str, Any]] = {
        "isolation_level": "REPEATABLE READ",
        "postgresql_readonly": True,
    }

    def show(self, x: str) -> str:
        return f"({x})::text"

    def sound(self, x: str) -> str:
        # CASE first: array_position raises on a multidimensional array.
        return (
            f"(CASE WHEN coalesce(array_ndims({x}), 1) = 1 "
            f"THEN array_position({x}, NULL) IS NULL ELSE false END)"
        )

    def array(self, x: str, alias: str) -> str:
        return (
            f"unnest(CASE WHEN {self.sound(x)} THEN {x} ELSE '{{}}'::uuid[] END) AS {alias}(value)"
        )

    def elements(self, x: str, alias: str) -> str:
        return f"CROSS JOIN LATERAL {self.array(x, alias)}"

    def single(self, array: str) -> str:
        return (
            f"CASE WHEN {self.sound(array)} THEN CASE WHEN cardinality({array}) = 1 "
            f"THEN ({array})[array_lower({array}, 1)] END END"
        )

    def well_formed(self, x: str) -> str:
        return "true"

    def params_object(self, t: str) -> str:
        return f"(jsonb_typeof({t}.params) = 'object')"

    def params_beyond_limits(self, t: str) -> str:
        deep = (
            f"strict $.**{{{MAX_JSON_DEPTH} to last}} "
            '? (@.type() == "object" || @.type() == "array")'
        )
        big = f'strict $.** ? (@.type() == "number" && (@ > {_EXACT_MAX} || @ < -{_EXACT_MAX}))'
        return (
            f"(jsonb_path_exists({t}.params, '{deep}') OR jsonb_path_exists({t}.params, '{big}'))"
        )

    def bad_attempts(self, t: str) -> str:
        return f"({t}.attempts < 0)"

    def has_shot(self, t: str) -> str:
        return (
            f"(jsonb_typeof({t}.params) = 'object' "
            f"AND coalesce({t}.params -> 'shot_id', 'null'::jsonb) <> 'null'::jsonb)"
        )

    def shot_text(self, t: str) -> str:
        return (
            f"CASE WHEN jsonb_typeof({t}.params) = 'object' "
            f"AND jsonb_typeof({t}.params -> 'shot_id') = 'string' "
            f"THEN {t}.params ->> 'shot_id' END"
        )

    def stale(self, t: str) -> str:
        # The queue's clock on Postgres is the server's (as requeue_stale uses).
        return (
            f"({t}.heartbeat_at IS NULL "
            f"OR {t}.heartbeat_at < clock_timestamp() - make_interval(secs => :age))"
        )

    def clock(self, stale_after: timedelta) -> dict[str, Any]:
        return {"age": stale_after.total_seconds()}

    def uuid_param(self, name: str) -> str:
        return f"CAST(:{name} AS uuid)"

    def sound_row(self, t: str) -> str:
        return (
            f"({self.params_object(t)} AND {self.sound(f'{t}.dependant_on')} "
            f"AND NOT {self.bad_attempts(t)} AND {t}.status IN {_STATUSES})"
        )

    def locks(self, tables: list[str], timeout: timedelta) -> list[str]:
        # EXCLUSIVE: plain readers go on; every writer (workers' claims included), every
        # SELECT … FOR UPDATE (requeue_stale locks rows before it updates them: it would hold
        # rows repair needs while waiting for the table) and any other repair wait until
        # repair commits.
        ms = max(1, int(timeout.total_seconds() * 1000))
        return [
            f"SET LOCAL lock_timeout = '{ms}ms'",
            f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE",
        ]


_ENGINES: dict[str, _Engine] = {e.name: e for e in (_SQLite(), _Postgres())}


# =========================================================================================
# The rules
# =========================================================================================


@dataclass(frozen=True)
class _Rule:
    name: str
    description: str
    #: One query per engine selecting ``id`` (text) of every offending row; None: this engine's
    #: column types make the rule impossible to break.
    sql: str | None
    repairable: bool = False
    advice: str = ""


def _missing_edge(e: _Engine) -> str:
    """FROM/WHERE of (task t, dependency j.value) pairs named by dependant_on without an edge."""
    return (
        f"FROM tasks t {e.elements('t.dependant_on', 'j')} "
        "WHERE EXISTS (SELECT 1 FROM tasks d WHERE d.id = j.value) "
        "AND NOT EXISTS (SELECT 1 FROM task_dependencies x "
        "WHERE x.task_id = t.id AND x.dependency_id = j.value)"
    )


def _extra_edge(e: _Engine, x: str) -> str:
    """Edge ``x`` is not derived from dependant_on (edges of tasks whose array is garbage are
    unknowable, and left to the shape rule)."""
    return (
        f"(NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = {x}.task_id) "
        f"OR EXISTS (SELECT 1 FROM tasks t WHERE t.id = {x}.task_id "
        f"AND {e.sound('t.dependant_on')} "
        f"AND (NOT EXISTS (SELECT 1 FROM tasks d WHERE d.id = {x}.dependency_id) "
        f"OR NOT {e.names('t.dependant_on', f'{x}.dependency_id')})))"
    )


def _truth(e: _Engine, t: str) -> str:
    """How many distinct existing tasks ``t.dependant_on`` names that are not Complete."""
    return (
        f"(SELECT count(DISTINCT d.id) FROM {e.array(f'{t}.dependant_on', 'j')} "
        "JOIN tasks d ON d.id = j.value WHERE d.status <> 'Complete')"
    )


def _orphan(e: _Engine, table: sa.Table, c: str) -> str:
    """Row ``c`` of ``table`` refers to a parent row that does not exist."""
    parts = []
    for fk in sorted(table.foreign_keys, key=lambda fk: fk.parent.name):
        col, parent = f"{c}.{fk.parent.name}", fk.column.table.name
        # A reference that is not a canonical id is the id rule's finding, not an orphan:
        # deleting such a row could throw away data whose parent is merely misspelt.
        parts.append(
            f"({e.well_formed(col)} AND NOT EXISTS "
            f"(SELECT 1 FROM {parent} p WHERE p.{fk.column.name} = {col}))"
        )
    return "(" + " OR ".join(parts) + ")"


_ORPHAN_TABLES = tuple(t for t in TABLES if t.foreign_keys and t is not task_dependencies)


def _row_key(e: _Engine, table: sa.Table, c: str) -> str:
    if "id" in table.c:
        return e.show(f"{c}.id")
    return " || ' -> ' || ".join(e.show(f"{c}.{k.name}") for k in table.primary_key)


def _text_form_rule(e: _Engine, kind: type[sa.types.TypeEngine[Any]], glob: str) -> str:
    selects = []
    for table in TABLES:
        for col in table.c:
            if not isinstance(col.type, kind):
                continue
            bad = f"(typeof(c.{col.name}) <> 'text' OR c.{col.name} NOT GLOB '{glob}')"
            if col.nullable:
                bad = f"(c.{col.name} IS NOT NULL AND {bad})"
            selects.append(
                f"SELECT '{table.name}.{col.name} of ' || {_row_key(e, table, 'c')} AS id "
                f"FROM {table.name} c WHERE {bad}"
            )
    return " UNION ALL ".join(selects)


def _rules(e: _Engine, stale_after: timedelta) -> list[_Rule]:
    deps = e.elements("t.dependant_on", "j")
    task = e.show("t.id")
    seconds = f"{stale_after.total_seconds():g}"
    rules = [
        # --- derived state: edges and counters -------------------------------------------
        _Rule(
            "edges_missing",
            "dependant_on names an existing task but task_dependencies has no edge "
            "(task -> dependency)",
            f"SELECT DISTINCT {task} || ' -> ' || {e.show('j.value')} AS id {_missing_edge(e)}",
            repairable=True,
        ),
        _Rule(
            "edges_extra",
            "task_dependencies edges that dependant_on does not name, or whose task or "
            "dependency is gone (task -> dependency)",
            f"SELECT {e.show('x.task_id')} || ' -> ' || {e.show('x.dependency_id')} AS id "
            f"FROM task_dependencies x WHERE {_extra_edge(e, 'x')}",
            repairable=True,
        ),
        _Rule(
            "counters",
            "tasks whose unmet_dependencies is not the number of distinct dependant_on tasks "
            "that are not Complete",
            f"SELECT {task} AS id FROM tasks t WHERE {e.sound('t.dependant_on')} "
            f"AND t.unmet_dependencies IS DISTINCT FROM {_truth(e, 't')}",
            repairable=True,
        ),
        # --- dependencies ------------------------------------------------------------------
        _Rule(
            "dependencies_elsewhere",
            "tasks whose dependant_on names the task itself or a task of another project",
            f"SELECT DISTINCT {task} AS id FROM tasks t {deps} WHERE j.value = t.id "
            "OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = j.value "
            "AND d.project_id IS DISTINCT FROM t.project_id)",
            advice="change dependant_on (a Pending or Queued task's may change) or cancel the task",
        ),
        _Rule(
            "dependencies_missing",
            "unfinished tasks whose dependant_on names a task that does not exist",
            f"SELECT DISTINCT {task} AS id FROM tasks t {deps} WHERE t.status IN {_UNFINISHED} "
            "AND NOT EXISTS (SELECT 1 FROM tasks d WHERE d.id = j.value)",
            repairable=True,
            advice="repair cancels the Pending and Queued ones; an In Progress one belongs to "
            "its worker (cancel it, or let it finish)",
        ),
        _Rule(
            "waiting_on_failed",
            "unfinished tasks that depend on a Failed or Cancelled task (they can never run)",
            f"SELECT DISTINCT {task} AS id FROM tasks t {deps} WHERE t.status IN {_UNFINISHED} "
            f"AND EXISTS (SELECT 1 FROM tasks d WHERE d.id = j.value AND d.status IN {_DEAD})",
            repairable=True,
            advice="repair cancels the Pending and Queued ones; an In Progress one cannot "
            "complete (the database refuses it): cancel it",
        ),
        # --- stuck work --------------------------------------------------------------------
        _Rule(
            "stale_in_progress",
            f"In Progress tasks with no heartbeat, or none for more than {seconds} s",
            f"SELECT {task} AS id FROM tasks t WHERE t.status = 'In Progress' AND {e.stale('t')}",
            advice="a running worker's maintenance (db.tasks.requeue_stale) requeues old "
            "heartbeats; a task with no heartbeat at all must be released or cancelled",
        ),
        _Rule(
            "generation_unprocessed",
            "Complete tasks with a params.shot_id whose generation was never made "
            "(generation_processed_at is NULL)",
            f"SELECT {task} AS id FROM tasks t WHERE t.status = 'Complete' "
            f"AND t.generation_processed_at IS NULL AND {e.has_shot('t')}",
            repairable=True,
        ),
        _Rule(
            "generation_duplicated",
            "Complete tasks with a params.shot_id that have more than one generation made "
            "from them alone (tasks = [the task])",
            f"SELECT {task} AS id FROM tasks t JOIN (SELECT {e.single('g.tasks')} AS task_id, "
            "count(*) AS n FROM generations g GROUP BY 1) m ON m.task_id = t.id "
            f"WHERE m.n > 1 AND t.status = 'Complete' AND {e.has_shot('t')}",
            advice="delete the generations that should not be there (db.generations.delete)",
        ),
        # --- shapes ------------------------------------------------------------------------
        _Rule(
            "params_shape",
            "tasks whose params is not a JSON object",
            f"SELECT {task} AS id FROM tasks t WHERE NOT {e.params_object('t')}",
            advice="write a JSON object (db.tasks.update(id, params=…)) or delete the task",
        ),
        _Rule(
            "params_limits",
            f"tasks whose params nests deeper than {MAX_JSON_DEPTH} levels or holds a number "
            f"outside ±{MAX_JSON_NUMBER!r}",
            f"SELECT {task} AS id FROM tasks t WHERE {e.params_beyond_limits('t')}",
            advice="write params within the limits, or delete the task",
        ),
        _Rule(
            "dependant_on_shape",
            "tasks whose dependant_on is not an array of canonical task ids (no nulls)",
            f"SELECT {task} AS id FROM tasks t WHERE NOT {e.sound('t.dependant_on')}",
            advice="write a proper array, or delete the task",
        ),
        _Rule(
            "generation_tasks_shape",
            "generations whose tasks is not an array of canonical task ids (no nulls)",
            f"SELECT {e.show('g.id')} AS id FROM generations g WHERE NOT {e.sound('g.tasks')}",
            advice="write a proper array (db.generations.update(id, tasks=…))",
        ),
        _Rule(
            "attempts",
            "tasks whose attempts is negative (or, on SQLite, not an integer)",
            f"SELECT {task} AS id FROM tasks t WHERE {e.bad_attempts('t')}",
            advice="set attempts to the number of claims (0 if unknown) with plain SQL",
        ),
        _Rule(
            "status",
            "tasks whose status is none of " + ", ".join(TASK_STATUSES),
            f"SELECT {task} AS id FROM tasks t "
            f"WHERE t.status IS NULL OR t.status NOT IN {_STATUSES}",
            advice="set a valid status with plain SQL, or delete the task",
        ),
        _Rule(
            "ids",
            "ids and references not stored as canonical UUID text (lowercase, hyphenated; SQLite)",
            _text_form_rule(e, UUID, UUID_GLOB) if e.text_forms else None,
            advice="rewrite them in canonical form with plain SQL (lower(…))",
        ),
        _Rule(
            "timestamps",
            "timestamps not stored as UTC text like 2026-01-31T12:00:00.000000Z (SQLite)",
            _text_form_rule(e, Timestamp, TIMESTAMP_GLOB) if e.text_forms else None,
            advice="rewrite them in that form with plain SQL",
        ),
    ]
    # --- orphans: rows whose parent is gone (foreign keys were off when it was deleted) ----
    for table in _ORPHAN_TABLES:
        parents = " or ".join(sorted({fk.column.table.name[:-1] for fk in table.foreign_keys}))
        rules.append(
            _Rule(
                f"orphan_{table.name}",
                f"{table.name} rows whose {parents} is gone",
                f"SELECT {e.show('c.id')} AS id FROM {table.name} c WHERE {_orphan(e, table, 'c')}",
                advice="`dualdb repair --delete-orphans` deletes them (and their own "
                "children), as ON DELETE CASCADE would have",
            )
        )
    return rules


def rule_names() -> tuple[str, ...]:
    """The name of every data rule, in report order."""
    # Every engine checks the same rules under the same names: any engine's list will do.
    return tuple(r.name for r in _rules(next(iter(_ENGINES.values())), DEFAULT_STALE_AFTER))


def _sample(
    conn: sa.Connection, e: _Engine, sql: str, params: dict[str, Any]
) -> tuple[int, tuple[str, ...]]:
    """The number of rows ``sql`` selects, and the first :data:`MAX_IDS` ids in text order."""
    wrapped = (
        f"SELECT q.id, count(*) OVER () AS n FROM ({sql}) AS q "
        f"ORDER BY q.id{e.collate} LIMIT {MAX_IDS}"
    )
    used = {k: v for k, v in params.items() if f":{k}" in sql}
    rows = conn.execute(sa.text(wrapped), used).all()
    if not rows:
        return 0, ()
    return int(rows[0][1]), tuple(str(r[0]) for r in rows)


def _findings(
    conn: sa.Connection, e: _Engine, stale_after: timedelta
) -> tuple[tuple[Finding, ...], tuple[str, ...]]:
    params = e.clock(stale_after)
    found: list[Finding] = []
    rules = _rules(e, stale_after)
    for rule in rules:
        if rule.sql is None:
            continue
        count, ids = _sample(conn, e, rule.sql, params)
        if count:
            found.append(
                Finding(rule.name, rule.description, count, ids, rule.repairable, rule.advice)
            )
    return tuple(found), tuple(r.name for r in rules)


def _check_stale_after(stale_after: timedelta) -> None:
    if not isinstance(stale_after, timedelta) or stale_after <= timedelta(0):
        raise InvalidInput("stale_after", "must be a positive interval")


@contextmanager
def _engine(target: Target) -> Iterator[sa.Engine]:
    if backend_for(target.backend).file_missing(target):
        raise SchemaOutOfDate(
            f"SQLite file {target.url.database} does not exist: run `dualdb migrate`"
        )
    engine = create_engine(target)
    try:
        ping(engine)
        yield engine
    finally:
        engine.dispose()


def audit(target: Target, *, stale_after: timedelta = DEFAULT_STALE_AFTER) -> DataReport:
    """Every rule the live data of ``target`` breaks, after the schema comparison.

    The schema is compared first (:func:`dualdb.migrations.check`, triggers included).  The
    data is audited only when the database is at the migration head; all rules read one
    snapshot, without the write lock.  ``stale_after``: an In Progress task whose heartbeat
    is older is reported as stuck.
    """
    _check_stale_after(stale_after)
    schema = tuple(migrations.check(target))
    if backend_for(target.backend).file_missing(target):
        return DataReport(target.backend, target.redacted, schema, False, ())
    with translated_errors(), _engine(target) as engine, reading(engine) as conn:
        e = _ENGINES[backend_of(conn).name]
        conn = conn.execution_options(**e.read_options)
        with conn.begin():
            if migrations.current_revision(conn) != migrations.head_revision():
                return DataReport(target.backend, target.redacted, schema, False, ())
            findings, rules = _findings(conn, e, stale_after)
    return DataReport(target.backend, target.redacted, schema, True, findings, rules)


# =========================================================================================
# Repair
# =========================================================================================


class _Repair:
    """The fixes, in order, inside one transaction."""

    def __init__(self, conn: sa.Connection, e: _Engine) -> None:
        self.conn = conn
        self.e = e
        self.session = Session(conn, Scope(conn.engine, conn))
        self.changes: list[Change] = []
        self.skipped: list[str] = []

    def _bulk(self, fix: str, description: str, which: str, statement: str) -> None:
        """Run ``statement`` when ``which`` selects anything; record what it changed."""
        count, ids = _sample(self.conn, self.e, which, {})
        if count:
            changed = self.conn.execute(sa.text(statement)).rowcount
            self.changes.append(Change(fix, description, changed, ids))

    def _record(self, fix: str, description: str, ids: list[str]) -> None:
        if ids:
            shown = tuple(sorted(ids)[:MAX_IDS])
            self.changes.append(Change(fix, description, len(ids), shown))

    def orphans(self) -> None:
        # Children first, so each count is of the orphans themselves; deleting an orphan
        # project then takes its (non-orphan) children with it, as the cascade would have.
        e = self.e
        for table in reversed(_ORPHAN_TABLES):
            self._bulk(
                f"orphan_{table.name}_deleted",
                f"orphan {table.name} rows deleted (their own children went with them)",
                f"SELECT {e.show('c.id')} AS id FROM {table.name} c WHERE {_orphan(e, table, 'c')}",
                f"DELETE FROM {table.name} AS c WHERE {_orphan(e, table, 'c')}",
            )

    def edges(self) -> None:
        e = self.e
        edge = f"{e.show('x.task_id')} || ' -> ' || {e.show('x.dependency_id')}"
        # The database refuses to delete an edge that dependant_on still names (and to add
        # one it does not): these two statements touch exactly the others.
        self._bulk(
            "edges_removed",
            "task_dependencies edges removed (not named by dependant_on, or task or "
            "dependency gone)",
            f"SELECT {edge} AS id FROM task_dependencies x WHERE {_extra_edge(e, 'x')}",
            f"DELETE FROM task_dependencies AS x WHERE {_extra_edge(e, 'x')}",
        )
        self._bulk(
            "edges_added",
            "task_dependencies edges added from dependant_on",
            f"SELECT DISTINCT {e.show('t.id')} || ' -> ' || {e.show('j.value')} AS id "
            f"{_missing_edge(e)}",
            "INSERT INTO task_dependencies (task_id, dependency_id) "
            f"SELECT DISTINCT t.id, j.value {_missing_edge(e)}",
        )

    def cancellations(self) -> None:
        e = self.e
        dependency = e.show("j.value")
        rows = self.conn.execute(
            sa.text(
                f"SELECT {e.show('t.id')} AS id, {dependency} AS dependency, d.status "
                f"FROM tasks t {e.elements('t.dependant_on', 'j')} "
                "LEFT JOIN tasks d ON d.id = j.value "
                f"WHERE t.status IN ('Pending', 'Queued') AND {e.sound_row('t')} "
                f"AND (d.id IS NULL OR d.status IN {_DEAD}) "
                f"ORDER BY t.created_at, t.id, {dependency}{e.collate}"
            )
        ).all()
        direct: list[str] = []
        cascaded: list[str] = []
        seen: set[str] = set()
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            key = to_uuid(row.id)
            status = self.conn.execute(sa.select(tasks.c.status).where(tasks.c.id == key)).scalar()
            if status not in _WAITING:
                continue  # cancelled a moment ago, as a dependent of an earlier one
            why = "does not exist" if row.status is None else f"is {row.status}"
            reason = f"cancelled by dualdb repair: dependency {row.dependency} {why}"
            try:
                cancelled = self.session.tasks.cancel(key, reason)
            except (DualdbError, ValueError) as exc:
                self.skipped.append(f"task {row.id} not cancelled: {exc}")
                continue
            direct.append(row.id)
            cascaded += [str(t.id) for t in cancelled[1:]]
        self._record(
            "tasks_cancelled",
            "Pending/Queued tasks cancelled: a dependency is Failed, Cancelled or missing",
            direct,
        )
        self._record(
            "dependents_cancelled",
            "their unfinished dependents, cancelled by the database's cascade",
            cascaded,
        )

    def counters(self) -> None:
        e = self.e
        wrong = f"unmet_dependencies IS DISTINCT FROM {_truth(e, 'tasks')}"
        # The trigger refuses any other value than the truth; rows that break a shape rule
        # (a negative attempts, garbage timestamps) are refused whatever the value: skipped.
        self._bulk(
            "counters_recomputed",
            "unmet_dependencies set to the number of dependencies not Complete",
            f"SELECT {e.show('tasks.id')} AS id FROM tasks WHERE {e.sound_row('tasks')} "
            f"AND {wrong}",
            f"UPDATE tasks SET unmet_dependencies = {_truth(e, 'tasks')} "
            f"WHERE {e.sound_row('tasks')} AND {wrong}",
        )

    def generations(self) -> None:
        e = self.e
        rows = self.conn.execute(
            sa.text(
                f"SELECT {e.show('t.id')} AS id, {e.show('t.project_id')} AS project_id, "
                f"t.task_type, t.output_location, {e.shot_text('t')} AS shot "
                "FROM tasks t WHERE t.status = 'Complete' "
                f"AND t.generation_processed_at IS NULL AND {e.has_shot('t')} "
                f"AND {e.sound_row('t')} "
                "AND EXISTS (SELECT 1 FROM projects p WHERE p.id = t.project_id) "
                "ORDER BY t.created_at, t.id"
            )
        ).all()
        made = f"SELECT count(*) FROM generations g {e.elements('g.tasks', 'j')} " + (
            f"WHERE j.value = {e.uuid_param('task')}"
        )
        created: list[str] = []
        marked: list[str] = []
        for row in rows:
            try:
                with self.conn.begin_nested():
                    key, project = to_uuid(row.id), to_uuid(row.project_id)
                    if self.conn.execute(sa.text(made), {"task": str(key)}).scalar_one():
                        marked.append(row.id)
                    else:
                        self._make_generation(key, project, row)
                        created.append(row.id)
                    self.conn.execute(
                        tasks.update()
                        .where(tasks.c.id == key, tasks.c.generation_processed_at.is_(None))
                        .values(generation_processed_at=datetime.now(UTC))
                    )
            except (DualdbError, ValueError) as exc:
                self.skipped.append(f"task {row.id}: generation not made: {exc}")
        self._record(
            "generations_created",
            "generations made for Complete shot tasks (placed last on the shot), by task",
            created,
        )
        self._record(
            "generations_marked_processed",
            "generation_processed_at set: the task's generation already existed",
            marked,
        )

    def _make_generation(self, key: uuid.UUID, project: uuid.UUID, row: Any) -> None:
        # What completion does (trigger tasks_after_status), through the DAL: the placement
        # goes through the shots repository, the one owner of positions.
        generation = self.session.generations.create(
            project, location=row.output_location, type=row.task_type, tasks=[key]
        )
        try:
            shot = to_uuid(str(row.shot).strip().lower()) if row.shot is not None else None
        except ValueError:
            shot = None
        if shot is None:
            return
        shot_project = self.conn.execute(
            sa.select(shots.c.project_id).where(shots.c.id == shot)
        ).scalar()
        if shot_project == project:  # a shot of another project is not placed on, as before
            self.session.shots.add_generation(shot, generation.id)


def repair(
    target: Target,
    *,
    dry_run: bool = False,
    delete_orphans: bool = False,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> RepairReport:
    """Recompute what can be recomputed in ``target``'s data, in one transaction.

    See the module docstring for the fixes and their order.  On Postgres the tables are
    locked (``EXCLUSIVE``: plain readers go on, writers and row lockers wait; ``lock_timeout``
    bounds the wait for locks, then :class:`~dualdb.errors.DatabaseBusy`); on SQLite the transaction
    holds the write lock (``BEGIN IMMEDIATE``).  ``dry_run`` runs the same repair and rolls it
    back, so the report is exactly what a real run would do at that moment.  Orphans are
    deleted only with ``delete_orphans``.  Needs the database at the migration head with every
    trigger of the queue's rules (they do the cascades): :class:`SchemaOutOfDate` otherwise.
    """
    _check_stale_after(stale_after)
    if not isinstance(lock_timeout, timedelta) or lock_timeout <= timedelta(0):
        raise InvalidInput("lock_timeout", "must be a positive interval")
    with translated_errors(), _engine(target) as engine, engine.connect() as conn:
        e = _ENGINES[backend_of(conn).name]
        tx = conn.begin()
        try:
            tables = [
                t.name for t in TABLES if delete_orphans or t.name not in ("users", "projects")
            ]
            for statement in e.locks(tables, lock_timeout):
                conn.exec_driver_sql(statement)
            _require_rules(conn)
            fixes = _Repair(conn, e)
            if delete_orphans:
                fixes.orphans()
            fixes.edges()
            fixes.cancellations()
            fixes.counters()
            fixes.generations()
            findings, rules = _findings(conn, e, stale_after)
        except BaseException:
            tx.rollback()
            raise
        if dry_run:
            tx.rollback()
        else:
            tx.commit()
    remaining = DataReport(target.backend, target.redacted, (), True, findings, rules)
    return RepairReport(
        target.backend,
        target.redacted,
        dry_run,
        tuple(fixes.changes),
        tuple(fixes.skipped),
        remaining,
    )


def _require_rules(conn: sa.Connection) -> None:
    current, head = migrations.current_revision(conn), migrations.head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the database is at revision {current or 'none'}, repair needs {head}: "
            "run `dualdb migrate` first"
        )
    missing = migrations.missing_triggers(conn)
    if missing:
        names = ", ".join(name for _, name in missing)
        raise SchemaOutOfDate(
            f"repair relies on the queue's triggers, and these are missing: {names}; "
            "re-create them with `dualdb downgrade 0005` then `dualdb migrate`"
        )
