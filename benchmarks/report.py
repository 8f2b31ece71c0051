"""Print a run as tables (rich) and write it as JSON or Markdown."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.run import BenchResult

_SCENARIO_LABEL = {
    "small": "small: few finished",
    "finished": "many finished",
    "unvacuumed": "many finished, not vacuumed (context)",
    "blocked": "many blocked",
}


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def comparison_rows(result: BenchResult) -> list[list[str]]:
    """Backend, measurement, dualdb, raw, unit, dualdb/raw, target, verdict, note."""
    rows: list[list[str]] = []
    for b in result.backends:
        for c in b.comparisons:
            rows.append(
                [
                    b.backend,
                    c.metric,
                    _num(c.dualdb),
                    "-" if c.raw is None else _num(c.raw),
                    c.unit,
                    "-" if c.ratio is None else _ratio(c.ratio),
                    c.target.text if c.target else "-",
                    _verdict(c.met),
                    c.note,
                ]
            )
    return rows


def scenario_rows(result: BenchResult) -> list[list[str]]:
    """Backend, table, finished, blocked, dualdb µs, raw µs, dualdb/raw, vs small (both)."""
    rows: list[list[str]] = []
    for b in result.backends:
        for s in b.scenarios:
            ratios = b.vs_small(s)
            rows.append(
                [
                    b.backend,
                    _SCENARIO_LABEL.get(s.name, s.name),
                    f"{s.finished:,}",
                    f"{s.blocked:,}",
                    _num(s.dualdb_us),
                    _num(s.raw_us),
                    _ratio(s.dualdb_us / s.raw_us),
                    _ratio(ratios[0]) if ratios else "-",
                    _ratio(ratios[1]) if ratios else "-",
                    s.target.text if s.target else ("-" if s.name == "small" else "none: context"),
                    _verdict(b.scenario_met(s)),
                ]
            )
    return rows


COMPARISON_HEADERS = [
    "backend",
    "measurement",
    "dualdb",
    "raw",
    "unit",
    "dualdb/raw",
    "target",
    "verdict",
    "note",
]
SCENARIO_HEADERS = [
    "backend",
    "table",
    "finished",
    "blocked",
    "dualdb µs",
    "raw µs",
    "dualdb/raw",
    "dualdb vs small",
    "raw vs small",
    "target (dualdb vs small)",
    "verdict",
]
PLAN_HEADERS = ["backend", "table", "access paths of dualdb's claim (EXPLAIN)"]


def plan_rows(result: BenchResult) -> list[list[str]]:
    """Backend, table, the indexes/scans of dualdb's claim statement in plan order."""
    return [
        [b.backend, _SCENARIO_LABEL.get(s.name, s.name), s.plan_summary]
        for b in result.backends
        for s in b.scenarios
    ]


def print_result(result: BenchResult, console: Console | None = None) -> None:
    """Both tables, with the run's environment."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    env = ", ".join(f"{k} {v}" for k, v in result.environment.items())
    servers = "; ".join(f"{b.server} ({b.seconds:.0f} s)" for b in result.backends)
    first = Table(
        title=f"dualdb vs raw driver — {result.started_at}",
        caption="dualdb/raw in the row's unit: µs and MB lower is better, rows/s and tasks/s "
        "higher; targets from issue 13",
    )
    for i, header in enumerate(COMPARISON_HEADERS):
        first.add_column(header, justify="right" if 2 <= i <= 5 else "left")
    for row in comparison_rows(result):
        first.add_row(*row)
    second = Table(
        title="claim cost vs table shape (median µs per claim; 1 process)",
        caption=(
            "vs small = this table's µs/claim ÷ the small table's, measured together (in "
            "turns, each in its own database); the small row is the median of those; "
            "≈1 means independent; "
            "Postgres sessions use synchronous_commit=off here (the WAL flush is per commit)"
        ),
    )
    for i, header in enumerate(SCENARIO_HEADERS):
        second.add_column(header, justify="right" if 2 <= i <= 8 else "left")
    for row in scenario_rows(result):
        second.add_row(*row)
    third = Table(title="plan of dualdb's claim statement")
    for header in PLAN_HEADERS:
        third.add_column(header)
    for row in plan_rows(result):
        third.add_row(*row)
    console.print(first)
    console.print(second)
    console.print(third)
    console.print(f"[dim]{env}; {servers}[/dim]")
    console.print(f"[dim]sizes: {_sizes(result)}[/dim]")


def _sizes(result: BenchResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(result.config).items())


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(result: BenchResult) -> str:
    """Both tables as Markdown (for docs/benchmarks.md)."""
    env = ", ".join(f"{k} {v}" for k, v in result.environment.items())
    servers = "; ".join(b.server for b in result.backends)
    return "\n\n".join(
        [
            f"Run of {result.started_at} ({env}; {servers}). Sizes: {_sizes(result)}.",
            _markdown_table(COMPARISON_HEADERS, comparison_rows(result)),
            _markdown_table(SCENARIO_HEADERS, scenario_rows(result)),
            _markdown_table(PLAN_HEADERS, plan_rows(result)),
        ]
    )


def write_json(result: BenchResult, path: Path) -> None:
    """The run as JSON (plans and p90s included)."""
    path.write_text(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n")
