"""Benchmark sizes: the defaults (a few minutes on 2 cores) and the ``--quick`` smoke sizes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchConfig:
    """How much work each measurement does."""

    #: Single-row gets per implementation (split into ``rounds``, alternating dualdb and raw).
    get_ops: int = 3000
    #: Projects to pick the gets from.
    projects: int = 1000
    #: Rounds the gets are split into (the reported number is the median round).
    rounds: int = 5
    #: Tasks drained per throughput run (half of them depend on the one before).
    tasks: int = 2000
    #: Process counts of the throughput runs (each process has its own connection/Database).
    procs: tuple[int, ...] = (1, 2, 4, 8)
    #: Runs per implementation and process count, alternating; the median is reported (one
    #: drain of 2,000 tasks lasts about a second, and a single one swung by ±0.2 in ratio).
    drains: int = 3
    #: Finished tasks in the "small" table of the claim-cost measurement.
    small: int = 1000
    #: Finished tasks in the "large" table of the claim-cost measurement.
    large: int = 100_000
    #: Blocked tasks (chains and fan-ins waiting on unfinished work) in the "blocked" table.
    blocked: int = 100_000
    #: Measured claims per implementation and scenario.
    claims: int = 300
    #: Length of the dependency chains of the bulk-loaded tasks.
    chain_length: int = 100
    #: Chains joined by one fan-in task (which waits for all their tails).
    fan_in: int = 20
    #: Batch sizes of the bulk-insert measurement (tasks per ``create_many``).
    bulk: tuple[int, ...] = (10_000, 100_000)
    #: Rows iterated by the iteration measurement (the issue's figure is 1,000,000; the
    #: default keeps a full run near ten minutes on 2 cores).
    iter_rows: int = 200_000
    #: Tasks enqueued one at a time for the stock worker to pick up.
    pickups: int = 30
    #: Tasks copied from a SQLite file by the copy measurement (issue 14's figure is
    #: 1,000,000: ``--copy-rows 1000000``, about ten minutes a backend on 2 cores).
    copy_rows: int = 20_000
    #: Copies per implementation, alternating; the median is reported (one pair of runs swung
    #: by ±0.15 in ratio).
    copies: int = 3
    #: The measurements to run (letters of issue 13: A single-row, B bulk insert,
    #: C claim→complete, D claim cost by table shape, E iteration, F pickup; and of issue 14:
    #: G copy).
    only: str = "ABCDEFG"


#: ``--quick``: every code path, small sizes (a smoke run, not a measurement).
QUICK = BenchConfig(
    get_ops=200,
    projects=50,
    rounds=2,
    tasks=80,
    procs=(1, 2, 4, 8),
    drains=1,
    small=100,
    large=2000,
    blocked=2000,
    claims=20,
    chain_length=20,
    fan_in=5,
    bulk=(500, 2000),
    iter_rows=3000,
    pickups=5,
    copy_rows=1000,
    copies=1,
)
