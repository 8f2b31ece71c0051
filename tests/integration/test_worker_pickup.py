"""An idle worker wakes on change, not on a timer: LISTEN/NOTIFY on Postgres (migration 0009),
``PRAGMA data_version`` on SQLite.

Every worker here runs with a poll interval of 30 to 60 s, so a pickup within a few hundred
milliseconds can only come from waking on change.  The latency bound is deliberately loose
(the median under 250 ms, where the target is under 50 ms): this machine is shared with other
test runs, and speed claims belong to benchmarks.  The measured numbers are printed (``-s``).
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import dualdb
from benchmarks import pickup
from benchmarks.pickup import until as _until
from dualdb.backends import WorkWaiter
from dualdb.records import Task
from dualdb.worker import Worker
from tests.integration.dal_support import World

PICKUPS = 20
#: Loose on purpose (see the module docstring); the target is 50 ms.
MEDIAN_BOUND_S = 0.25
#: The worker's poll interval: far longer than any pickup these tests accept.
POLL_S = 30.0


@pytest.fixture
def worker_process(
    migrated_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``dualdb worker`` (the demo handler, instant) polling only every 30 s, already waiting
    on change (the benchmark's helper, benchmarks/pickup.py)."""
    log = tmp_path / "worker.log"
    args = ["--poll-interval", str(POLL_S), "--worker-id", "pickup"]
    with pickup.worker_process(migrated_url, log, args) as proc:
        yield proc, log


def test_a_running_worker_picks_up_new_tasks_in_milliseconds(
    db: dualdb.Database,
    world: World,
    backend: str,
    worker_process: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, log = worker_process
    expected = "LISTEN dualdb_tasks" if backend == "postgresql" else "PRAGMA data_version"
    assert expected in log.read_text()
    # The world's two tasks are there from the start: the worker's first claims take them.
    _until(lambda: db.tasks.counts()["Complete"] == 2, 60, "the first tasks to complete")
    latencies = pickup.pickup_latencies(db, world.project.id, PICKUPS)
    assert proc.poll() is None, log.read_text()
    median = statistics.median(latencies)
    # Idle: the worker only waits (a data_version check every few ms, or a blocked LISTEN).
    idle_cpu = pickup.idle_cpu(proc.pid, 2.0)
    print(
        f"\n{backend}: pickup median {median * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {PICKUPS}; idle CPU {idle_cpu:.1%} of a core"
    )
    assert median < MEDIAN_BOUND_S, latencies
    assert idle_cpu < 0.10  # the target is under 2%; loose for a shared machine


class _Watched(WorkWaiter):
    """The worker's real waiter, reporting when the worker starts waiting and how it ended."""

    def __init__(self, inner: WorkWaiter) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.idle = threading.Event()
        self.woken: list[bool] = []

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        self.idle.set()
        woke = self.inner.wait(timeout, stop)
        self.idle.clear()
        self.woken.append(woke)
        return woke

    def close(self) -> None:
        self.inner.close()


def _insert_plain_sql(url: str, backend: str, project_id: object) -> str:
    """A task inserted by another program, bypassing dualdb; its id."""
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            row = conn.execute(
                "INSERT INTO tasks (project_id, task_type, params) "
                "VALUES (?, 'single_image', '{}') RETURNING id",
                (str(project_id),),
            ).fetchone()
            conn.commit()
        finally:
            conn.close()
        return str(row[0])
    with psycopg.connect(url, autocommit=True) as pg:
        found = pg.execute(
            "INSERT INTO tasks (project_id, task_type, params) "
            "VALUES (%s, 'single_image', '{}') RETURNING id",
            (project_id,),
        ).fetchone()
    assert found is not None
    return str(found[0])


@pytest.mark.parametrize("writer", ["plain-sql", "release"])
def test_an_idle_worker_wakes_for_a_task_made_ready_by_another_writer(
    db: dualdb.Database, world: World, migrated_url: str, backend: str, writer: str
) -> None:
    """A plain-SQL insert (no dualdb in the writer), or a held task released: the waiting
    worker wakes at once, although its poll interval is a minute."""
    held = db.tasks.enqueue(world.project.id, "single_image", {}, status="Pending")
    watched: list[_Watched] = []
    real = db.work_waiter

    def work_waiter() -> WorkWaiter:
        watched.append(_Watched(real()))
        return watched[0]

    db.work_waiter = work_waiter  # type: ignore[method-assign]
    done: list[Task] = []
    worker = Worker(
        db, lambda task: f"files/{task.id}.png", worker_id="idle", poll_interval=60.0,
        on_event=lambda line: None,
    )  # fmt: skip
    thread = threading.Thread(target=lambda: done.extend(worker.run().completed))
    thread.start()
    try:
        _until(lambda: bool(watched) and watched[0].idle.is_set(), 60, "the worker to go idle")
        assert db.tasks.counts()["Complete"] == 2  # the world's tasks, before it went idle
        if writer == "plain-sql":
            new_id = _insert_plain_sql(migrated_url, backend, world.project.id)
        else:
            db.tasks.release(held.id)
            new_id = str(held.id)
        _until(lambda: db.tasks.get(new_id).status == "Complete", 10, "the new task to run")
        assert watched[0].woken[-1] is True  # woken by the change, not by the poll interval
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert str(done[-1].id) == new_id


class Listener:
    """A ``LISTEN dualdb_tasks`` connection counting what it receives.

    Counted by a notify handler, which every psycopg we support calls for a notification
    read during any statement (``notifies()`` keeps those for later only from psycopg 3.3).
    """

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self._conn = conn
        self._seen: list[str] = []
        conn.add_notify_handler(lambda n: self._seen.append(n.channel))
        conn.execute("LISTEN dualdb_tasks")

    def count(self) -> int:
        """Notifications on ``dualdb_tasks`` since the last count (commits deliver them at
        once; a round trip reads whatever was sent before it)."""
        self._conn.execute("SELECT 1")
        seen, self._seen = self._seen, []
        return sum(1 for channel in seen if channel == "dualdb_tasks")


@pytest.mark.postgres_only
def test_the_database_notifies_when_a_task_becomes_ready(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    """Migration 0009: one NOTIFY per transaction that makes a task ready, and none for
    writes that make nothing ready (claims, heartbeats, a completion nobody waits for)."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        listener = Listener(conn)
        first = db.tasks.enqueue(world.project.id, "t", {})
        assert listener.count() == 1
        rows = [{"project_id": world.project.id, "task_type": "t", "params": {}}] * 50
        db.tasks.create_many(rows)
        assert listener.count() == 1  # one transaction: folded into one
        blocked = db.tasks.enqueue(world.project.id, "t", {}, depends_on=[first.id])
        held = db.tasks.enqueue(world.project.id, "t", {}, status="Pending")
        assert listener.count() == 0  # neither is ready
        claimed = db.tasks.claim_many("w", 1000)
        db.tasks.heartbeat(claimed[0].id, "w")
        db.tasks.complete(world.task.id, "w", "files/x.png")  # nobody waits for it
        assert listener.count() == 0
        db.tasks.complete(first.id, "w", "files/first.png")  # `blocked` becomes ready
        assert listener.count() == 1
        db.tasks.release(held.id)
        assert listener.count() == 1
        assert db.tasks.get(blocked.id).status == "Queued"
        db.tasks.fail(claimed[-1].id, "w", "again", retry=True)  # back to Queued
        assert listener.count() == 1


@pytest.mark.postgres_only
def test_behind_the_transaction_pooler_workers_poll(db: dualdb.Database) -> None:
    """The transaction pooler cannot carry LISTEN: the waiter falls back to the poll interval."""
    from dataclasses import replace

    from dualdb.backends import backend_for

    pooled = replace(db.target, transaction_pooler=True)
    with backend_for("postgresql").work_waiter(pooled, db.engine) as waiter:
        assert type(waiter) is WorkWaiter and waiter.mode == "polling"
        started = time.monotonic()
        assert waiter.wait(0.05, threading.Event()) is False
        assert time.monotonic() - started >= 0.05
    with db.work_waiter() as direct:
        assert direct.mode == "LISTEN dualdb_tasks"
