"""Smoke test of the benchmarks (``python -m benchmarks``): every code path runs, on both backends.

This runs the ``--quick`` sizes and checks that each measurement produced a positive number.
It asserts nothing about speed: speed is what ``make bench`` measures, not what tests time.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.__main__ import _parser, config_from
from benchmarks.config import QUICK
from benchmarks.plots import write_plots
from benchmarks.report import print_result, to_markdown, write_json
from benchmarks.run import SCENARIOS, BenchResult, run_backend


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports(migrated_url: str, backend: str, tmp_path: Path) -> None:
    result = run_backend(migrated_url, QUICK)

    assert result.backend == backend
    metrics = [c.metric for c in result.comparisons]
    bulk = [
        f"create_many {n:,} tasks" for n in QUICK.bulk for _ in range(1 + (backend != "sqlite"))
    ]
    assert metrics == [
        "get by id",
        "create",
        "update",
        "delete",
        "list(50)",
        *bulk,
        "claim→complete, 1 process",
        "claim→complete, 2 processes",
        "claim→complete, 4 processes",
        "claim→complete, 8 processes",
        f"iterate {QUICK.iter_rows:,} tasks",
        f"iterate {QUICK.iter_rows:,} tasks: peak RSS growth",
        "enqueue→pickup, stock worker (median)",
        "idle stock worker CPU",
        f"copy {QUICK.copy_rows:,} tasks from SQLite",
        f"copy {QUICK.copy_rows:,} tasks: peak RSS growth",
    ]
    for c in result.comparisons:
        if c.metric == "idle stock worker CPU":  # an idle worker may use no measurable CPU
            assert c.dualdb >= 0, c
            continue
        if c.unit == "MB":  # a scan or a copy may not grow the peak RSS at all
            assert c.dualdb >= 0 and (c.raw is None or c.raw >= 0), c
            assert c.raw is not None or c.metric.startswith("copy"), c
            continue
        assert c.dualdb > 0, c
        assert c.target is not None or c.metric.startswith(("claim→complete", "create_many")), c
        if c.raw is not None:
            assert c.raw > 0, c
            assert c.ratio is not None and c.ratio > 0, c
    assert [t.procs for t in result.throughput] == list(QUICK.procs)
    assert all(t.duplicates == 0 for t in result.throughput)
    assert len(result.pickup_ms) == QUICK.pickups
    assert [s.name for s in result.scenarios] == list(SCENARIOS)
    for s in result.scenarios:
        assert s.dualdb_us > 0 and s.raw_us > 0, s
        assert s.plan and "tasks" in "\n".join(s.plan), s
        assert s.plan_summary != "?", s

    run = BenchResult(started_at="smoke", config=QUICK, backends=[result])
    out = io.StringIO()
    print_result(run, Console(file=out, width=200))
    assert "claim→complete, 4 processes" in out.getvalue()
    assert "many blocked" in out.getvalue()
    write_json(run, tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["backends"][0]["comparisons"][0]["ratio"] > 0
    assert data["backends"][0]["claim_scenarios"][-1]["dualdb_vs_small"] > 0
    assert "| get by id |" in to_markdown(run).replace(f"| {backend} ", "")
    plots = write_plots(run, tmp_path / "plots")
    assert [p.name for p in plots] == ["claim_complete.png", "claim_cost.png", "pickup.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


def test_command_line_sizes() -> None:
    args = ["--quick", "--claims", "7", "--procs", "1,2", "--iter-rows", "99", "--bulk", "5,6"]
    quick = config_from(_parser().parse_args(args))
    assert quick.claims == 7 and quick.procs == (1, 2) and quick.large == QUICK.large
    assert quick.iter_rows == 99 and quick.bulk == (5, 6)
    default = config_from(_parser().parse_args(["--backend", "sqlite"]))
    assert default.large == 100_000 and default.procs == (1, 2, 4, 8)
    assert default.bulk == (10_000, 100_000)
