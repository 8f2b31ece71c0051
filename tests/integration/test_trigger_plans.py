"""The queue's triggers read dependencies by primary key, and only when there are some.

Migration 0013.  A lookup of ``d.id = ANY (NEW.dependant_on)`` gave the planner an array of
unknown length: PL/pgSQL planned it again on every status change (each claim, each completion)
at a cost that grew with the table, and a session whose first inserts went into a small table
kept a plan that walked a whole index of ``tasks`` per inserted dependent task (a bulk insert
in quadratic time).  These tests read the plans the server really ran (``auto_explain`` of the
trigger functions' statements), whoever writes: plain psycopg here, no dualdb in between.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import uuid_utils.compat as uuid_utils
from sqlalchemy.engine import make_url

import dualdb
from benchmarks.targets import psycopg_dsn

COLUMNS = "id, task_type, params, status, dependant_on, project_id, attempts, unmet_dependencies"
#: A Queued task: id, dependant_on, project_id.
INSERT_QUEUED = f"INSERT INTO tasks ({COLUMNS}) VALUES (%s, 'step', '{{}}', 'Queued', %s, %s, 0, 0)"


@contextmanager
def _explained(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[list[str]]:
    """The plans of every statement run inside the block, nested ones included."""
    plans: list[str] = []
    conn.execute("SET client_min_messages = notice")  # auto_explain reports as notices
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_nested_statements = on", "log_level = notice", "log_analyze = on"):
        conn.execute(f"SET auto_explain.{setting}")

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_primary and "plan:" in diag.message_primary:
            plans.append(diag.message_primary)

    conn.add_notice_handler(keep)
    conn.execute("SET auto_explain.log_min_duration = 0")
    try:
        yield plans
        assert plans, "auto_explain reported no plan"
    finally:
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(keep)


def _reads_of_tasks(plans: list[str]) -> list[str]:
    """Every access to ``tasks`` in ``plans`` (one line each, with its condition)."""
    reads = []
    for plan in plans:
        lines = plan.splitlines()
        for i, line in enumerate(lines):
            if re.search(r"Scan( using \w+)? on tasks\b", line):
                cond = lines[i + 1].strip() if i + 1 < len(lines) else ""
                reads.append(f"{line.strip()} | {cond}")
    return reads


def _project(url: str) -> uuid.UUID:
    with dualdb.connect(url) as db:
        user = db.users.create()
        return db.projects.create(name="plans", user_id=user.id).id


@pytest.mark.postgres_only
def test_a_bulk_insert_of_dependent_tasks_reads_each_dependency_by_primary_key(
    migrated_url: str,
) -> None:
    """A ``COPY`` of chained tasks into a new table, then one more dependent task: every
    lookup of a dependency its trigger makes is one primary-key probe per distinct id,
    however small the table was when the session's plans were cached (0010's function
    walked ``ix_tasks_project_id_created_at_id`` in full for each row)."""
    project_id = _project(migrated_url)
    with psycopg.connect(psycopg_dsn(migrated_url), autocommit=True) as conn:
        prev: uuid.UUID | None = None
        with conn.cursor() as cur, cur.copy(f"COPY tasks ({COLUMNS}) FROM STDIN") as copy:
            for _ in range(300):
                key = uuid_utils.uuid7()
                deps = "{}" if prev is None else "{" + str(prev) + "}"
                copy.write_row((key, "step", "{}", "Complete", deps, project_id, 1, 0))
                prev = key
            held = uuid_utils.uuid7()  # unfinished: the new task waits for it
            copy.write_row((held, "step", "{}", "Pending", "{}", project_id, 0, 0))
        added = uuid_utils.uuid7()
        with _explained(conn) as plans:
            conn.execute(INSERT_QUEUED, (added, [prev, held, held], project_id))
        row = conn.execute("SELECT unmet_dependencies FROM tasks WHERE id = %s", (added,))

        # Two distinct dependencies, one of them unfinished (named twice, counted once).
        assert row.fetchone() == (1,)
    assert not [p for p in plans if "ANY (NEW.dependant_on)" in p], "\n".join(plans)
    reads = [r for r in _reads_of_tasks(plans) if " on tasks d " in r]
    assert len(reads) == 2, "\n".join(plans)
    assert all("using pk_tasks" in r and "Index Cond: (id = " in r for r in reads), reads


@pytest.mark.postgres_only
def test_a_claim_of_a_task_without_dependencies_looks_no_dependency_up(
    migrated_url: str,
) -> None:
    """A status change of a task with no dependencies runs no lookup of them (0006's check
    ran one, planned afresh on every claim); with dependencies, each is read by primary key."""
    project_id = _project(migrated_url)
    with psycopg.connect(psycopg_dsn(migrated_url), autocommit=True) as conn:
        first = uuid_utils.uuid7()
        conn.execute(INSERT_QUEUED, (first, [], project_id))
        with _explained(conn) as plans:
            claimed = conn.execute("SELECT id FROM dualdb.claim_tasks('w', NULL, 1)").fetchone()
        assert claimed == (first,)
        assert not [p for p in plans if "dependant_on" in p and "d.id" in p], "\n".join(plans)

        conn.execute("SELECT dualdb.complete_task(%s, 'w', 'out')", (first,))
        second = uuid_utils.uuid7()
        conn.execute(INSERT_QUEUED, (second, [first], project_id))
        with _explained(conn) as plans:
            claimed = conn.execute("SELECT id FROM dualdb.claim_tasks('w', NULL, 1)").fetchone()
        assert claimed == (second,)
        lookups = [r for r in _reads_of_tasks(plans) if "Scan using pk_tasks on tasks d " in r]
        assert lookups and all("Index Cond: (id = " in r for r in lookups), "\n".join(plans)
        assert not [p for p in plans if "ANY (NEW.dependant_on)" in p], "\n".join(plans)


def _vm_steps(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    """SQLite virtual-machine instructions ``sql`` runs, triggers included (counted, not
    timed: the same on any machine)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        conn.execute(sql, params)
    finally:
        conn.set_progress_handler(None, 1)
    return steps


@pytest.mark.sqlite_only
def test_sqlite_reads_a_new_tasks_dependencies_by_primary_key(migrated_url: str) -> None:
    """Inserting a dependent task costs the same with 3,000 Cancelled tasks in the table as
    with none (migration 0014: 0006's Failed/Cancelled check read every one of them through
    ``ix_tasks_status_created_at``, for each insert)."""
    project_id = str(_project(migrated_url))
    conn = sqlite3.connect(make_url(migrated_url).database or "", isolation_level=None)
    try:
        insert = (
            "INSERT INTO tasks (id, task_type, params, dependant_on, project_id) "
            "VALUES (?, 'step', '{}', ?, ?)"
        )
        dep = str(uuid_utils.uuid7())
        conn.execute(insert, (dep, "[]", project_id))
        before = _vm_steps(conn, insert, (str(uuid_utils.uuid7()), f'["{dep}"]', project_id))
        conn.execute("BEGIN")
        for _ in range(3000):
            conn.execute(
                "INSERT INTO tasks (id, task_type, params, dependant_on, project_id, status, "
                "error) VALUES (?, 'step', '{}', '[]', ?, 'Cancelled', 'gone')",
                (str(uuid_utils.uuid7()), project_id),
            )
        conn.execute("COMMIT")
        after = _vm_steps(conn, insert, (str(uuid_utils.uuid7()), f'["{dep}"]', project_id))
        # The same check when a Queued task's dependencies change (tasks_check_dependencies).
        moved = str(uuid_utils.uuid7())
        conn.execute(insert, (moved, "[]", project_id))
        repoint = "UPDATE tasks SET dependant_on = ? WHERE id = ?"
        repointed = _vm_steps(conn, repoint, (f'["{dep}"]', moved))
        unchanged = _vm_steps(conn, repoint, ("[]", moved))
        triggers = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    finally:
        conn.close()
    assert after < before * 1.2, (before, after)
    assert repointed < before * 1.2 and unchanged < before * 1.2, (before, repointed, unchanged)
    for name in ("tasks_before_insert", "tasks_check_dependencies"):
        assert "WHERE +d.status IN ('Failed', 'Cancelled')" in triggers[name], name


@pytest.mark.sqlite_only
def test_sqlite_cancels_dependents_from_their_keys(migrated_url: str) -> None:
    """Failing a task costs the same with 3,000 Queued and 3,000 Cancelled tasks in the table
    as with none, and still cancels its dependents, transitively; a task whose dependents are
    all cancelled already does not walk them again (migration 0015: 0006's cascade read every
    unfinished and every Cancelled task of the table through ``ix_tasks_status_created_at``,
    for each task that failed or was cancelled)."""
    project_id = str(_project(migrated_url))
    conn = sqlite3.connect(make_url(migrated_url).database or "", isolation_level=None)
    insert = (
        "INSERT INTO tasks (id, task_type, params, dependant_on, project_id, status, error, "
        "updated_at) VALUES (?, 'step', '{}', ?, ?, ?, ?, '2000-01-01T00:00:00.000000Z')"
    )
    fail = "UPDATE tasks SET status = 'Failed', error = 'boom' WHERE id = ?"

    def task(status: str, depends_on: str = "", error: str | None = None) -> str:
        key = str(uuid_utils.uuid7())
        conn.execute(
            insert, (key, f'["{depends_on}"]' if depends_on else "[]", project_id, status, error)
        )
        return key

    def chain() -> tuple[str, str, str]:
        """A task In Progress with a dependent, which has one of its own."""
        head = task("In Progress")
        middle = task("Queued", head)
        return head, middle, task("Queued", middle)

    try:
        alone = _vm_steps(conn, fail, (task("In Progress"),))
        walked = _vm_steps(conn, fail, (chain()[0],))
        conn.execute("BEGIN")
        for status, error in (("Queued", None), ("Cancelled", "gone")):
            for _ in range(3000):
                task(status, error=error)
        conn.execute("COMMIT")
        alone_in_full_table = _vm_steps(conn, fail, (task("In Progress"),))
        head, middle, tail = chain()
        walked_in_full_table = _vm_steps(conn, fail, (head,))
        cancelled = {
            key: (error, updated != "2000-01-01T00:00:00.000000Z")
            for key, error, updated in conn.execute(
                "SELECT id, error, updated_at FROM tasks WHERE id IN (?, ?) "
                "AND status = 'Cancelled'",
                (middle, tail),
            )
        }
        # A chain of 300 dependents, cancelled already: failing its head has nothing to walk.
        root = below = task("In Progress")
        conn.execute("BEGIN")
        for _ in range(300):
            below = task("Cancelled", below, "cancelled by hand")
        conn.execute("COMMIT")
        nothing_below = _vm_steps(conn, fail, (root,))
        counts = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status"))
    finally:
        conn.close()
    assert alone_in_full_table < alone * 1.2, (alone, alone_in_full_table)
    assert walked_in_full_table < walked * 1.2, (walked, walked_in_full_table)
    assert nothing_below < alone * 1.5, (alone, nothing_below)
    message = f"cancelled: dependency {head} failed"  # one walk, from the failed task
    assert cancelled == {middle: (message, True), tail: (message, True)}
    assert counts["Queued"] == 3000 and counts["Cancelled"] == 3000 + 2 + 2 + 300, counts
