"""The measurements: single-row reads and writes, claim→complete throughput, claim cost.

Every function measures dualdb and the raw driver in the same run, interleaved where it can
be, so noise on a shared machine hits both alike: compare the ratios.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import re
import statistics
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any, TypeVar

import uuid_utils.compat as uuid_utils
from sqlalchemy import event

import dualdb
from benchmarks.raw import RawDriver, RawPostgres, open_raw
from dualdb.records import Task
from dualdb.scope import release_pinned

T = TypeVar("T")

#: How long (seconds) processes may take to start and connect before the run is abandoned.
START_TIMEOUT_S = 180.0
#: How long (seconds) one throughput run may take at most.
RUN_TIMEOUT_S = 1800.0
#: Claims made (untimed) before measuring, to warm caches and prepared statements.
WARMUP_CLAIMS = 5
#: Claims timed in a row on one table before the other's turn (:func:`measure_claims`).
CLAIM_BLOCK = 20


def _median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000.0


# --- single-row get ---------------------------------------------------------------------------


def measure_get(
    db: dualdb.Database, raw: RawDriver, ids: list[uuid.UUID], ops: int, rounds: int
) -> tuple[float, float]:
    """µs per ``get`` for dualdb and raw: the median of ``rounds`` alternating rounds."""
    per_round = max(1, ops // max(1, rounds))
    picks = [ids[i % len(ids)] for i in range(per_round)]
    for key in picks[:20]:  # warm-up: caches, prepared statements
        db.projects.get(key)
        raw.get_project(key)

    def dualdb_round() -> float:
        start = time.perf_counter_ns()
        for key in picks:
            db.projects.get(key)
        return (time.perf_counter_ns() - start) / per_round / 1000.0

    def raw_round() -> float:
        start = time.perf_counter_ns()
        for key in picks:
            if raw.get_project(key) is None:
                raise RuntimeError(f"project {key} not found by the raw driver")
        return (time.perf_counter_ns() - start) / per_round / 1000.0

    ours: list[float] = []
    theirs: list[float] = []
    for r in range(max(1, rounds)):
        if r % 2 == 0:
            ours.append(dualdb_round())
            theirs.append(raw_round())
        else:
            theirs.append(raw_round())
            ours.append(dualdb_round())
    return statistics.median(ours), statistics.median(theirs)


def _alternate(
    mine: Callable[[], object],
    theirs: Callable[[], object],
    per_round: int,
    rounds: int,
    settle: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """µs per call of ``mine`` and ``theirs``: the median of alternating rounds, each after
    ``settle()`` (untimed) where given."""

    def timed(op: Callable[[], object]) -> float:
        if settle is not None:
            settle()
        start = time.perf_counter_ns()
        for _ in range(per_round):
            op()
        return (time.perf_counter_ns() - start) / per_round / 1000.0

    a: list[float] = []
    b: list[float] = []
    for r in range(max(1, rounds)):
        if r % 2 == 0:
            a.append(timed(mine))
            b.append(timed(theirs))
        else:
            b.append(timed(theirs))
            a.append(timed(mine))
    return statistics.median(a), statistics.median(b)


def measure_writes(
    db: dualdb.Database,
    raw: RawDriver,
    owner: uuid.UUID,
    ids: list[uuid.UUID],
    ops: int,
    rounds: int,
    settle: Callable[[], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """µs per single-row ``create``, ``update``, ``delete`` and ``list(50)`` of projects.

    Each: the median of ``rounds`` alternating rounds, each round after ``settle()`` where
    given (SQLite: a WAL checkpoint, so that each side's round meets the same automatic
    checkpoints: SQLite runs one, a few milliseconds, in whichever commit fills the WAL to
    1,000 pages, about every 250 single-row writes here, and 2 or 3 of them in a round of
    one side but not the other moved a ratio by ±0.15).  Creates insert fresh UUIDv7 ids (as
    dualdb makes them); updates rename the projects of ``ids`` in turn; deletes remove projects
    made for it beforehand (untimed); ``list(50)`` reads the first page of ``owner``'s projects.
    """
    per_round = max(1, ops // max(1, rounds))
    serial = iter(range(10**9))
    warmup = 20

    def ours_create() -> None:
        db.projects.create(f"bench c{next(serial)}", owner)

    def raw_create() -> None:
        raw.create_project(uuid_utils.uuid7(), f"bench c{next(serial)}", owner)

    def ours_update() -> None:
        n = next(serial)
        db.projects.update(ids[n % len(ids)], name=f"bench u{n}")

    def raw_update() -> None:
        n = next(serial)
        if raw.update_project(ids[n % len(ids)], f"bench u{n}") is None:
            raise RuntimeError("project not found by the raw driver")

    doomed = per_round * max(1, rounds) + warmup
    made = db.projects.create_many(
        [{"name": f"bench d{i}", "user_id": owner} for i in range(2 * doomed)]
    )
    ours_doomed = iter([p.id for p in made[:doomed]])
    raw_doomed = iter([p.id for p in made[doomed:]])

    def ours_delete() -> None:
        db.projects.delete(next(ours_doomed))

    def raw_delete() -> None:
        if raw.delete_project(next(raw_doomed)) != 1:
            raise RuntimeError("project not deleted by the raw driver")

    def ours_list() -> None:
        if len(db.projects.list(user_id=owner, limit=50).items) != 50:
            raise RuntimeError("dualdb listed fewer than 50 projects")

    def raw_list() -> None:
        if len(raw.list_projects(owner, 50)) != 50:
            raise RuntimeError("the raw driver listed fewer than 50 projects")

    out: dict[str, tuple[float, float]] = {}
    for name, mine, theirs in (
        ("create", ours_create, raw_create),
        ("update", ours_update, raw_update),
        ("delete", ours_delete, raw_delete),
        ("list(50)", ours_list, raw_list),
    ):
        for _ in range(warmup):
            mine()
            theirs()
        out[name] = _alternate(mine, theirs, per_round, rounds, settle)
    return out


# --- claim→complete throughput ----------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """One drain: how many tasks, how long, by how many processes."""

    impl: str
    procs: int
    completed: int
    seconds: float
    #: Claims of a task some process had claimed already (must be 0).
    duplicates: int = 0

    @property
    def tasks_per_s(self) -> float:
        """Completed tasks per second of wall time."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def _drain(
    impl: str, url: str, worker: str, barrier: Barrier, results: Any
) -> None:  # pragma: no cover - runs in a child process
    """Child process: connect, warm up, wait for the start signal, claim→complete until
    nothing is left.

    The warm-up runs on the still empty queue, before the parent fills it (the first of the
    two barrier waits): a claim that finds nothing, a completion of a task that does not
    exist, and the emptiness check.  So the first calls' costs are not timed: dualdb compiles
    its statements and builds their converters, sqlite3 prepares and caches its own (psycopg
    prepares on the server only after five runs, on either side alike).
    Ends when a claim finds nothing ready *and* no task is Queued any more (a dependent of a
    task another process is still running stays Queued, so this process keeps polling).
    """
    try:
        claim: Callable[[], Any]
        complete: Callable[[Any], None]
        queued_left: Callable[[], bool]
        close: Callable[[], None]
        if impl == "dualdb":
            db = dualdb.connect(url)
            tasks = db.tasks

            def claim() -> Any:
                task = tasks.claim(worker)
                return None if task is None else task.id

            def complete(key: Any) -> None:
                tasks.complete(key, worker, f"files/{key}.mp4")

            def queued_left() -> bool:
                return tasks.count(status="Queued") > 0

            missing: Any = uuid.uuid4()
            refused: type[Exception] = dualdb.errors.NotFound
            close = db.close
        else:
            raw = open_raw(url)

            def claim() -> Any:
                row = raw.claim(worker)
                return None if row is None else row[0]

            def complete(key: Any) -> None:
                raw.complete(key, worker, f"files/{key}.mp4")

            queued_left = raw.queued_left
            # Keys as the raw claim returns them: text from sqlite3, uuid.UUID from psycopg.
            missing = uuid.uuid4() if isinstance(raw, RawPostgres) else str(uuid.uuid4())
            refused = RuntimeError  # the raw complete's "not In Progress for this worker"
            close = raw.close
        if claim() is not None:
            raise RuntimeError("the queue was not empty before the start signal")
        with contextlib.suppress(refused):
            complete(missing)
        queued_left()
        barrier.wait(START_TIMEOUT_S)  # warmed up: the parent fills the queue now
    except BaseException:
        barrier.abort()
        results.put(("error", worker, traceback.format_exc()))
        return
    try:
        barrier.wait(START_TIMEOUT_S)  # the queue is full: start
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        claimed: list[str] = []
        while True:
            key = claim()
            if key is None:
                if not queued_left():
                    break
                time.sleep(0.0005)
                continue
            complete(key)
            claimed.append(str(key))
        end = time.perf_counter()
        results.put(("ok", worker, len(claimed), start, end, claimed))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
    finally:
        close()


def _collect(children: list[Any], barrier: Barrier, results: Any) -> list[tuple[Any, ...]]:
    """Every child's outcome; a child that dies without one, or any error, stops the rest."""
    outcomes: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + START_TIMEOUT_S + RUN_TIMEOUT_S
    while len(outcomes) < len(children):
        try:
            outcomes.append(results.get(timeout=0.2))
            if outcomes[-1][0] == "error":
                barrier.abort()  # the others stop waiting for the one that failed
            continue
        except queue.Empty:
            pass
        crashed = [c.exitcode for c in children if c.exitcode not in (None, 0)]
        everyone_left = all(c.exitcode is not None for c in children)
        if crashed or everyone_left or time.monotonic() > deadline:
            barrier.abort()
            with contextlib.suppress(queue.Empty):
                while len(outcomes) < len(children):
                    outcomes.append(results.get(timeout=2))
            if len(outcomes) < len(children):
                why = f"exited with code {crashed[0]}" if crashed else "did not report in time"
                raise RuntimeError(f"a benchmark worker process {why}")
    return outcomes


def _context() -> Any:
    """A fork server with dualdb preloaded (fast, clean children); spawn where there is none."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dualdb", "benchmarks.measure"])
    return ctx


def in_child(target: Callable[..., None], args: tuple[Any, ...], what: str, timeout: float) -> Any:
    """Run ``target(*args, results)`` in a fresh process; what it put on ``results``.

    ``target`` puts ``("ok", …)`` or ``("error", traceback)``; an error is raised here as a
    RuntimeError naming ``what``.
    """
    ctx = _context()
    results = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, results), daemon=True)
    child.start()
    try:
        outcome = results.get(timeout=START_TIMEOUT_S + timeout)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()
    if outcome[0] != "ok":
        raise RuntimeError(f"{what} failed:\n{outcome[1]}")
    return outcome


def measure_throughput(impl: str, url: str, procs: int, fill: Callable[[], None]) -> Throughput:
    """Drain the tasks ``fill()`` adds to the database at ``url`` with ``procs`` processes.

    Each process opens its own connection (``dualdb.connect`` or the raw driver) and warms
    up on the empty queue (:func:`_drain`); then ``fill()`` runs here, and all start
    together.  The time is from the start signal to the last process finishing.
    """
    ctx = _context()
    barrier = ctx.Barrier(procs + 1)  # and this process, which fills the queue between
    results = ctx.Queue()
    children = [
        ctx.Process(
            target=_drain,
            args=(impl, url, f"bench-{impl}-{i}", barrier, results),
            daemon=True,
        )
        for i in range(procs)
    ]
    for child in children:
        child.start()
    try:
        try:
            barrier.wait(START_TIMEOUT_S)  # every process connected and warmed up
            fill()
            barrier.wait(START_TIMEOUT_S)  # start
        except threading.BrokenBarrierError:
            pass  # a process failed before the start: _collect gathers why
        except BaseException:
            barrier.abort()
            raise
        outcomes = _collect(children, barrier, results)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    # The first cause, not a process that only saw the start signal cancelled.
    errors = sorted((o for o in outcomes if o[0] == "error"), key=lambda o: "BrokenBarrier" in o[2])
    if errors:
        raise RuntimeError(f"{impl} worker {errors[0][1]} failed:\n{errors[0][2]}")
    completed = sum(int(o[2]) for o in outcomes)
    distinct = len({key for o in outcomes for key in o[5]})
    seconds = max(float(o[4]) for o in outcomes) - min(float(o[3]) for o in outcomes)
    return Throughput(impl, procs, completed, seconds, completed - distinct)


# --- claim latency and plans ------------------------------------------------------------------


@contextmanager
def sqlite_statements(db: dualdb.Database) -> Iterator[list[str]]:
    """The statements SQLite runs for ``db`` while the block runs, parameters filled in.

    Traced at the driver (``sqlite3``'s trace callback), below SQLAlchemy: dualdb's hot path
    runs its statements on the driver's connection.  The connections are reopened around the
    block, so every one the block uses is traced.
    """
    seen: list[str] = []

    def trace(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(seen.append)

    release_pinned(db.engine)
    db.engine.dispose()
    event.listen(db.engine, "connect", trace)
    try:
        yield seen
    finally:
        event.remove(db.engine, "connect", trace)
        release_pinned(db.engine)
        db.engine.dispose()


def explain(db: dualdb.Database, statement: str, parameters: Any = None) -> list[str]:
    """The plan of ``statement`` (``EXPLAIN QUERY PLAN`` / ``EXPLAIN``), without running it."""
    prefix = "EXPLAIN QUERY PLAN " if db.backend == "sqlite" else "EXPLAIN "
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
        conn.rollback()
    if db.backend == "sqlite":
        return [str(r[-1]) for r in rows]
    return [str(r[0]) for r in rows]


def claim_plan(
    db: dualdb.Database,
    worker_id: str,
    task_types: list[str] | None = None,
    *,
    generic: bool = False,
) -> tuple[Task | None, list[str]]:
    """Claim with ``db.tasks.claim(worker_id, task_types)``; the task, and its claim's plan.

    SQLite: ``EXPLAIN QUERY PLAN`` of the ``UPDATE`` dualdb ran (traced at the driver).
    Postgres: dualdb calls migration 0008's ``dualdb.claim_tasks``, whose statements
    ``EXPLAIN`` cannot see, so the same call is replayed in a transaction that is rolled
    back, with ``auto_explain`` reporting the plan of the ``UPDATE`` inside the function.
    ``generic`` (Postgres): the replay's plan is the generic one PL/pgSQL caches and reuses
    for the session (``plan_cache_mode = force_generic_plan``), not one made for its values.
    """
    if db.backend == "sqlite":
        with sqlite_statements(db) as seen:
            task = db.tasks.claim(worker_id, task_types=task_types)
        # The claim is one UPDATE (behind the WITH of the queue's clock, Backend.clock).
        statement = next(s for s in seen if "UPDATE TASKS" in s.upper())
        return task, explain(db, statement)
    task = db.tasks.claim(worker_id, task_types=task_types)
    notices: list[str] = []
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        for setting in (
            "LOAD 'auto_explain'",
            "SET LOCAL auto_explain.log_min_duration = 0",
            "SET LOCAL auto_explain.log_nested_statements = on",
            "SET LOCAL auto_explain.log_level = notice",
            *(["SET LOCAL plan_cache_mode = force_generic_plan"] if generic else []),
        ):
            conn.exec_driver_sql(setting)
        conn.exec_driver_sql(
            "SELECT * FROM dualdb.claim_tasks(%(worker)s, %(types)s::text[], 1)",
            {"worker": worker_id, "types": task_types},
        ).all()
        conn.rollback()
    plans = [line for n in notices if "Update on tasks" in n for line in n.splitlines()]
    if not plans:
        raise RuntimeError(f"auto_explain reported no plan of the claim's UPDATE: {notices}")
    return task, plans


def plan_summary(plan: list[str]) -> str:
    """The access paths of a plan, in order: index names, or the table scans."""
    found: list[str] = []
    for line in plan:
        for match in re.finditer(
            r"(?:USING (?:COVERING )?INDEX|Index (?:Only )?Scan(?: Backward)? using) (\w+)"
            r"|(Seq Scan on \w+|Bitmap Heap Scan on \w+|^SCAN \w+$|TEMP B-TREE)",
            line.strip(),
        ):
            name = match.group(1) or match.group(2)
            if name not in found:
                found.append(name)
    return ", ".join(found) or "?"


@dataclass(frozen=True)
class ClaimLatency:
    """Claim latency on one table shape."""

    dualdb_us: float
    raw_us: float
    dualdb_p90_us: float
    raw_p90_us: float
    plan: list[str]


def _claim_blocks(claimers: list[Callable[[], object]], claims: int) -> list[list[int]]:
    """ns per claim of each claimer, ``claims`` each: blocks of :data:`CLAIM_BLOCK` claims,
    the claimers taking turns (in reverse order every other block)."""
    samples: list[list[int]] = [[] for _ in claimers]
    for block, start_at in enumerate(range(0, claims, CLAIM_BLOCK)):
        size = min(CLAIM_BLOCK, claims - start_at)
        order = list(range(len(claimers)))
        for which in order if block % 2 == 0 else order[::-1]:
            claim = claimers[which]
            for _ in range(size):
                start = time.perf_counter_ns()
                got = claim()
                elapsed = time.perf_counter_ns() - start
                if got is None:
                    raise RuntimeError("ran out of ready tasks while measuring claims")
                samples[which].append(elapsed)
    return samples


def _p90_us(samples: list[int]) -> float:
    return statistics.quantiles(samples, n=10)[-1] / 1000.0 if len(samples) > 1 else 0.0


def _warm_up(db: dualdb.Database, raw: RawDriver) -> list[str]:
    """Untimed claims on one table by both sides; dualdb's claim plan."""
    first, plan = claim_plan(db, "bench-warmup")
    if first is None:
        raise RuntimeError("no ready task to claim")
    for _ in range(WARMUP_CLAIMS - 1):
        db.tasks.claim("bench-warmup")
    for _ in range(WARMUP_CLAIMS):
        raw.claim("bench-warmup")
    return plan


def measure_claims(
    reference: tuple[dualdb.Database, RawDriver],
    shape: tuple[dualdb.Database, RawDriver],
    claims: int,
) -> tuple[ClaimLatency, ClaimLatency]:
    """µs per claim (median of ``claims``) on two tables at once, the small reference table
    and another shape, each in its own database: the latency of each, and dualdb's plans.

    The two tables are measured together, taking turns in blocks of :data:`CLAIM_BLOCK`:
    timed one after the other, a minute apart, the ratio of the two moved with the machine's
    load (the same code gave 1.02, 1.37 and 1.49 on the blocked table in three runs).
    dualdb's claims are all timed first, then the raw driver's: on SQLite's *many blocked*
    table a raw claim walks 100,000 blocked rows (18-35 ms), and the claims after it pay for
    the caches it evicted, which on the small table's turns they never do.  Blocks, not
    single claims, for the same reason.  So dualdb/raw on one table is not a paired
    figure here (the target is dualdb's own ratio to the small table), and the raw side
    claims from a table dualdb's claims have already been through.  Needs
    ``2 * (claims + WARMUP_CLAIMS)`` ready tasks in each table.
    """
    (ref_db, ref_raw), (db, raw) = reference, shape
    ref_plan, plan = _warm_up(ref_db, ref_raw), _warm_up(db, raw)
    ours_ref, ours = _claim_blocks(
        [lambda: ref_db.tasks.claim("bench-dualdb"), lambda: db.tasks.claim("bench-dualdb")],
        claims,
    )
    theirs_ref, theirs = _claim_blocks(
        [lambda: ref_raw.claim("bench-raw"), lambda: raw.claim("bench-raw")], claims
    )
    return (
        ClaimLatency(
            _median_us(ours_ref), _median_us(theirs_ref), _p90_us(ours_ref), _p90_us(theirs_ref),
            ref_plan,
        ),
        ClaimLatency(_median_us(ours), _median_us(theirs), _p90_us(ours), _p90_us(theirs), plan),
    )  # fmt: skip
