"""One benchmark run: set up each backend, measure dualdb and the raw driver, collect results."""

from __future__ import annotations

import os
import platform
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import uuid_utils.compat as uuid_utils

import dualdb
from benchmarks.config import BenchConfig
from benchmarks.data import Loader, blocked_tasks, finished_tasks, ready_tasks
from benchmarks.measure import (
    WARMUP_CLAIMS,
    measure_claims,
    measure_get,
    measure_throughput,
    measure_writes,
)
from benchmarks.measure import plan_summary as summarize_plan
from benchmarks.raw import RawDriver, open_raw
from benchmarks.targets import (
    backend_of,
    postgres_database,
    psycopg_dsn,
    sqlite_database,
    without_commit_flush,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Comparison:
    """One measurement, dualdb against the raw driver."""

    metric: str
    unit: str
    dualdb: float
    raw: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        """dualdb / raw, in the measurement's own unit."""
        return self.dualdb / self.raw if self.raw else float("inf")

    @property
    def cost(self) -> float:
        """How many times the raw driver's cost dualdb pays (> 1 is slower)."""
        return 1 / self.ratio if self.higher_is_better else self.ratio


@dataclass(frozen=True)
class ClaimScenario:
    """Claim latency with one table shape."""

    name: str
    finished: int
    blocked: int
    ready: int
    dualdb_us: float
    raw_us: float
    dualdb_p90_us: float
    raw_p90_us: float
    plan: list[str]

    @property
    def plan_summary(self) -> str:
        """The access paths of dualdb's claim statement."""
        return summarize_plan(self.plan)


@dataclass
class BackendResult:
    """Everything measured on one backend."""

    backend: str
    comparisons: list[Comparison] = field(default_factory=list)
    scenarios: list[ClaimScenario] = field(default_factory=list)
    seconds: float = 0.0
    server: str = ""

    def scenario(self, name: str) -> ClaimScenario:
        """The claim scenario called ``name``."""
        return next(s for s in self.scenarios if s.name == name)


@dataclass
class BenchResult:
    """A whole run."""

    started_at: str
    config: BenchConfig
    backends: list[BackendResult] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict, ratios included."""
        out: dict[str, Any] = {
            "started_at": self.started_at,
            "config": asdict(self.config),
            "environment": self.environment,
            "backends": [],
        }
        for b in self.backends:
            small = b.scenario("small") if any(s.name == "small" for s in b.scenarios) else None
            out["backends"].append(
                {
                    "backend": b.backend,
                    "server": b.server,
                    "seconds": round(b.seconds, 1),
                    "comparisons": [
                        {**asdict(c), "ratio": c.ratio, "cost": c.cost} for c in b.comparisons
                    ],
                    "claim_scenarios": [
                        {
                            **asdict(s),
                            "plan_summary": s.plan_summary,
                            "dualdb_vs_small": s.dualdb_us / small.dualdb_us if small else None,
                            "raw_vs_small": s.raw_us / small.raw_us if small else None,
                            "dualdb_vs_raw": s.dualdb_us / s.raw_us,
                        }
                        for s in b.scenarios
                    ],
                }
            )
        return out


def _seed_throughput(db: dualdb.Database, project_id: uuid.UUID, n: int) -> None:
    """``n`` ready-to-drain tasks; every second one depends on the one before it."""
    rows: list[dict[str, Any]] = []
    prev: uuid.UUID | None = None
    for i in range(n):
        key = uuid_utils.uuid7()
        rows.append(
            {
                "id": key,
                "project_id": project_id,
                "task_type": "bench",
                "params": {"n": i},
                "depends_on": [prev] if i % 2 == 1 and prev is not None else [],
            }
        )
        prev = key
    for chunk in range(0, n, 5000):
        db.tasks.create_many(rows[chunk : chunk + 5000])


def _seed_ready(db: dualdb.Database, project_id: uuid.UUID, n: int) -> None:
    db.tasks.create_many(
        [{"project_id": project_id, "task_type": "bench", "params": {}} for _ in range(n)]
    )


#: The table shapes of the claim-cost measurement, compared with "small".
SCENARIOS = ("small", "finished", "unvacuumed", "blocked")


def _claim_scenario(
    name: str,
    db: dualdb.Database,
    raw: RawDriver,
    loader: Loader,
    project_id: uuid.UUID,
    cfg: BenchConfig,
    progress: Progress,
) -> ClaimScenario:
    """Build one table shape from scratch, then measure claims on it.

    ``small``: ``cfg.small`` finished tasks.  ``finished``: ``cfg.large`` finished tasks,
    inserted finished.  ``unvacuumed``: ``cfg.large`` tasks that were ready and were then
    finished by an ``UPDATE``, with no VACUUM since (what a busy queue looks like between two
    autovacuum runs).  ``blocked``: ``cfg.small`` finished plus ``cfg.blocked`` tasks waiting
    on unfinished work.  Finished and blocked tasks are all older than the ready ones: a claim
    that walked rows in age order would meet every one of them first.
    """
    finished = cfg.large if name in ("finished", "unvacuumed") else cfg.small
    blocked = cfg.blocked if name == "blocked" else 0
    progress(f"{loader.backend}: claim cost, {name} ({finished} finished, {blocked} blocked)")
    ready = 2 * (cfg.claims + WARMUP_CLAIMS) + 10
    now = datetime.now(UTC)
    loader.clear_tasks()
    if name == "unvacuumed":
        loader.insert(project_id, ready_tasks(finished), now - timedelta(days=3))
        loader.settle()
        loader.autovacuum(False)
        if loader.finish_ready() != finished:
            raise RuntimeError("could not finish the bulk-loaded ready tasks")
    else:
        loader.insert(
            project_id, finished_tasks(finished, cfg.chain_length), now - timedelta(days=3)
        )
    if blocked:
        loader.insert(
            project_id,
            blocked_tasks(blocked, cfg.chain_length, cfg.fan_in),
            now - timedelta(days=2),
        )
    try:
        _seed_ready(db, project_id, ready)
        loader.settle(vacuum=name != "unvacuumed")
        wrong = loader.readiness_mismatches()
        if wrong:
            raise RuntimeError(f"bulk setup left {wrong} inconsistent readiness counters")
        latency = measure_claims(db, raw, cfg.claims)
    finally:
        if name == "unvacuumed":
            loader.autovacuum(True)
    return ClaimScenario(
        name,
        finished,
        blocked,
        ready,
        latency.dualdb_us,
        latency.raw_us,
        latency.dualdb_p90_us,
        latency.raw_p90_us,
        latency.plan,
    )


def run_backend(url: str, cfg: BenchConfig, progress: Progress = lambda _: None) -> BackendResult:
    """Measure dualdb and the raw driver on the migrated, empty database at ``url``."""
    began = time.perf_counter()
    backend = backend_of(url)
    result = BackendResult(backend)
    with ExitStack() as stack:
        db = stack.enter_context(dualdb.connect(url))
        raw = open_raw(url)
        stack.callback(raw.close)
        loader = Loader(url)
        stack.callback(loader.close)
        result.server = _server_version(url, backend)

        progress(f"{backend}: get by id")
        owner = db.users.create(email="bench@example.invalid")
        projects = db.projects.create_many(
            [{"name": f"bench {i}", "user_id": owner.id} for i in range(max(1, cfg.projects))]
        )
        project_id = projects[0].id
        ids = [p.id for p in projects]
        random.Random(42).shuffle(ids)
        ours, theirs = measure_get(db, raw, ids, cfg.get_ops, cfg.rounds)
        result.comparisons.append(Comparison("get by id", "µs/op", ours, theirs, False))
        progress(f"{backend}: create and update")
        for name, (ours, theirs) in measure_writes(
            db, raw, owner.id, ids, cfg.get_ops, cfg.rounds
        ).items():
            result.comparisons.append(Comparison(name, "µs/op", ours, theirs, False))

        for procs in cfg.procs:
            measured: dict[str, float] = {}
            impls = ("dualdb", "raw") if procs % 2 else ("raw", "dualdb")
            for impl in impls:
                progress(f"{backend}: claim→complete, {impl}, {procs} process(es)")
                loader.clear_tasks()
                _seed_throughput(db, project_id, cfg.tasks)
                loader.settle()
                run = measure_throughput(impl, url, procs)
                left = loader.count("status <> 'Complete'")
                if run.completed != cfg.tasks or left:
                    raise RuntimeError(
                        f"{impl} with {procs} processes completed {run.completed} of "
                        f"{cfg.tasks} tasks ({left} not Complete)"
                    )
                measured[impl] = run.tasks_per_s
            noun = "process" if procs == 1 else "processes"
            result.comparisons.append(
                Comparison(
                    f"claim→complete, {procs} {noun}",
                    "tasks/s",
                    measured["dualdb"],
                    measured["raw"],
                    True,
                )
            )

        # Claim cost: new sessions that do not wait for the WAL flush (see without_commit_flush).
        claims_url = without_commit_flush(url)
        cdb = stack.enter_context(dualdb.connect(claims_url))
        craw = open_raw(claims_url)
        stack.callback(craw.close)
        for name in SCENARIOS:
            result.scenarios.append(
                _claim_scenario(name, cdb, craw, loader, project_id, cfg, progress)
            )
    result.seconds = time.perf_counter() - began
    return result


def _server_version(url: str, backend: str) -> str:
    if backend == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with psycopg.connect(psycopg_dsn(url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    version = row[0] if row else "?"
    return f"PostgreSQL {version} (fsync {fsync[0] if fsync else '?'})"


@contextmanager
def benchmark_database(backend: str, pg_admin_url: str) -> Iterator[str]:
    """A throwaway, migrated database for ``backend``; yields its URL."""
    if backend == "sqlite":
        with sqlite_database() as url:
            yield url
    else:
        with postgres_database(pg_admin_url) as url:
            yield url


def run(
    cfg: BenchConfig, backends: list[str], pg_admin_url: str, progress: Progress = lambda _: None
) -> BenchResult:
    """The whole benchmark on each of ``backends``, each in its own throwaway database."""
    result = BenchResult(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config=cfg,
        environment={
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": str(_cpus()),
            "dualdb": dualdb.__version__,
            "psycopg": psycopg.__version__,
        },
    )
    for backend in backends:
        progress(f"{backend}: creating and migrating a throwaway database")
        with benchmark_database(backend, pg_admin_url) as url:
            result.backends.append(run_backend(url, cfg, progress))
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
