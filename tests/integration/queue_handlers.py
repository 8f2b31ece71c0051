"""Handlers for worker processes started by the queue tests (``module:function`` specs)."""

from __future__ import annotations

import os
import time

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
