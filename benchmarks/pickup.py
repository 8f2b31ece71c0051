"""Enqueue → pickup latency of the stock ``dualdb worker`` (F), and its CPU use while idle.

The worker runs as users run it — ``python -m dualdb worker --url …`` with every other option
at its default — with the demo handler made instant (``DUALDB_DEMO_SECONDS=0``).  Tasks are
enqueued one at a time; a pickup is the time from just before ``enqueue`` to the task's
``generation_started_at`` (set by the claim, in the database's clock, which is this machine's).
``tests/integration/test_worker_pickup.py`` uses the same helpers with a 30 s poll interval.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dualdb

ROOT = Path(__file__).resolve().parents[1]
#: What the worker logs once it waits on change (LISTEN on Postgres, data_version on SQLite).
WAITING_LINES = ("LISTEN dualdb_tasks", "PRAGMA data_version")


def until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.002) -> None:
    """Wait for observable state, with a deadline (checks every ``every`` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, window_s: float) -> float:
    """The share of one core process ``pid`` used over the next ``window_s`` seconds."""
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)  # a measuring window, not synchronisation
    return (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)


@contextmanager
def worker_process(
    url: str, log: Path, args: Sequence[str] = (), waiting: Sequence[str] = WAITING_LINES
) -> Iterator[subprocess.Popen[str]]:
    """``dualdb worker --url url *args`` (this checkout's code) logging to ``log``, yielded
    once its log shows one of ``waiting``; stopped (SIGTERM) afterwards."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "PYTHONUNBUFFERED": "1",
        "DUALDB_DEMO_SECONDS": "0",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dualdb", "worker", "--url", url, *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        until(
            lambda: proc.poll() is not None or any(w in log.read_text() for w in waiting),
            60,
            "the worker to wait for work",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text()}")
        yield proc
    finally:
        stop(proc, 30)


def stop(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def pickup_latencies(db: dualdb.Database, project_id: uuid.UUID, n: int) -> list[float]:
    """Enqueue ``n`` tasks one at a time, each once the previous one is Complete; seconds from
    before each ``enqueue`` to its claim (``generation_started_at``)."""
    latencies: list[float] = []
    for i in range(n):
        before = datetime.now(UTC)
        task = db.tasks.enqueue(project_id, "single_image", {"i": i})
        key = task.id
        until(lambda: db.tasks.get(key).status == "Complete", 30, f"task {i} to complete")  # noqa: B023
        started = db.tasks.get(task.id).generation_started_at
        assert started is not None
        latencies.append((started - before).total_seconds())
    return latencies


@dataclass(frozen=True)
class Pickup:
    """Pickup latencies (ms) of the stock worker, and its idle CPU share."""

    latencies_ms: list[float]
    idle_cpu: float

    @property
    def median_ms(self) -> float:
        """The median pickup."""
        return statistics.median(self.latencies_ms)


def measure_pickup(
    url: str, db: dualdb.Database, project_id: uuid.UUID, n: int, log: Path, idle_s: float
) -> Pickup:
    """The stock worker's pickup of ``n`` tasks (after one warm-up), then ``idle_s`` idle."""
    with worker_process(url, log) as proc:
        pickup_latencies(db, project_id, 1)  # warm-up: the worker's first claim and handler
        latencies = pickup_latencies(db, project_id, n)
        idle = idle_cpu(proc.pid, idle_s)
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text()}")
    return Pickup([s * 1000 for s in latencies], idle)
