"""The benchmark's verdicts: every target counts, D's table shapes included.

A run once printed ``targets missed: 3`` above a claim-cost table with three ``MISSED``
rows of its own: only the main table's rows were counted.
"""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import goals
from benchmarks.config import QUICK
from benchmarks.report import scenario_rows
from benchmarks.run import BackendResult, BenchResult, ClaimScenario, Comparison


def _shape(name: str, dualdb_us: float, raw_us: float) -> ClaimScenario:
    return ClaimScenario(name, 1000, 0, 10, dualdb_us, raw_us, dualdb_us, raw_us, ["tasks"])


def _backend() -> BackendResult:
    return BackendResult(
        backend="postgresql",
        comparisons=[
            Comparison("get by id", "µs/op", 120.0, 100.0, False, goals.SINGLE_ROW),
            Comparison("update", "µs/op", 160.0, 100.0, False, goals.SINGLE_ROW),
            Comparison("claim→complete, 8 processes", "tasks/s", 1.0, 9.0, True),
        ],
        scenarios=[
            _shape("small", 500.0, 400.0),
            _shape("finished", 640.0, 400.0),  # 1.28 of small: met
            _shape("blocked", 700.0, 440.0),  # 1.40 of small: missed
        ],
    )


def test_every_missed_target_is_named_with_its_backend() -> None:
    assert _backend().missed() == ["postgresql update", "postgresql claim cost, blocked"]


def test_a_shape_is_judged_against_the_small_table_of_its_own_run() -> None:
    b = _backend()
    assert b.vs_small(b.scenario("blocked")) == pytest.approx((1.4, 1.1))
    assert [b.scenario_met(s) for s in b.scenarios] == [None, True, False]
    verdicts = [row[-1] for row in scenario_rows(BenchResult("t", QUICK, [b]))]
    assert verdicts == ["-", "met", "MISSED"]


def test_the_unvacuumed_table_is_context_without_a_target() -> None:
    """Issue 13's D names the finished and the blocked table; the finished table before
    VACUUM is shown beside them with the raw statement's growth, and judged by nobody."""
    b = _backend()
    b.scenarios.append(_shape("unvacuumed", 1500.0, 1200.0))  # 3.0 of small
    assert b.scenario_met(b.scenario("unvacuumed")) is None
    assert b.missed() == ["postgresql update", "postgresql claim cost, blocked"]
    row = scenario_rows(BenchResult("t", QUICK, [b]))[-1]
    assert row[-2:] == ["none: context", "-"]


def test_without_the_small_table_no_shape_is_judged() -> None:
    b = BackendResult(backend="sqlite", scenarios=[_shape("blocked", 700.0, 440.0)])
    assert b.vs_small(b.scenarios[0]) is None
    assert b.missed() == []


def test_a_shape_measured_with_the_small_table_is_judged_against_those_figures() -> None:
    """D measures each shape together with a small table of its own: the ratio is to the
    figures taken in the same turns, not to the small row (their median), which may differ."""
    b = _backend()
    paired = dataclasses.replace(
        b.scenario("blocked"), small_dualdb_us=600.0, small_raw_us=400.0
    )  # 700/600 = 1.17: met, though 1.40 of the small row
    b.scenarios[-1] = paired
    assert b.vs_small(paired) == pytest.approx((700 / 600, 1.1))
    assert b.scenario_met(paired) is True
    assert b.missed() == ["postgresql update"]
