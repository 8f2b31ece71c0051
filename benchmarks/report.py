"""Print a run as tables (rich) and write it as JSON or Markdown."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.run import BenchResult

_SCENARIO_LABEL = {
    "small": "small: few finished",
    "finished": "many finished",
    "unvacuumed": "many finished, not vacuumed",
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


def comparison_rows(result: BenchResult) -> list[list[str]]:
    """Backend, measurement, dualdb, raw, unit, dualdb/raw, cost."""
    rows: list[list[str]] = []
    for b in result.backends:
        for c in b.comparisons:
            rows.append(
                [
                    b.backend,
                    c.metric,
                    _num(c.dualdb),
                    _num(c.raw),
                    c.unit,
                    _ratio(c.ratio),
                    f"{c.cost:.1f}x",
                ]
            )
    return rows


def scenario_rows(result: BenchResult) -> list[list[str]]:
    """Backend, table, finished, blocked, dualdb µs, raw µs, dualdb/raw, vs small (both)."""
    rows: list[list[str]] = []
    for b in result.backends:
        small = next((s for s in b.scenarios if s.name == "small"), None)
        for s in b.scenarios:
            rows.append(
                [
                    b.backend,
                    _SCENARIO_LABEL.get(s.name, s.name),
                    f"{s.finished:,}",
                    f"{s.blocked:,}",
                    _num(s.dualdb_us),
                    _num(s.raw_us),
                    _ratio(s.dualdb_us / s.raw_us),
                    _ratio(s.dualdb_us / small.dualdb_us) if small else "-",
                    _ratio(s.raw_us / small.raw_us) if small else "-",
                ]
            )
    return rows


COMPARISON_HEADERS = ["backend", "measurement", "dualdb", "raw", "unit", "dualdb/raw", "cost"]
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
            console = Console(width=120)
    env = ", ".join(f"{k} {v}" for k, v in result.environment.items())
    servers = "; ".join(f"{b.server} ({b.seconds:.0f} s)" for b in result.backends)
    first = Table(
        title=f"dualdb vs raw driver — {result.started_at}",
        caption="cost = how many times the raw driver's time dualdb takes (1.0x = as fast)",
    )
    for i, header in enumerate(COMPARISON_HEADERS):
        first.add_column(header, justify="right" if i >= 2 else "left")
    for row in comparison_rows(result):
        first.add_row(*row)
    second = Table(
        title="claim cost vs table shape (median µs per claim; 1 process)",
        caption=(
            "vs small = this table's µs/claim ÷ the small table's (≈1 means independent); "
            "Postgres sessions use synchronous_commit=off here (the WAL flush is per commit)"
        ),
    )
    for i, header in enumerate(SCENARIO_HEADERS):
        second.add_column(header, justify="right" if i >= 2 else "left")
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
            f"Run of {result.started_at} ({env}; {servers}).",
            _markdown_table(COMPARISON_HEADERS, comparison_rows(result)),
            _markdown_table(SCENARIO_HEADERS, scenario_rows(result)),
            _markdown_table(PLAN_HEADERS, plan_rows(result)),
        ]
    )


def write_json(result: BenchResult, path: Path) -> None:
    """The run as JSON (plans and p90s included)."""
    path.write_text(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n")
