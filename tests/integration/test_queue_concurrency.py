"""Many worker processes against one queue, on SQLite and Postgres.

N processes drain a few thousand tasks that form a dependency DAG: every task is completed
exactly once, none starts before all its dependencies completed, nothing is lost, and no
"database is locked" escapes.  Worker processes killed with SIGKILL or stopped with SIGTERM
behave as docs/queue.md promises.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import dualdb
from dualdb.database import Database

WORKERS = 4
TASKS = 2000
ROOT = Path(__file__).resolve().parents[2]


def _drain(url: str, worker_id: str, out: str, start: Any, types: list[str] | None) -> None:
    """One worker process: claim (``types``, or any) and complete until no unfinished task
    is left."""
    done: list[dict[str, Any]] = []
    with dualdb.connect(url) as db:
        start.wait()  # all workers begin together, so the work really is contended
        idle = 0
        while True:
            task = db.tasks.claim(worker_id, task_types=types)
            if task is None:
                counts = db.tasks.counts()
                if counts["Queued"] + counts["In Progress"] + counts["Pending"] == 0:
                    break
                idle += 1
                time.sleep(0.002 * min(idle, 10))
                continue
            idle = 0
            db.tasks.complete(task.id, worker_id, f"out/{task.id}")
            done.append({"id": str(task.id), "attempts": task.attempts})
    Path(out).write_text(json.dumps(done))


def _enqueue_dag(db: Database, n: int, seed: int = 7, types: Sequence[str] = ("t",)) -> list[Any]:
    """Enqueue ``n`` tasks whose dependencies form a random DAG; task ``i`` has type
    ``types[i % len(types)]``."""
    rng = random.Random(seed)
    user = db.users.create()
    project = db.projects.create("DAG", user.id)
    rows: list[dict[str, Any]] = []
    ids = [dualdb.repositories.base.new_id() for _ in range(n)]
    for i in range(n):
        window = ids[max(0, i - 40) : i]
        deps = rng.sample(window, k=min(len(window), rng.choice([0, 0, 1, 1, 2, 3])))
        rows.append(
            {
                "id": ids[i],
                "project_id": project.id,
                "task_type": types[i % len(types)],
                "params": {"i": i},
                "depends_on": deps,
            }
        )
    for start in range(0, n, 500):
        db.tasks.create_many(rows[start : start + 500])
    return ids


def test_many_processes_drain_a_dag_exactly_once(migrated_url: str, tmp_path: Path) -> None:
    # One task in ten is of a type only one worker takes ("own0" … "own3"); the rest any
    # worker may take ("t").  Every worker thus has work no other can do, and the shared work
    # is raced for: SQLite's lock is not fair, so without its own tasks one fast worker could
    # drain the whole queue alone and the test would show no sharing.
    own = [f"own{i}" for i in range(WORKERS)]
    with dualdb.connect(migrated_url) as db:
        ids = _enqueue_dag(db, TASKS, types=("t",) * (9 * WORKERS) + tuple(own))
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"w{i}.json") for i in range(WORKERS)]
    start = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(target=_drain, args=(migrated_url, f"w{i}", outs[i], start, [own[i], "t"]))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS, "a worker crashed (see its stderr)"
    completed = [item for out in outs for item in json.loads(Path(out).read_text())]
    assert len(completed) == TASKS
    assert {c["id"] for c in completed} == {str(i) for i in ids}  # each exactly once
    assert all(c["attempts"] == 1 for c in completed)  # never claimed twice
    # The work was shared: every worker did its own tasks, whatever the lock gave it besides.
    assert all(json.loads(Path(o).read_text()) for o in outs)
    with dualdb.connect(migrated_url) as db:
        assert db.tasks.counts()["Complete"] == TASKS
        every = {t.id: t for t in db.tasks.iter(batch_size=1000)}
    for task in every.values():
        assert task.worker_id is not None and task.output_location == f"out/{task.id}"
        for dep in task.dependant_on:
            done_at = every[dep].updated_at
            assert task.generation_started_at is not None and done_at is not None
            assert task.generation_started_at >= done_at, f"{task.id} started before {dep}"


def _worker(
    url: str, handler: str, *extra: str, seconds: str = "2", signal_log: Path | None = None
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        # This checkout's code first, not whatever dualdb the interpreter has installed (an
        # editable install of another worktree would run that tree's code and migrations).
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "DUALDB_TEST_HANDLER_SECONDS": seconds,
        **({"DUALDB_TEST_SIGNAL_LOG": str(signal_log)} if signal_log else {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dualdb", "worker", "--url", url, "--handler", handler, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_killed_worker_task_is_recovered_by_another(migrated_url: str) -> None:
    with dualdb.connect(migrated_url) as db:
        project = db.projects.create("Kill", db.users.create().id)
        task = db.tasks.enqueue(project.id, "single_image", {})
        victim = _worker(
            migrated_url,
            "tests.integration.queue_handlers:slow",
            "--heartbeat",
            "0.2",
            "--worker-id",
            "victim",
            seconds="60",
        )
        try:
            _wait_for(lambda: db.tasks.get(task.id).status == "In Progress")
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            victim.kill()
            victim.communicate()
        assert db.tasks.get(task.id).worker_id == "victim"
        assert db.tasks.requeue_stale(timedelta(seconds=5)) == []  # heartbeat still recent
        time.sleep(1.0)
        recovered = db.tasks.requeue_stale(timedelta(seconds=0.8))
        assert [r.id for r in recovered] == [task.id]
        rescuer = _worker(
            migrated_url,
            "tests.integration.queue_handlers:fast",
            "--drain",
            "--worker-id",
            "rescuer",
        )
        _out, err = rescuer.communicate(timeout=60)
        assert rescuer.returncode == 0, err
        final = db.tasks.get(task.id)
        assert (final.status, final.worker_id, final.attempts) == ("Complete", "rescuer", 2)


def test_sigterm_finishes_the_current_task_then_stops(migrated_url: str) -> None:
    with dualdb.connect(migrated_url) as db:
        project = db.projects.create("Term", db.users.create().id)
        first = db.tasks.enqueue(project.id, "single_image", {})
        second = db.tasks.enqueue(project.id, "single_image", {})
        worker = _worker(migrated_url, "tests.integration.queue_handlers:slow", seconds="1.5")
        try:
            _wait_for(lambda: db.tasks.get(first.id).status == "In Progress")
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=30)
        finally:
            worker.kill()
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        assert db.tasks.get(first.id).status == "Complete"
        assert db.tasks.get(second.id).status == "Queued"  # not started after the signal


def test_second_signal_releases_the_current_task(migrated_url: str, tmp_path: Path) -> None:
    log = tmp_path / "signals"

    def taken() -> list[str]:
        return log.read_text().split() if log.exists() else []

    with dualdb.connect(migrated_url) as db:
        project = db.projects.create("Twice", db.users.create().id)
        task = db.tasks.enqueue(project.id, "single_image", {})
        worker = _worker(
            migrated_url,
            "tests.integration.queue_handlers:slow_reporting_signals",
            seconds="60",
            signal_log=log,
        )
        try:
            _wait_for(lambda: taken() == ["ready"])  # the handler runs the task
            worker.send_signal(signal.SIGINT)
            _wait_for(lambda: taken() == ["ready", "SIGINT"])  # the worker took the first
            assert db.tasks.get(task.id).status == "In Progress", "one signal keeps the task"
            worker.send_signal(signal.SIGINT)
            _out, err = worker.communicate(timeout=30)
        finally:
            worker.kill()
        assert worker.returncode == 0, err
        back = db.tasks.get(task.id)
        assert (back.status, back.attempts, back.worker_id) == ("Queued", 0, None)


def test_failing_handler_retries_then_fails(migrated_url: str) -> None:
    with dualdb.connect(migrated_url) as db:
        project = db.projects.create("Broken", db.users.create().id)
        task = db.tasks.enqueue(project.id, "single_image", {})
        child = db.tasks.enqueue(project.id, "travel_stitch", {}, depends_on=[task.id])
        worker = _worker(migrated_url, "tests.integration.queue_handlers:broken", "--drain")
        _out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        failed = db.tasks.get(task.id)
        assert (failed.status, failed.attempts) == ("Failed", 3)
        assert failed.error == "RuntimeError: model crashed on single_image"
        assert db.tasks.get(child.id).status == "Cancelled"


@pytest.mark.parametrize("spec", ["nomodule:fn", "dualdb.worker:nothing", "justtext"])
def test_bad_handler_is_one_clear_line(migrated_url: str, spec: str) -> None:
    worker = _worker(migrated_url, spec, "--drain")
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 1
    assert err.strip().startswith("error: handler:")
    assert len(err.strip().splitlines()) == 1
