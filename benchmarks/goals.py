"""The targets of issue 13 ("Near the raw driver") and issue 14 (copy), printed beside each
figure.

A target bounds either the ratio dualdb/raw of a measurement (in its own unit: µs/op or
rows/s) or dualdb's own figure (ms, MB, share of a core).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "≤": operator.le,
    "<": operator.lt,
    "≥": operator.ge,
}


@dataclass(frozen=True)
class Target:
    """``of`` (``"ratio"`` or ``"dualdb"``) ``op`` ``bound``, e.g. ratio ≤ 1.5."""

    op: str
    bound: float
    of: str = "ratio"
    unit: str = ""

    def met(self, value: float) -> bool:
        """Whether ``value`` (the ratio or dualdb's figure) meets the target."""
        return _OPS[self.op](value, self.bound)

    @property
    def text(self) -> str:
        """How the target reads, e.g. ``ratio ≤ 1.5`` or ``< 50 ms``."""
        bound = f"{self.bound:g}{' ' + self.unit if self.unit else ''}"
        return f"{'ratio ' if self.of == 'ratio' else ''}{self.op} {bound}"


#: A: every single-row operation, dualdb/raw µs.
SINGLE_ROW = Target("≤", 1.5)
#: B: dualdb/raw rows/s of executemany on SQLite, of COPY on Postgres.
BULK_SQLITE = Target("≥", 0.6)
BULK_COPY = Target("≥", 0.5)
#: C: dualdb/raw tasks/s at 1, 2 and 4 processes.
THROUGHPUT = Target("≥", 0.7)
THROUGHPUT_PROCS = (1, 2, 4)
#: D: claim µs with 100k finished or blocked tasks / with the small table.
CLAIM_SHAPE = Target("≤", 1.3, of="dualdb")
#: The table shapes D's target applies to: the issue's "finished and blocked".
CLAIM_SHAPES = ("finished", "blocked")
#: E: dualdb/raw rows/s of a full scan, and the scan's peak RSS growth.
ITERATION = Target("≥", 0.7)
ITERATION_RSS = Target("<", 50, of="dualdb", unit="MB")
#: F: the stock worker's median pickup, and its CPU while idle.
PICKUP = Target("<", 50, of="dualdb", unit="ms")
IDLE_CPU = Target("<", 2, of="dualdb", unit="% of a core")
#: G (issue 14): dualdb copy / raw rows/s (executemany into SQLite, COPY into Postgres), and
#: its peak RSS growth.
COPY = Target("≥", 0.5)
COPY_RSS = Target("<", 100, of="dualdb", unit="MB")
