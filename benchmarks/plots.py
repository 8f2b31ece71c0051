"""PNG plots of a run (matplotlib, the ``bench`` extra): C, D and F.

* ``claim_complete.png``: tasks/s against processes, dualdb and raw, one panel per backend;
* ``claim_cost.png``: µs per claim by table shape, dualdb and raw, one panel per backend;
* ``pickup.png``: every enqueue→pickup latency of the stock worker, per backend, with the
  50 ms target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import _SCENARIO_LABEL
from benchmarks.run import BackendResult, BenchResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: BenchResult, folder: Path) -> list[Path]:
    """Write the plots of ``result`` into ``folder`` (created); the files written (a plot
    whose measurement did not run is not written)."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stamp = f"run of {result.started_at}"

    backends = [b for b in result.backends if b.throughput]
    if backends:
        _throughput(plt, backends, stamp, folder / "claim_complete.png")
        written.append(folder / "claim_complete.png")
    backends = [b for b in result.backends if b.scenarios]
    if backends:
        _claim_cost(plt, backends, stamp, folder / "claim_cost.png")
        written.append(folder / "claim_cost.png")
    backends = [b for b in result.backends if b.pickup_ms]
    if backends:
        _pickup(plt, backends, stamp, folder / "pickup.png")
        written.append(folder / "pickup.png")
    return written


def _throughput(plt: Any, backends: list[BackendResult], stamp: str, path: Path) -> None:
    fig, axes = plt.subplots(1, len(backends), figsize=(5.5 * len(backends), 4), squeeze=False)
    for ax, b in zip(axes[0], backends, strict=True):
        procs = [t.procs for t in b.throughput]
        ax.plot(procs, [t.dualdb for t in b.throughput], "o-", label="dualdb")
        ax.plot(procs, [t.raw for t in b.throughput], "s--", label="raw driver")
        ax.set_xticks(procs)
        ax.set_xlabel("processes")
        ax.set_ylabel("tasks/s (claim→complete)")
        ax.set_title(b.backend)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle(f"C: claim→complete throughput ({stamp})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _claim_cost(plt: Any, backends: list[BackendResult], stamp: str, path: Path) -> None:
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4), squeeze=False)
    for ax, b in zip(axes[0], backends, strict=True):
        names = [_SCENARIO_LABEL.get(s.name, s.name).replace(", ", ",\n") for s in b.scenarios]
        xs = list(range(len(names)))
        ax.bar([x - 0.2 for x in xs], [s.dualdb_us for s in b.scenarios], 0.4, label="dualdb")
        ax.bar([x + 0.2 for x in xs], [s.raw_us for s in b.scenarios], 0.4, label="raw driver")
        ax.set_xticks(xs, names, fontsize=8)
        ax.set_ylabel("µs per claim (median)")
        ax.set_yscale("log")
        ax.set_title(b.backend)
        ax.legend()
    fig.suptitle(f"D: claim latency by table shape ({stamp})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pickup(plt: Any, backends: list[BackendResult], stamp: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    data = [b.pickup_ms for b in backends]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(backends) + 1), [b.backend for b in backends])
    for i, points in enumerate(data, start=1):
        ax.scatter([i] * len(points), points, s=8, alpha=0.5)
    ax.axhline(50, color="red", linestyle=":", label="target: median < 50 ms")
    ax.set_ylabel("enqueue → pickup (ms)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title(f"F: stock `dualdb worker`, defaults ({stamp})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
