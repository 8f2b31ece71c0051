"""The stock worker keeps going: maintenance on a timer, and backoff through database outages."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

import dualdb
from dualdb.records import Task
from dualdb.schema import tasks
from dualdb.worker import BACKOFF_CAP_S, Worker, backoff_delay
from tests.integration.dal_support import World


def test_maintenance_requeues_a_dead_workers_task(db: dualdb.Database, world: World) -> None:
    """With nothing else running, a crashed worker's task comes back and is finished."""
    dead = db.tasks.claim("crashed-worker")
    assert dead is not None and dead.id == world.task.id
    worker = Worker(
        db,
        lambda task: f"files/{task.id}.png",
        worker_id="rescuer",
        stale_after=timedelta(microseconds=1),
        on_event=lambda line: None,
    )
    stats = worker.run(drain=True)
    done = stats.completed
    assert world.task.id in {t.id for t in done}
    final = db.tasks.get(world.task.id)
    assert (final.status, final.worker_id, final.attempts) == ("Complete", "rescuer", 2)


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(n) for n in range(1, 40)]
    assert all(0 < d <= BACKOFF_CAP_S for d in delays)
    assert delays[0] <= 0.2 and max(delays) > BACKOFF_CAP_S / 2
    assert len({round(backoff_delay(30), 6) for _ in range(20)}) > 1  # jittered


@pytest.mark.postgres_only
def test_worker_survives_the_database_going_away(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    """Connections refused and open ones killed (as in a server restart): the worker backs
    off, keeps trying, and finishes the task once the database is back."""
    name = make_url(migrated_url).database
    admin = make_url(migrated_url).set(database="postgres").render_as_string(hide_password=False)
    retried = threading.Event()
    handled = threading.Event()
    events: list[str] = []

    def on_event(line: str) -> None:
        events.append(line)
        if "retrying" in line and sum("retrying" in e for e in events) >= 2:
            retried.set()

    def handler(task: Task) -> str:
        handled.set()
        # Finish this task, then stop: the world holds a second ready task, which a worker
        # still running after this one would claim before the test could stop it.
        worker.stop()
        return f"files/{task.id}.png"

    worker = Worker(db, handler, worker_id="survivor", poll_interval=0.05, on_event=on_event)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(name)))  # fmt: skip
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            assert retried.wait(60), events
            assert thread.is_alive() and not handled.is_set()
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(name)))  # fmt: skip
            assert handled.wait(60), events
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(name)))  # fmt: skip
            worker.stop()
            thread.join(60)
    assert not thread.is_alive()
    assert [t.id for t in worker.stats.completed] == [world.task.id]
    assert any("DatabaseUnavailable" in e for e in events), events


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--heartbeat", "0"),
        ("--heartbeat", "-1"),
        ("--poll-interval", "0"),
        ("--stale-after", "0"),
        ("--maintenance-interval", "inf"),
        ("--heartbeat", "1e300"),
    ],
)
def test_worker_cli_refuses_bad_intervals_in_one_line(
    migrated_url: str, option: str, value: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dualdb", "worker", "--url", migrated_url, option, value,
         "--drain"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}:"), done.stderr


def test_requeue_stale_recovers_a_task_started_without_heartbeats(
    db: dualdb.Database, world: World
) -> None:
    """A worker written in plain SQL may never heartbeat: its task goes stale from its start."""
    with db.engine.begin() as conn:
        started = conn.execute(
            tasks.update()
            .where(tasks.c.id == world.task.id)
            .values(status="In Progress", worker_id="sql-worker", attempts=1)
        )
        assert started.rowcount == 1
    assert db.tasks.get(world.task.id).heartbeat_at is None
    [back] = db.tasks.requeue_stale(timedelta(microseconds=1))
    assert (back.id, back.status, back.worker_id) == (world.task.id, "Queued", None)
