"""``db.tasks.claim_many``: up to ``limit`` of the oldest ready tasks, atomically, on both
backends (one ``dualdb.claim_tasks`` call on Postgres, one ``UPDATE … RETURNING`` on SQLite)."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import dualdb
from dualdb.errors import InvalidInput, PermissionDenied
from dualdb.scope import release_pinned
from tests.integration.dal_support import World
from tests.integration.test_unreadable_rows import DEEP, poison


def _enqueue(db: dualdb.Database, world: World, n: int, task_type: str = "t") -> list[Any]:
    return [db.tasks.enqueue(world.project.id, task_type, {"i": i}).id for i in range(n)]


def test_claim_many_takes_the_oldest_ready_tasks_in_order(
    db: dualdb.Database, world: World
) -> None:
    fresh = _enqueue(db, world, 5)
    # world.task and world.other_task are older than everything enqueued here.
    oldest = [world.task.id, world.other_task.id, *fresh]
    first = db.tasks.claim_many("gpu-1", 3)
    assert [t.id for t in first] == oldest[:3]
    for task in first:
        assert (task.status, task.worker_id, task.attempts) == ("In Progress", "gpu-1", 1)
        assert task.generation_started_at is not None
        assert task.heartbeat_at == task.generation_started_at
    # One reading of the clock per claimed task, for all three columns.
    assert all(t.updated_at == t.generation_started_at for t in first)
    rest = db.tasks.claim_many("gpu-2", 1000)
    assert [t.id for t in rest] == oldest[3:]
    assert db.tasks.claim_many("gpu-3", 10) == []
    assert db.tasks.counts()["In Progress"] == len(oldest)


def test_claim_many_takes_only_ready_tasks(db: dualdb.Database, world: World) -> None:
    held = db.tasks.enqueue(world.project.id, "t", {}, status="Pending")
    blocked = db.tasks.enqueue(world.project.id, "t", {}, depends_on=[world.task.id])
    ready = db.tasks.enqueue(world.project.id, "t", {})
    got = db.tasks.claim_many("gpu-1", 10)
    assert [t.id for t in got] == [world.task.id, world.other_task.id, ready.id]
    db.tasks.complete(world.task.id, "gpu-1", "files/a.png")
    db.tasks.release(held.id)
    assert [t.id for t in db.tasks.claim_many("gpu-1", 10)] == [held.id, blocked.id]


def test_claim_many_filters_by_task_type(db: dualdb.Database, world: World) -> None:
    ups = _enqueue(db, world, 3, "upscale")
    stitch = _enqueue(db, world, 2, "stitch")
    assert [t.id for t in db.tasks.claim_many("w", 2, ["upscale"])] == ups[:2]
    got = db.tasks.claim_many("w", 10, task_types=["stitch", "upscale"])
    assert [t.id for t in got] == [ups[2], *stitch]
    assert db.tasks.claim_many("w", 10, ["stitch", "upscale"]) == []
    assert [t.task_type for t in db.tasks.claim_many("w", 10)] == ["single_image"] * 2


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        (0, "must be at least 1"),
        (-1, "must not be negative"),
        (1001, "must be at most 1000"),
        (True, "must be an integer, not bool"),
        (2.0, "must be an integer, not float"),
        ("3", "must be an integer, not str"),
        (None, "must be an integer, not NoneType"),
    ],
)
def test_claim_many_refuses_bad_limits(
    db: dualdb.Database, world: World, limit: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        db.tasks.claim_many("gpu-1", limit)
    assert caught.value.field == "limit" and message in str(caught.value)
    assert db.tasks.counts()["In Progress"] == 0  # nothing was claimed


def test_claim_many_refuses_bad_types_and_users(db: dualdb.Database, world: World) -> None:
    with pytest.raises(InvalidInput) as caught:
        db.tasks.claim_many("gpu-1", 5, [])
    assert caught.value.field == "task_types"
    with pytest.raises(InvalidInput):
        db.tasks.claim_many("  ", 5)
    with pytest.raises(PermissionDenied):
        db.as_user(world.user.id).tasks.claim_many("gpu-1", 5)
    assert db.tasks.counts()["In Progress"] == 0


def test_claim_many_fails_an_unreadable_row_and_returns_the_others(
    db: dualdb.Database, world: World, migrated_url: str, backend: str
) -> None:
    fresh = _enqueue(db, world, 3)
    poison(migrated_url, backend, world.other_task.id, DEEP)
    got = db.tasks.claim_many("gpu-1", 3)
    # The poisoned task is Failed and left out; another ready task takes its place.
    assert [t.id for t in got] == [world.task.id, fresh[0], fresh[1]]
    failed = db.tasks.list(status="Failed")
    assert [p.id for p in failed.unreadable] == [world.other_task.id]
    assert [t.id for t in db.tasks.claim_many("gpu-1", 3)] == [fresh[2]]


def _claimer(url: str, worker_id: str, limit: int, out: str, start: Any) -> None:
    """One process: claim_many until nothing is ready, completing each batch."""
    seen: list[str] = []
    with dualdb.connect(url) as db:
        start.wait()  # all together, so the claims really race
        while batch := db.tasks.claim_many(worker_id, limit):
            seen += [str(t.id) for t in batch]
            for task in batch:
                db.tasks.complete(task.id, worker_id, f"out/{task.id}")
    Path(out).write_text(json.dumps(seen))


def test_processes_racing_claim_many_never_share_a_task(
    db: dualdb.Database, world: World, migrated_url: str, tmp_path: Path
) -> None:
    total = 600
    rows = [
        {"project_id": world.project.id, "task_type": "t", "params": {"i": i}} for i in range(total)
    ]
    ids = {str(t.id) for t in db.tasks.create_many(rows)} | {
        str(world.task.id),
        str(world.other_task.id),
    }
    ctx = mp.get_context("spawn")
    workers = 4
    start = ctx.Barrier(workers)
    outs = [str(tmp_path / f"c{i}.json") for i in range(workers)]
    procs = [
        ctx.Process(target=_claimer, args=(migrated_url, f"c{i}", 7 + 5 * i, outs[i], start))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * workers, "a claimer crashed (see its stderr)"
    claimed = [i for out in outs for i in json.loads(Path(out).read_text())]
    assert len(claimed) == len(set(claimed)), "a task was claimed twice"
    assert set(claimed) == ids
    counts = db.tasks.counts()
    assert counts["Complete"] == len(ids) and counts["In Progress"] == 0
    assert {t.attempts for t in db.tasks.iter(batch_size=1000)} == {1}


@pytest.mark.sqlite_only
def test_the_claims_clock_is_read_after_the_write_lock_wait(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    """Another writer holds SQLite's write lock; a claim started meanwhile waits for it.  Its
    time is read once it has the lock — never before the other writer's commit (a dependency
    completed there would otherwise seem to finish after its dependent started)."""
    path = migrated_url.removeprefix("sqlite:///")
    started = threading.Event()

    def on_statement(dbapi_conn: Any, _record: Any) -> None:
        # Called as a statement starts, before it waits for the lock.
        dbapi_conn.set_trace_callback(lambda _sql: started.set())

    release_pinned(db.engine)
    db.engine.dispose()  # the next connection is traced
    event.listen(db.engine, "connect", on_statement)
    blocker = sqlite3.connect(path, isolation_level=None)
    claimed: list[Any] = []
    claimer = threading.Thread(target=lambda: claimed.append(db.tasks.claim("late")))
    try:
        blocker.execute("BEGIN IMMEDIATE")
        claimer.start()
        assert started.wait(30)  # the claim has begun, and waits for the lock
        released_after = datetime.now(UTC)
    finally:
        blocker.execute("COMMIT")
        if claimer.is_alive() or claimer.ident is not None:
            claimer.join(60)
        blocker.close()
        event.remove(db.engine, "connect", on_statement)
    assert claimed and claimed[0] is not None
    assert claimed[0].generation_started_at is not None
    assert claimed[0].generation_started_at >= released_after
