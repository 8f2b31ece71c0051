"""One row no reader can decode never stops a read, a list, the studio, a claim or a worker.

Such rows are written around the database's rules (before migration 0006, or with its triggers
switched off), so each test switches the triggers off to write one: on SQLite with a plain
``sqlite3`` connection that drops the shape triggers, on Postgres with ``DISABLE TRIGGER USER``.
"""

from __future__ import annotations

import sqlite3
import urllib.request
from typing import Any

import psycopg
import pytest

import dualdb
from dualdb.errors import UnreadableRow
from dualdb.studio import running
from dualdb.worker import Worker
from tests.integration.dal_support import World

DEEP = "[" * 3000 + "]" * 3000
HUGE = '{"n": ' + "9" * 5000 + "}"
POISONS = [pytest.param(DEEP, id="nested-3000"), pytest.param(HUGE, id="5000-digits")]


def poison(url: str, backend: str, task_id: object, params: str) -> None:
    """Store ``params`` (JSON text) on a task, around every rule of the database."""
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            conn.execute("DROP TRIGGER tasks_check_params")
            conn.execute("UPDATE tasks SET params = ? WHERE id = ?", (params, str(task_id)))
            conn.commit()
        finally:
            conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("ALTER TABLE tasks DISABLE TRIGGER USER")
        pg.execute("UPDATE tasks SET params = %s::jsonb WHERE id = %s", (params, task_id))
        pg.execute("ALTER TABLE tasks ENABLE TRIGGER USER")


@pytest.mark.parametrize("bad", POISONS)
def test_reads_report_the_row_and_go_on(
    db: dualdb.Database, world: World, migrated_url: str, backend: str, bad: str
) -> None:
    extra = db.tasks.enqueue(world.project.id, "upscale", {"n": 1})
    poison(migrated_url, backend, world.task.id, bad)
    page = db.tasks.list()
    assert [t.id for t in page.items] == [world.other_task.id, extra.id]
    [problem] = page.unreadable
    assert (problem.entity, problem.id, problem.column) == ("task", world.task.id, "params")
    with pytest.raises(UnreadableRow) as caught:
        db.tasks.get(world.task.id)
    assert f"task {world.task.id}: column params cannot be read" in str(caught.value)
    assert [t.id for t in db.tasks.iter(batch_size=1)] == [world.other_task.id, extra.id]
    assert db.tasks.count() == 3
    # Pages after it are still reachable through the cursor.
    first = db.tasks.list(limit=1)
    assert first.items == [] and first.next_cursor is not None
    assert [t.id for t in db.tasks.list(limit=5, cursor=first.next_cursor).items] == [
        world.other_task.id,
        extra.id,
    ]


@pytest.mark.parametrize("bad", POISONS)
def test_a_claim_fails_the_unreadable_task_and_moves_on(
    db: dualdb.Database, world: World, migrated_url: str, backend: str, bad: str
) -> None:
    waiting = db.tasks.enqueue(world.project.id, "stitch", {}, depends_on=[world.task.id])
    poison(migrated_url, backend, world.task.id, bad)
    claimed = db.tasks.claim("gpu-1")
    assert claimed is not None and claimed.id == world.other_task.id
    assert db.tasks.claim("gpu-1") is None  # the dependent of the poisoned task went with it
    assert db.tasks.count(status="Failed") == 1
    failed = db.tasks.list(status="Failed")
    assert failed.unreadable[0].id == world.task.id
    after = db.tasks.get(waiting.id)
    assert after.status == "Cancelled"
    assert after.error == f"cancelled: dependency {world.task.id} failed"


def test_the_worker_survives_an_unreadable_task(
    db: dualdb.Database, world: World, migrated_url: str, backend: str
) -> None:
    poison(migrated_url, backend, world.task.id, DEEP)
    events: list[str] = []
    worker = Worker(db, lambda t: f"files/{t.id}.png", worker_id="w", on_event=events.append)
    stats = worker.run(drain=True)
    assert [t.id for t in stats.completed] == [world.other_task.id]
    assert db.tasks.counts() == {
        "Pending": 0,
        "Queued": 0,
        "In Progress": 0,
        "Complete": 1,
        "Failed": 1,
        "Cancelled": 0,
    }


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: Any = response.read()
        return response.status, body.decode()


def test_the_studio_shows_the_unreadable_row(
    db: dualdb.Database, world: World, migrated_url: str, backend: str
) -> None:
    poison(migrated_url, backend, world.task.id, HUGE)
    with running(db, read_only=True) as url:
        status, html = _get(f"{url}studio/tasks/list")
        assert status == 200
        assert 'data-unreadable="1"' in html
        assert str(world.other_task.id)[:8] in html
        status, html = _get(f"{url}studio/tasks/details/{world.task.id}")
        assert status == 200
        assert "unreadable" in html and "Exceeds the limit" in html


@pytest.mark.sqlite_only
def test_an_unreadable_sort_key_on_a_page_boundary(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    """A project another program stamped with garbage (SQLite keeps any text): the pages go
    on past it, in the order SQLite keeps them, from a cursor that names it as stored."""
    third = db.projects.create("Third", world.user.id)
    conn = sqlite3.connect(migrated_url.removeprefix("sqlite:///"))
    try:
        conn.execute(
            "UPDATE projects SET created_at = '2000-01-01 sometime' WHERE id = ?",
            (str(world.project.id),),
        )
        conn.commit()
    finally:
        conn.close()
    seen: list[object] = []
    problems: list[object] = []
    cursor = None
    while True:
        page = db.projects.list(limit=1, cursor=cursor)
        seen += [p.id for p in page.items]
        problems += [p.id for p in page.unreadable]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert problems == [world.project.id]
    assert seen == [world.other_project.id, third.id]
    assert [p.id for p in db.projects.iter(batch_size=1)] == seen


@pytest.mark.sqlite_only
def test_a_claim_fails_a_task_whose_very_id_is_unreadable(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    """Written around the rules by another program: the id itself is not a UUID."""
    conn = sqlite3.connect(migrated_url.removeprefix("sqlite:///"))
    try:
        conn.execute("DROP TRIGGER tasks_before_insert")
        conn.execute(
            "INSERT INTO tasks (id, project_id, task_type, params, created_at) "
            "VALUES ('task-1', ?, 'x', '{}', '2000-01-01T00:00:00.000000Z')",
            (str(world.project.id),),
        )
        conn.commit()
    finally:
        conn.close()
    claimed = db.tasks.claim("gpu-1")
    assert claimed is not None and claimed.id == world.task.id
    conn = sqlite3.connect(migrated_url.removeprefix("sqlite:///"))
    try:
        query = "SELECT status, error FROM tasks WHERE id = 'task-1'"
        status, error = conn.execute(query).fetchone()
    finally:
        conn.close()
    assert status == "Failed" and error.startswith("unreadable row: task task-1: column id")
