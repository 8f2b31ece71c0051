"""Bulk work: inserting many tasks (B) and iterating every row of a big table (E).

Bulk insert: ``db.tasks.create_many(rows)`` against the raw driver's ``executemany`` in one
transaction and, on Postgres, ``COPY``; the table is emptied before each run, and each run
inserts the same rows (new ids).  Iteration: ``db.tasks.iter(project_id=…)`` against a raw
keyset scan building the same :class:`~dualdb.records.Task` records, each in a fresh process
whose peak RSS growth is measured (``ru_maxrss`` at the end minus the RSS before the scan, so
memory the process held before counts against the scan, never for it).
"""

from __future__ import annotations

import resource
import statistics
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uuid_utils.compat as uuid_utils

import dualdb
from benchmarks.data import Loader, ready_tasks
from benchmarks.measure import in_child
from benchmarks.raw import BulkRow, RawDriver, open_raw

#: Rows written per ``Loader.insert`` when filling the iteration table (bounds setup memory).
_FILL_CHUNK = 100_000


@dataclass(frozen=True)
class BulkInsert:
    """Rows per second of one batch size, each implementation."""

    rows: int
    dualdb: float
    executemany: float
    copy: float | None


def _params(i: int) -> dict[str, Any]:
    return {"n": i, "prompt": f"a shot of a lighthouse, take {i}", "seed": 1000 + i}


def measure_bulk(
    db: dualdb.Database, raw: RawDriver, loader: Loader, project_id: uuid.UUID, n: int
) -> BulkInsert:
    """Rows/s of inserting ``n`` new Queued tasks (median of 3 runs up to 20,000 rows)."""
    reps = 3 if n <= 20_000 else 1

    def ours() -> Callable[[], object]:
        rows = [
            {"project_id": project_id, "task_type": "bench", "params": _params(i)} for i in range(n)
        ]
        return lambda: db.tasks.create_many(rows)

    def theirs(how: Callable[[list[BulkRow]], None]) -> Callable[[], object]:
        def go() -> None:
            now = datetime.now(UTC)
            # The ids and timestamps a hand-writer makes too: inside the timing.
            how([(uuid_utils.uuid7(), project_id, "bench", _params(i), now) for i in range(n)])

        return go

    impls: dict[str, Callable[[], Callable[[], object]]] = {
        "dualdb": ours,
        "executemany": lambda: theirs(raw.insert_tasks),
    }
    copy = getattr(raw, "copy_tasks", None)
    if copy is not None:
        impls["copy"] = lambda: theirs(copy)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for rep in range(reps):
        order = list(impls) if rep % 2 == 0 else list(reversed(impls))
        for name in order:
            op = impls[name]()  # the rows are built outside the timing (a caller's data)
            loader.clear_tasks()
            loader.settle()
            start = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - start)
            if loader.count() != n:
                raise RuntimeError(f"{name} inserted {loader.count()} of {n} tasks")
    loader.clear_tasks()
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    return BulkInsert(n, rate["dualdb"], rate["executemany"], rate.get("copy"))


@dataclass(frozen=True)
class Iteration:
    """One full scan: rows/s and peak RSS growth (MB) of the process that ran it."""

    impl: str
    rows: int
    seconds: float
    rss_growth_mb: float

    @property
    def rows_per_s(self) -> float:
        """Rows read per second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def fill_for_iteration(loader: Loader, project_id: uuid.UUID, n: int) -> None:
    """Replace every task with ``n`` Queued tasks of ``project_id`` (raw bulk load)."""
    loader.clear_tasks()
    start = datetime.now(UTC) - timedelta(days=30)
    done = 0
    while done < n:
        size = min(_FILL_CHUNK, n - done)
        loader.insert(project_id, ready_tasks(size), start + timedelta(milliseconds=done))
        done += size
    loader.settle()


def _rss_now_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover - not Linux


def _scan(
    impl: str, url: str, project_id: uuid.UUID, results: Any
) -> None:  # pragma: no cover - runs in a child process
    try:
        if impl == "dualdb":
            db = dualdb.connect(url)
            rows: Callable[[], Any] = lambda: db.tasks.iter(project_id=project_id)  # noqa: E731
            close: Callable[[], None] = db.close
        else:
            raw = open_raw(url)
            rows = lambda: raw.scan_tasks(project_id)  # noqa: E731
            close = raw.close
        before = _rss_now_kb()
        start = time.perf_counter()
        count = 0
        for _ in rows():
            count += 1
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        close()
        results.put(("ok", count, seconds, max(0, peak - before) / 1024))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def measure_iteration(url: str, project_id: uuid.UUID, impl: str) -> Iteration:
    """Scan every task of ``project_id`` with ``impl`` in a fresh process."""
    outcome = in_child(_scan, (impl, url, project_id), f"{impl} iteration", 1800)
    return Iteration(impl, int(outcome[1]), float(outcome[2]), float(outcome[3]))
