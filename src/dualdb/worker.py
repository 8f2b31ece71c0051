"""A worker loop: claim a task, heartbeat in the background, run the handler, record the result.

A handler is any callable ``handler(task: Task) -> str`` returning the output location; an
exception fails the task (retried while attempts remain).  ``SIGTERM``/``SIGINT`` stop the
loop after the current task finishes; a second signal gives the current task back to the
queue (``release_claim``) and stops at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType

from dualdb.database import Database
from dualdb.errors import Conflict, DualdbError, InvalidInput
from dualdb.queue import DEFAULT_MAX_ATTEMPTS
from dualdb.records import Task

log = logging.getLogger("dualdb.worker")

Handler = Callable[[Task], str]

#: How often a running task's heartbeat is written.
DEFAULT_HEARTBEAT = timedelta(seconds=10)


class _Released(BaseException):
    """Raised in the handler's thread by a second stop signal (not an ``Exception``)."""


def load_handler(spec: str) -> Handler:
    """Import ``module:function`` (e.g. ``dualdb.worker:demo_handler``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput("handler", f"{spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput("handler", f"cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise InvalidInput("handler", f"{module_name!r} has no callable {attr!r}")
    return handler  # type: ignore[no-any-return]


def default_worker_id() -> str:
    """``host:pid``, unique per process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def demo_handler(task: Task) -> str:
    """A stand-in for GPU work: waits a moment and returns a made-up output file."""
    time.sleep(float(os.environ.get("DUALDB_DEMO_SECONDS", "0.2")))
    ext = "mp4" if task.task_type == "travel_stitch" else "png"
    return f"files/demo/{task.id}.{ext}"


@dataclass
class WorkerStats:
    """What a worker run did."""

    completed: list[Task] = field(default_factory=list)
    failed: list[Task] = field(default_factory=list)
    released: list[Task] = field(default_factory=list)


class Worker:
    """Runs ``handler`` on tasks claimed from ``db`` until stopped (or the queue is drained)."""

    def __init__(
        self,
        db: Database,
        handler: Handler,
        *,
        worker_id: str | None = None,
        task_types: Sequence[str] | None = None,
        poll_interval: float = 1.0,
        heartbeat: timedelta = DEFAULT_HEARTBEAT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise InvalidInput("poll_interval", "must be positive")
        self.db = db
        self.handler = handler
        self.worker_id = worker_id or default_worker_id()
        self.task_types = list(task_types) if task_types else None
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.max_attempts = max_attempts
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._signals = 0
        self._running_in: int | None = None
        self._on_event = on_event or (lambda line: log.info("%s", line))

    def stop(self) -> None:
        """Finish the current task, then stop."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: first stops after the current task; second releases it and stops."""

        def handle(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            self._stop.set()
            if self._signals > 1 and self._running_in == threading.get_ident():
                raise _Released()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self, *, once: bool = False, drain: bool = False) -> WorkerStats:
        """Process tasks.  ``once``: at most one task.  ``drain``: stop when nothing is ready."""
        while not self._stop.is_set():
            task = self.db.tasks.claim(self.worker_id, self.task_types)
            if task is None:
                if once or drain:
                    break
                self._stop.wait(self.poll_interval)
                continue
            self._process(task)
            if once:
                break
        return self.stats

    def _process(self, task: Task) -> None:
        self._on_event(f"claimed {task.task_type} {task.id} (attempt {task.attempts})")
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(task, beating), daemon=True)
        beat.start()
        self._running_in = threading.get_ident()
        try:
            try:
                location = self.handler(task)
            finally:
                self._running_in = None
                beating.set()
                beat.join()
        except _Released:
            self._finish(lambda: self.db.tasks.release_claim(task.id, self.worker_id), "released")
            return
        except Exception as exc:  # the handler's failure is the task's failure
            error = f"{type(exc).__name__}: {exc}"
            self._finish(
                lambda: self.db.tasks.fail(
                    task.id, self.worker_id, error, retry=True, max_attempts=self.max_attempts
                ),
                "failed",
            )
            return
        if not isinstance(location, str) or not location:
            self._finish(
                lambda: self.db.tasks.fail(
                    task.id, self.worker_id, "handler returned no output location"
                ),
                "failed",
            )
            return
        self._finish(lambda: self.db.tasks.complete(task.id, self.worker_id, location), "completed")

    def _finish(self, action: Callable[[], Task], verb: str) -> None:
        try:
            task = action()
        except Conflict as exc:  # cancelled or requeued meanwhile: nothing to record
            self._on_event(f"could not record result: {exc}")
            return
        except DualdbError as exc:
            # The database refused or was unreachable: keep working; the task stays claimed
            # and requeue_stale hands it to a worker again once its heartbeat is old.
            self._on_event(f"could not record result ({type(exc).__name__}): {exc}")
            return
        getattr(self.stats, verb).append(task)
        self._on_event(f"{verb} {task.task_type} {task.id} → {task.status}")

    def _beat(self, task: Task, done: threading.Event) -> None:
        while not done.wait(self.heartbeat.total_seconds()):
            try:
                self.db.tasks.heartbeat(task.id, self.worker_id)
            except DualdbError as exc:
                self._on_event(f"heartbeat failed: {exc}")
