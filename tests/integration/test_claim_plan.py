"""A claim reads the oldest ready task from a partial ready index, on both backends.

DESIGN.md ("Task queue", performance): a claim must cost the same however many tasks are
finished or blocked.  That holds only if the planner reads ``ix_tasks_ready`` (or
``ix_tasks_ready_by_type`` with a type filter).  A plan that walks ``Queued`` rows in age order
through ``ix_tasks_status_created_at`` and skips those with unmet dependencies costs time in
proportion to the blocked tasks older than the first ready one — ``make bench`` measured ~28 ms
per claim on SQLite with 100k blocked tasks, against ~0.5 ms with few (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import uuid_utils.compat as uuid_utils
from sqlalchemy import event

import dualdb

#: Long enough that Postgres' bulk enqueue refreshes statistics (dualdb ANALYZEs >= 1000 rows).
CHAIN = 1200


def _claim_plan(db: dualdb.Database, task_types: list[str] | None) -> tuple[Any, list[str]]:
    """Claim once, capturing what dualdb sent; return the claimed task and the claim's plan.

    SQLite: ``EXPLAIN QUERY PLAN`` of dualdb's ``UPDATE``.  Postgres: dualdb calls migration
    0008's ``dualdb.claim_tasks``, so the call is replayed (rolled back) with ``auto_explain``
    reporting the plans of the statements inside the function.
    """
    seen: list[tuple[str, Any]] = []

    def record(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        task = db.tasks.claim("plan-test", task_types=task_types)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    if db.backend == "sqlite":
        statement, parameters = next(
            s for s in seen if s[0].lstrip().upper().startswith("UPDATE")
        )
        with db.engine.connect() as conn:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            conn.rollback()
        return task, [str(r[-1]) for r in rows]
    statement, parameters = next(s for s in seen if "dualdb.claim_tasks(" in s[0])
    notices: list[str] = []
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        for setting in (
            "LOAD 'auto_explain'",
            "SET LOCAL auto_explain.log_min_duration = 0",
            "SET LOCAL auto_explain.log_nested_statements = on",
            "SET LOCAL auto_explain.log_level = notice",
        ):
            conn.exec_driver_sql(setting)
        conn.exec_driver_sql(statement, parameters).all()
        conn.rollback()
    plans = [n for n in notices if "Update on tasks" in n]
    assert plans, f"auto_explain reported no plan of the claim's UPDATE: {notices}"
    return task, plans


@pytest.mark.parametrize(
    ("task_types", "index"),
    [(None, "ix_tasks_ready"), (["render"], "ix_tasks_ready_by_type")],
    ids=["any-type", "by-type"],
)
def test_claim_reads_the_ready_index_behind_blocked_tasks(
    migrated_url: str,
    backend: str,
    task_types: list[str] | None,
    index: str,
) -> None:
    with dualdb.connect(migrated_url) as db:
        user = db.users.create()
        project = db.projects.create(name="plan", user_id=user.id)
        head = db.tasks.enqueue(
            project_id=project.id, task_type="render", params={}, status="Pending"
        )
        rows: list[dict[str, Any]] = []
        prev: uuid.UUID = head.id
        for _ in range(CHAIN):  # a long chain, all Queued, all blocked behind the held head
            key = uuid_utils.uuid7()
            rows.append(
                {
                    "id": key,
                    "project_id": project.id,
                    "task_type": "render",
                    "params": {},
                    "depends_on": [prev],
                }
            )
            prev = key
        db.tasks.create_many(rows)
        ready = db.tasks.enqueue(project_id=project.id, task_type="render", params={})

        task, plan = _claim_plan(db, task_types)

    assert task is not None and task.id == ready.id
    text = "\n".join(plan)
    assert re.search(rf"\b{index}\b", text), (
        f"dualdb's claim does not read {index}, so its cost grows with the blocked tasks "
        f"ahead of the first ready one. Plan:\n{text}\n"
        "Make the planner use the partial ready index (on SQLite: INDEXED BY)."
    )
