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
from benchmarks.report import print_result, to_markdown, write_json
from benchmarks.run import SCENARIOS, BenchResult, run_backend


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports(migrated_url: str, backend: str, tmp_path: Path) -> None:
    result = run_backend(migrated_url, QUICK)

    assert result.backend == backend
    metrics = [c.metric for c in result.comparisons]
    assert metrics == [
        "get by id",
        "create",
        "update",
        "claim→complete, 1 process",
        "claim→complete, 4 processes",
    ]
    for c in result.comparisons:
        assert c.dualdb > 0 and c.raw > 0, c
        assert c.ratio > 0 and c.cost > 0, c
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


def test_command_line_sizes() -> None:
    quick = config_from(_parser().parse_args(["--quick", "--claims", "7", "--procs", "1,2"]))
    assert quick.claims == 7 and quick.procs == (1, 2) and quick.large == QUICK.large
    default = config_from(_parser().parse_args(["--backend", "sqlite"]))
    assert default.large == 100_000 and default.procs == (1, 4)
