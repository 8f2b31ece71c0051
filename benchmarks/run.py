"""One benchmark run: set up each backend, measure dualdb and the raw driver, collect results."""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
import uuid_utils.compat as uuid_utils
from sqlalchemy.engine import make_url

import dualdb
from benchmarks import goals
from benchmarks.bulk import fill_for_iteration, measure_bulk, measure_iteration
from benchmarks.config import BenchConfig
from benchmarks.data import Loader, blocked_tasks, finished_tasks, ready_tasks
from benchmarks.goals import Target
from benchmarks.measure import (
    WARMUP_CLAIMS,
    ClaimLatency,
    measure_claims,
    measure_get,
    measure_throughput,
    measure_writes,
)
from benchmarks.measure import plan_summary as summarize_plan
from benchmarks.pickup import measure_pickup
from benchmarks.raw import RawDriver, open_raw
from benchmarks.targets import (
    backend_of,
    postgres_database,
    psycopg_dsn,
    sqlite_database,
    without_commit_flush,
)
from benchmarks.transfer import measure_copy

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Comparison:
    """One measurement, dualdb against the raw driver."""

    metric: str
    unit: str
    dualdb: float
    #: The raw driver's figure; None for what has no raw counterpart (pickup, idle CPU).
    raw: float | None
    higher_is_better: bool
    target: Target | None = None
    #: Anything else the row must say (a duplicate count, what "raw" is).
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """dualdb / raw, in the measurement's own unit."""
        if self.raw is None:
            return None
        return self.dualdb / self.raw if self.raw else float("inf")

    @property
    def cost(self) -> float | None:
        """How many times the raw driver's cost dualdb pays (> 1 is slower)."""
        ratio = self.ratio
        if ratio is None:
            return None
        return 1 / ratio if self.higher_is_better else ratio

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None without a target)."""
        if self.target is None:
            return None
        value = self.ratio if self.target.of == "ratio" else self.dualdb
        return None if value is None else self.target.met(value)


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
    #: dualdb's and raw's µs per claim on the small table, measured together with this
    #: shape (None: the small table itself, or a result without them).
    small_dualdb_us: float | None = None
    small_raw_us: float | None = None

    @property
    def plan_summary(self) -> str:
        """The access paths of dualdb's claim statement."""
        return summarize_plan(self.plan)

    @property
    def target(self) -> Target | None:
        """D's target, on this shape's µs ÷ the small table's: for the shapes issue 13 names,
        many finished and many blocked.  None for the small table (the reference) and for the
        finished table before VACUUM, which is context: its dead index entries cost the raw
        statement the same (docs/benchmarks.md), and nothing but VACUUM removes them."""
        return goals.CLAIM_SHAPE if self.name in goals.CLAIM_SHAPES else None


@dataclass(frozen=True)
class ThroughputPoint:
    """claim→complete with ``procs`` processes, both implementations (tasks/s)."""

    procs: int
    dualdb: float
    raw: float
    duplicates: int


@dataclass
class BackendResult:
    """Everything measured on one backend."""

    backend: str
    comparisons: list[Comparison] = field(default_factory=list)
    scenarios: list[ClaimScenario] = field(default_factory=list)
    throughput: list[ThroughputPoint] = field(default_factory=list)
    pickup_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server: str = ""

    def scenario(self, name: str) -> ClaimScenario:
        """The claim scenario called ``name``."""
        return next(s for s in self.scenarios if s.name == name)

    def vs_small(self, scenario: ClaimScenario) -> tuple[float, float] | None:
        """dualdb's and raw's µs on ``scenario`` ÷ theirs on the small table: the small table
        measured together with it, else the small table's row (None without either)."""
        if scenario.small_dualdb_us is not None and scenario.small_raw_us is not None:
            return (
                scenario.dualdb_us / scenario.small_dualdb_us,
                scenario.raw_us / scenario.small_raw_us,
            )
        small = next((s for s in self.scenarios if s.name == "small"), None)
        if small is None:
            return None
        return scenario.dualdb_us / small.dualdb_us, scenario.raw_us / small.raw_us

    def scenario_met(self, scenario: ClaimScenario) -> bool | None:
        """D's verdict on one shape (None without a target, or without the small table)."""
        ratios = self.vs_small(scenario)
        if scenario.target is None or ratios is None:
            return None
        return scenario.target.met(ratios[0])

    def missed(self) -> list[str]:
        """Every measurement of this backend that missed its target, D's shapes included."""
        names = [c.metric for c in self.comparisons if c.met is False] + [
            f"claim cost, {s.name}" for s in self.scenarios if self.scenario_met(s) is False
        ]
        return [f"{self.backend} {name}" for name in names]


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
            out["backends"].append(
                {
                    "backend": b.backend,
                    "server": b.server,
                    "seconds": round(b.seconds, 1),
                    "comparisons": [
                        {
                            **asdict(c),
                            "target": c.target.text if c.target else None,
                            "met": c.met,
                            "ratio": c.ratio,
                            "cost": c.cost,
                        }
                        for c in b.comparisons
                    ],
                    "throughput": [asdict(t) for t in b.throughput],
                    "pickup_ms": b.pickup_ms,
                    "claim_scenarios": [
                        {
                            **asdict(s),
                            "plan_summary": s.plan_summary,
                            "dualdb_vs_small": (b.vs_small(s) or (None, None))[0],
                            "raw_vs_small": (b.vs_small(s) or (None, None))[1],
                            "dualdb_vs_raw": s.dualdb_us / s.raw_us,
                            "met": b.scenario_met(s),
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


@dataclass(frozen=True)
class _Table:
    """One database of the claim-cost measurement: dualdb, the raw driver, setup, a project."""

    db: dualdb.Database
    raw: RawDriver
    loader: Loader
    project_id: uuid.UUID


def _build_shape(name: str, table: _Table, cfg: BenchConfig, progress: Progress) -> int:
    """Empty ``table``'s tasks and build the shape ``name`` from scratch; its ready tasks.

    ``small``: ``cfg.small`` finished tasks.  ``finished``: ``cfg.large`` finished tasks,
    inserted finished.  ``unvacuumed``: ``cfg.large`` tasks that were ready and were then
    finished by an ``UPDATE``, with no VACUUM since (what a busy queue looks like between two
    autovacuum runs; autovacuum stays off until :func:`_claim_scenario` turns it back on).
    ``blocked``: ``cfg.small`` finished plus ``cfg.blocked`` tasks waiting on unfinished
    work.  Finished and blocked tasks are all older than the ready ones: a claim that walked
    rows in age order would meet every one of them first.
    """
    finished = cfg.large if name in ("finished", "unvacuumed") else cfg.small
    blocked = cfg.blocked if name == "blocked" else 0
    if name != "small":
        progress(f"{table.loader.backend}: claim cost, {name} ({finished} finished, {blocked} "
                 "blocked), with the small table")  # fmt: skip
    ready = 2 * (cfg.claims + WARMUP_CLAIMS) + 10
    now = datetime.now(UTC)
    loader = table.loader
    loader.clear_tasks()
    if name == "unvacuumed":
        loader.insert(table.project_id, ready_tasks(finished), now - timedelta(days=3))
        loader.settle()
        loader.autovacuum(False)
        if loader.finish_ready() != finished:
            raise RuntimeError("could not finish the bulk-loaded ready tasks")
    else:
        loader.insert(
            table.project_id, finished_tasks(finished, cfg.chain_length), now - timedelta(days=3)
        )
    if blocked:
        loader.insert(
            table.project_id,
            blocked_tasks(blocked, cfg.chain_length, cfg.fan_in),
            now - timedelta(days=2),
        )
    _seed_ready(table.db, table.project_id, ready)
    loader.settle(vacuum=name != "unvacuumed")
    wrong = loader.readiness_mismatches()
    if wrong:
        raise RuntimeError(f"bulk setup left {wrong} inconsistent readiness counters")
    return ready


def _claim_scenario(
    name: str, table: _Table, small: _Table, cfg: BenchConfig, progress: Progress
) -> tuple[ClaimScenario, ClaimScenario]:
    """The shape ``name`` built in ``table`` and a fresh small table in ``small``, their
    claims measured together (:func:`~benchmarks.measure.measure_claims`): the shape's
    result (with the small table's figures beside it), and the small table's."""
    try:
        ready = _build_shape(name, table, cfg, progress)
        small_ready = _build_shape("small", small, cfg, progress)
        reference, latency = measure_claims(
            (small.db, small.raw), (table.db, table.raw), cfg.claims
        )
    finally:
        if name == "unvacuumed":
            table.loader.autovacuum(True)

    def scenario(shape: str, tasks_ready: int, of: ClaimLatency) -> ClaimScenario:
        finished = cfg.large if shape in ("finished", "unvacuumed") else cfg.small
        blocked = cfg.blocked if shape == "blocked" else 0
        return ClaimScenario(
            shape, finished, blocked, tasks_ready, of.dualdb_us, of.raw_us, of.dualdb_p90_us,
            of.raw_p90_us, of.plan,
        )  # fmt: skip

    measured = dataclasses.replace(
        scenario(name, ready, latency),
        small_dualdb_us=reference.dualdb_us,
        small_raw_us=reference.raw_us,
    )
    return measured, scenario("small", small_ready, reference)


def _small_row(measured: list[ClaimScenario]) -> ClaimScenario:
    """The small table's row: the median of its figures over the shapes it was measured with."""
    first = measured[0]
    return dataclasses.replace(
        first,
        dualdb_us=statistics.median(s.dualdb_us for s in measured),
        raw_us=statistics.median(s.raw_us for s in measured),
        dualdb_p90_us=statistics.median(s.dualdb_p90_us for s in measured),
        raw_p90_us=statistics.median(s.raw_p90_us for s in measured),
    )


def run_backend(
    url: str,
    cfg: BenchConfig,
    progress: Progress = lambda _: None,
    pg_admin_url: str | None = None,
) -> BackendResult:
    """Measure dualdb and the raw driver on the migrated, empty database at ``url``.

    D's small table gets a database of its own, made through ``pg_admin_url`` on Postgres
    (by default, ``url``'s server and role).
    """
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

        progress(f"{backend}: setup")
        owner = db.users.create(email="bench@example.invalid")
        projects = db.projects.create_many(
            [{"name": f"bench {i}", "user_id": owner.id} for i in range(max(50, cfg.projects))]
        )
        project_id = projects[0].id
        ids = [p.id for p in projects]
        random.Random(42).shuffle(ids)
        if "A" in cfg.only:
            progress(f"{backend}: A, single-row get/create/update/delete/list(50)")
            ours, theirs = measure_get(db, raw, ids, cfg.get_ops, cfg.rounds)
            single = goals.SINGLE_ROW
            result.comparisons.append(Comparison("get by id", "µs/op", ours, theirs, False, single))
            # SQLite: every round starts from a checkpointed WAL (see measure_writes).
            settle = loader.settle if backend == "sqlite" else None
            for name, (ours, theirs) in measure_writes(
                db, raw, owner.id, ids, cfg.get_ops, cfg.rounds, settle
            ).items():
                result.comparisons.append(Comparison(name, "µs/op", ours, theirs, False, single))

        if "B" in cfg.only:
            for n in cfg.bulk:
                progress(f"{backend}: B, bulk insert of {n} tasks")
                bulk = measure_bulk(db, raw, loader, project_id, n)
                sqlite = backend == "sqlite"
                result.comparisons.append(
                    Comparison(
                        f"create_many {n:,} tasks",
                        "rows/s",
                        bulk.dualdb,
                        bulk.executemany,
                        True,
                        goals.BULK_SQLITE if sqlite else None,
                        "raw = executemany",
                    )
                )
                if bulk.copy is not None:
                    result.comparisons.append(
                        Comparison(
                            f"create_many {n:,} tasks",
                            "rows/s",
                            bulk.dualdb,
                            bulk.copy,
                            True,
                            goals.BULK_COPY,
                            "raw = COPY",
                        )
                    )

        if "C" in cfg.only:
            for procs in cfg.procs:
                runs: dict[str, list[float]] = {"dualdb": [], "raw": []}
                duplicates = 0
                for drain in range(cfg.drains):
                    # Alternate which implementation goes first, run to run.
                    first = ("dualdb", "raw") if (procs + drain) % 2 else ("raw", "dualdb")
                    for impl in first:
                        progress(
                            f"{backend}: C, claim→complete, {impl}, {procs} process(es), "
                            f"run {drain + 1} of {cfg.drains}"
                        )
                        loader.clear_tasks()

                        def fill() -> None:
                            _seed_throughput(db, project_id, cfg.tasks)
                            loader.settle()

                        run = measure_throughput(impl, url, procs, fill)
                        left = loader.count("status <> 'Complete'")
                        reclaimed = loader.count("attempts <> 1")
                        if run.completed != cfg.tasks or left:
                            raise RuntimeError(
                                f"{impl} with {procs} processes completed {run.completed} of "
                                f"{cfg.tasks} tasks ({left} not Complete)"
                            )
                        if impl == "dualdb":
                            duplicates += run.duplicates + reclaimed
                        elif run.duplicates + reclaimed:
                            raise RuntimeError(f"the raw claim ran {run.duplicates} tasks twice")
                        runs[impl].append(run.tasks_per_s)
                measured = {impl: statistics.median(values) for impl, values in runs.items()}
                noun = "process" if procs == 1 else "processes"
                result.throughput.append(
                    ThroughputPoint(procs, measured["dualdb"], measured["raw"], duplicates)
                )
                result.comparisons.append(
                    Comparison(
                        f"claim→complete, {procs} {noun}",
                        "tasks/s",
                        measured["dualdb"],
                        measured["raw"],
                        True,
                        goals.THROUGHPUT if procs in goals.THROUGHPUT_PROCS else None,
                        f"{duplicates} duplicates",
                    )
                )
                if duplicates:
                    raise RuntimeError(
                        f"dualdb ran {duplicates} tasks twice with {procs} processes"
                    )

        if "E" in cfg.only:
            progress(f"{backend}: E, filling {cfg.iter_rows:,} rows to iterate")
            fill_for_iteration(loader, project_id, cfg.iter_rows)
            scans = {}
            for impl in ("raw", "dualdb"):
                progress(f"{backend}: E, iterating {cfg.iter_rows:,} rows, {impl}")
                scans[impl] = measure_iteration(url, project_id, impl)
                if scans[impl].rows != cfg.iter_rows:
                    raise RuntimeError(f"{impl} iterated {scans[impl].rows} of {cfg.iter_rows}")
            result.comparisons.append(
                Comparison(
                    f"iterate {cfg.iter_rows:,} tasks",
                    "rows/s",
                    scans["dualdb"].rows_per_s,
                    scans["raw"].rows_per_s,
                    True,
                    goals.ITERATION,
                    "raw = keyset pages of 500",
                )
            )
            result.comparisons.append(
                Comparison(
                    f"iterate {cfg.iter_rows:,} tasks: peak RSS growth",
                    "MB",
                    scans["dualdb"].rss_growth_mb,
                    scans["raw"].rss_growth_mb,
                    False,
                    goals.ITERATION_RSS,
                )
            )
            loader.clear_tasks()
            loader.settle()

        if "F" in cfg.only:
            progress(f"{backend}: F, enqueue→pickup by the stock `dualdb worker`")
            with tempfile.TemporaryDirectory(prefix="dualdb-bench-worker-") as folder:
                pickup = measure_pickup(
                    url,
                    db,
                    project_id,
                    cfg.pickups,
                    Path(folder) / "worker.log",
                    idle_s=2.0 if cfg.pickups >= 20 else 1.0,
                )
            result.pickup_ms = pickup.latencies_ms
            result.comparisons.append(
                Comparison(
                    "enqueue→pickup, stock worker (median)",
                    "ms",
                    pickup.median_ms,
                    None,
                    False,
                    goals.PICKUP,
                    f"{len(pickup.latencies_ms)} pickups, max {max(pickup.latencies_ms):.0f} ms",
                )
            )
            result.comparisons.append(
                Comparison(
                    "idle stock worker CPU",
                    "% of a core",
                    pickup.idle_cpu * 100,
                    None,
                    False,
                    goals.IDLE_CPU,
                )
            )

        if "G" in cfg.only:
            progress(f"{backend}: G, dualdb copy of {cfg.copy_rows:,} tasks from a SQLite file")
            copied = measure_copy(url, loader, backend, cfg.copy_rows, cfg.copies)
            sqlite = backend == "sqlite"
            result.comparisons.append(
                Comparison(
                    f"copy {cfg.copy_rows:,} tasks from SQLite",
                    "rows/s",
                    copied.dualdb,
                    copied.raw,
                    True,
                    goals.COPY,
                    "raw = executemany" if sqlite else "raw = COPY",
                )
            )
            result.comparisons.append(
                Comparison(
                    f"copy {cfg.copy_rows:,} tasks: peak RSS growth",
                    "MB",
                    copied.rss_growth_mb,
                    None,
                    False,
                    goals.COPY_RSS,
                )
            )

        if "D" in cfg.only:
            # Claim cost: sessions that do not wait for the WAL flush (see without_commit_flush).
            claims_url = without_commit_flush(url)
            cdb = stack.enter_context(dualdb.connect(claims_url))
            craw = open_raw(claims_url)
            stack.callback(craw.close)
            table = _Table(cdb, craw, loader, project_id)
            # The small table, in a database of its own, measured together with each shape.
            small_url = without_commit_flush(
                stack.enter_context(
                    benchmark_database(backend, pg_admin_url or _admin_url(url, backend))
                )
            )
            sdb = stack.enter_context(dualdb.connect(small_url))
            sraw = open_raw(small_url)
            stack.callback(sraw.close)
            sloader = Loader(small_url)
            stack.callback(sloader.close)
            small_owner = sdb.users.create(email="bench@example.invalid")
            small = _Table(sdb, sraw, sloader, sdb.projects.create("bench", small_owner.id).id)
            smalls: list[ClaimScenario] = []
            for name in SCENARIOS[1:]:
                shape_row, small_row = _claim_scenario(name, table, small, cfg, progress)
                result.scenarios.append(shape_row)
                smalls.append(small_row)
            result.scenarios.insert(0, _small_row(smalls))

    result.seconds = time.perf_counter() - began
    return result


def _admin_url(url: str, backend: str) -> str:
    """A libpq URL of ``url``'s server and role, to make D's second database with."""
    if backend != "postgresql":
        return ""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _server_version(url: str, backend: str) -> str:
    if backend == "sqlite":
        # As dualdb and the raw driver set up their connections.
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"
    with psycopg.connect(psycopg_dsn(url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
        buffers = conn.execute("SHOW shared_buffers").fetchone()
    version = row[0] if row else "?"
    return (
        f"PostgreSQL {version} (fsync {fsync[0] if fsync else '?'}, synchronous_commit "
        f"{sync[0] if sync else '?'}, shared_buffers {buffers[0] if buffers else '?'})"
    )


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
            "SQLAlchemy": sqlalchemy.__version__,
            "psycopg": psycopg.__version__,
            "libpq": str(psycopg.pq.version()),
            "sqlite3 module": sqlite3.sqlite_version,
        },
    )
    for backend in backends:
        progress(f"{backend}: creating and migrating a throwaway database")
        with benchmark_database(backend, pg_admin_url) as url:
            result.backends.append(run_backend(url, cfg, progress, pg_admin_url))
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
