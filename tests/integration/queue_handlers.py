"""Handlers for worker processes started by the queue tests (``module:function`` specs)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

from dualdb.records import Task


def slow(task: Task) -> str:
    """Work for ``DUALDB_TEST_HANDLER_SECONDS`` (default 2 s) and return an output path."""
    time.sleep(float(os.environ.get("DUALDB_TEST_HANDLER_SECONDS", "2")))
    return f"files/slow/{task.id}.png"


def fast(task: Task) -> str:
    """Return at once."""
    return f"files/fast/{task.id}.png"


def broken(task: Task) -> str:
    """Always fail."""
    raise RuntimeError(f"model crashed on {task.task_type}")


def slow_reporting_signals(task: Task) -> str:
    """``slow``, telling the test which stop signals the worker has taken.

    Appends ``ready`` to the file ``DUALDB_TEST_SIGNAL_LOG`` once the task runs, then a line per
    SIGINT after the worker's own handler took it.  Two signals sent back to back can reach the
    worker as one, so a test sends the second only once the first is in the log.
    """
    log = Path(os.environ["DUALDB_TEST_SIGNAL_LOG"])
    workers_handler = signal.getsignal(signal.SIGINT)
    assert callable(workers_handler), "the worker installs its own SIGINT handler"

    def reporting(signum: int, frame: FrameType | None) -> None:
        try:
            workers_handler(signum, frame)  # the second one raises: the worker releases the task
        finally:
            with log.open("a") as out:
                out.write(f"{signal.Signals(signum).name}\n")

    signal.signal(signal.SIGINT, reporting)
    try:
        with log.open("a") as out:
            out.write("ready\n")
        return slow(task)
    finally:
        signal.signal(signal.SIGINT, workers_handler)
