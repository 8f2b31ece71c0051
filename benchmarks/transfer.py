"""G: ``dualdb copy`` of many tasks from a SQLite file into the benchmark database.

The source is a SQLite file holding one user, one project and ``n`` Queued tasks.  dualdb's
side is ``dualdb.copy(src, dst)`` (verified at the end, as the command does), run in a fresh
process whose peak RSS growth is measured.  The raw side writes the same task rows, read
from the same file, with the driver's fastest path: ``executemany`` in one transaction on
SQLite, ``COPY`` in batches of 1,000 on Postgres (refreshing the planner's statistics each
time the rows written double, as dualdb does: without it both sides slow down quadratically,
issue 14's finding).  Both fire the same row triggers.
"""

from __future__ import annotations

import json
import resource
import sqlite3
import statistics
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import dualdb
from benchmarks.bulk import _rss_now_kb
from benchmarks.data import Loader
from benchmarks.measure import in_child
from benchmarks.targets import psycopg_dsn, sqlite_path
from dualdb import migrations
from dualdb.config import resolve

#: Tasks per ``create_many`` while building the source file.
_SOURCE_CHUNK = 5_000
#: Rows per raw ``COPY`` on Postgres (dualdb's default batch).
_RAW_BATCH = 1_000


@dataclass(frozen=True)
class CopyRun:
    """Tasks/s of one copy of ``rows`` tasks by each side, and dualdb's peak RSS growth."""

    rows: int
    dualdb: float
    raw: float
    rss_growth_mb: float


def build_source(folder: Path, n: int) -> tuple[str, uuid.UUID, uuid.UUID]:
    """A migrated SQLite file with one user, one project and ``n`` Queued tasks."""
    url = f"sqlite:///{folder / 'source.db'}"
    migrations.upgrade(resolve(url))
    with dualdb.connect(url) as src:
        user = src.users.create(email="copy-bench@example.invalid")
        project = src.projects.create("copy bench", user.id)
        for start in range(0, n, _SOURCE_CHUNK):
            src.tasks.create_many(
                [
                    {
                        "project_id": project.id,
                        "task_type": "bench",
                        "params": {"n": i, "prompt": f"a lighthouse at dawn, take {i}"},
                    }
                    for i in range(start, min(n, start + _SOURCE_CHUNK))
                ]
            )
    return url, user.id, project.id


def _copy_child(src_url: str, dst_url: str, results: Any) -> None:  # pragma: no cover - child
    try:
        with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
            before = _rss_now_kb()
            start = time.perf_counter()
            result = dualdb.copy(src, dst, allow_remote=True)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if not result.verified:
            raise RuntimeError("the copy was not verified")
        results.put(("ok", seconds, max(0, peak - before) / 1024))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _dualdb_copy(src_url: str, dst_url: str) -> tuple[float, float]:
    outcome = in_child(_copy_child, (src_url, dst_url), "dualdb copy", 3600)
    return float(outcome[1]), float(outcome[2])


def _source_tasks(src_url: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with sqlite3.connect(sqlite_path(src_url)) as lite:
        columns = [str(r[1]) for r in lite.execute("PRAGMA table_info(tasks)")]
        rows = lite.execute(f"SELECT {', '.join(columns)} FROM tasks ORDER BY id").fetchall()
    return columns, rows


def _raw_copy(src_url: str, dst_url: str, backend: str) -> float:
    """Seconds the raw driver takes to write the source's tasks (read outside the timing)."""
    columns, rows = _source_tasks(src_url)
    names = ", ".join(columns)
    if backend == "sqlite":
        dst = sqlite3.connect(sqlite_path(dst_url), timeout=30, isolation_level=None)
        try:
            dst.execute("PRAGMA foreign_keys=ON")
            start = time.perf_counter()
            dst.execute("BEGIN IMMEDIATE")
            marks = ", ".join("?" * len(columns))
            dst.executemany(f"INSERT INTO tasks ({names}) VALUES ({marks})", rows)
            dst.execute("COMMIT")
            return time.perf_counter() - start
        finally:
            dst.close()
    deps = columns.index("dependant_on")
    with psycopg.connect(psycopg_dsn(dst_url)) as pg:
        start = time.perf_counter()
        written, refresh_at = 0, 1
        for i in range(0, len(rows), _RAW_BATCH):
            batch = rows[i : i + _RAW_BATCH]
            with pg.cursor() as cur, cur.copy(f"COPY tasks ({names}) FROM STDIN") as copy:
                for row in batch:
                    values = list(row)
                    values[deps] = "{" + ",".join(json.loads(values[deps])) + "}"
                    copy.write_row(values)
            pg.commit()
            written += len(batch)
            if written >= refresh_at:
                pg.execute("ANALYZE tasks")
                pg.execute("ANALYZE task_dependencies")
                pg.commit()
                refresh_at = 2 * written
        return time.perf_counter() - start


def measure_copy(url: str, loader: Loader, backend: str, n: int, reps: int = 3) -> CopyRun:
    """Copy ``n`` tasks from a SQLite file into the database at ``url``: dualdb and raw, each
    ``reps`` times in alternating order; the median of each, and dualdb's largest RSS growth.

    One run of each was too few: the raw side's rate moved by ±20% between runs minutes
    apart, and single pairs gave ratios from 0.53 to 0.72 for the same code.  dualdb's first
    copy also writes the user and the project; the later ones find them there, identical.
    """
    ours: list[float] = []
    theirs: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dualdb-bench-copy-") as folder:
        src_url, _, _ = build_source(Path(folder), n)
        for rep in range(reps):
            for side in ("dualdb", "raw") if rep % 2 == 0 else ("raw", "dualdb"):
                loader.clear_tasks()
                loader.settle()
                if side == "dualdb":
                    # The copied user and project stay: a later run finds them identical,
                    # and the raw side writes only the tasks under them.
                    seconds, rss_mb = _dualdb_copy(src_url, url)
                    ours.append(seconds)
                    rss.append(rss_mb)
                else:
                    theirs.append(_raw_copy(src_url, url, backend))
                if loader.count() != n:
                    raise RuntimeError(f"{side} copied {loader.count()} of {n} tasks")
        loader.clear_tasks()
        loader.settle()
    return CopyRun(n, n / statistics.median(ours), n / statistics.median(theirs), max(rss))
