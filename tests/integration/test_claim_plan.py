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

import dualdb
from benchmarks.measure import claim_plan

#: Long enough that Postgres' bulk enqueue refreshes statistics (dualdb ANALYZEs >= 1000 rows).
CHAIN = 1200


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

        task, plan = claim_plan(db, "plan-test", task_types)

    assert task is not None and task.id == ready.id
    text = "\n".join(plan)
    assert re.search(rf"\b{index}\b", text), (
        f"dualdb's claim does not read {index}, so its cost grows with the blocked tasks "
        f"ahead of the first ready one. Plan:\n{text}\n"
        "Make the planner use the partial ready index (on SQLite: INDEXED BY)."
    )


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    ("task_types", "index"),
    [(None, "ix_tasks_ready"), (["render"], "ix_tasks_ready_by_type"),
     (["render", "upscale"], "ix_tasks_ready")],
    ids=["any-type", "one-type", "two-types"],
)  # fmt: skip
def test_a_claim_of_one_task_is_planned_once_per_session(
    migrated_url: str, backend: str, task_types: list[str] | None, index: str
) -> None:
    """PL/pgSQL reuses a statement's generic plan only when it is as cheap as a fresh one.

    0008's claim joined the picked rows to ``tasks``; its generic plan (``max_tasks``
    unknown) hashed the whole table, so every claim was planned again (~350 µs, more than
    the claim itself).  Migration 0012's claim of one task has one plan, the right one: the
    generic plan reads the ready index and the primary key, and nothing in full.
    """
    with dualdb.connect(migrated_url) as db:
        user = db.users.create()
        project = db.projects.create(name="plan", user_id=user.id)
        db.tasks.create_many(
            {"project_id": project.id, "task_type": kind, "params": {}}
            for kind in ["render", "upscale", "caption"] * (CHAIN // 3)
        )
        task, plan = claim_plan(db, "plan-test", task_types, generic=True)

    assert task is not None
    text = "\n".join(plan)
    assert re.search(rf"\b{index}\b", text) and re.search(r"\bpk_tasks\b", text), text
    assert not re.search(r"Seq Scan|Hash", text), (
        f"the claim's generic plan reads tasks in full, so PL/pgSQL plans it afresh on "
        f"every call:\n{text}"
    )


@pytest.mark.sqlite_only
def test_a_claim_of_one_task_updates_its_row_by_key(migrated_url: str, backend: str) -> None:
    """SQLite: ``claim`` updates ``id = (SELECT id … LIMIT 1)``, one lookup of one key.

    ``id IN (SELECT id … LIMIT n)`` (``claim_many``) first builds a list of the picked keys,
    a tenth of a claim→complete's instructions in SQLite (callgrind, docs/benchmarks.md).
    """
    with dualdb.connect(migrated_url) as db:
        user = db.users.create()
        project = db.projects.create(name="plan", user_id=user.id)
        older = db.tasks.enqueue(project_id=project.id, task_type="render", params={})
        db.tasks.enqueue(project_id=project.id, task_type="render", params={})
        task, plan = claim_plan(db, "plan-test")
        many = db.tasks.claim_many("plan-test", 2)

    text = "\n".join(plan)
    assert task is not None and task.id == older.id and len(many) == 1
    assert "SCALAR SUBQUERY" in text and "LIST SUBQUERY" not in text, text
    assert re.search(r"\bix_tasks_ready\b", text), text
