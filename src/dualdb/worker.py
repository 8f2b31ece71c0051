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
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType

from dualdb import validation as v
from dualdb.backends import WorkWaiter
from dualdb.database import Database
from dualdb.errors import Conflict, DualdbError, InvalidInput
from dualdb.queue import DEFAULT_MAX_ATTEMPTS
from dualdb.records import Task

log = logging.getLogger("dualdb.worker")

Handler = Callable[[Task], str]

#: How often a running task's heartbeat is written.
DEFAULT_HEARTBEAT = timedelta(seconds=10)
#: A running task whose heartbeat is older than this many heartbeat intervals is stale: its
#: worker died, and maintenance gives it back to the queue.
STALE_AFTER_HEARTBEATS = 6
#: How often a worker runs maintenance (``requeue_stale`` and a SQLite WAL checkpoint).
DEFAULT_MAINTENANCE_INTERVAL = timedelta(seconds=60)
#: Backoff after a database error: the first wait, and the cap (seconds).  Each wait doubles
#: and is jittered down by up to half, so workers that lost the database together do not
#: come back in lockstep.
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 30.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive database errors (capped, jittered)."""
    base = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 20))
    return base * random.uniform(0.5, 1.0)


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
        stale_after: timedelta | None = None,
        maintenance_interval: timedelta = DEFAULT_MAINTENANCE_INTERVAL,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise InvalidInput("poll_interval", "must be a positive number of seconds")
        if not isinstance(heartbeat, timedelta) or heartbeat <= timedelta(0):
            # Zero would write heartbeats in a tight loop for the whole task.
            raise InvalidInput("heartbeat", "must be a positive interval")
        if not isinstance(maintenance_interval, timedelta) or maintenance_interval <= timedelta(0):
            raise InvalidInput("maintenance_interval", "must be a positive interval")
        if stale_after is not None and (
            not isinstance(stale_after, timedelta) or stale_after <= timedelta(0)
        ):
            raise InvalidInput("stale_after", "must be a positive interval")
        self.db = db
        self.handler = handler
        self.worker_id = worker_id or default_worker_id()
        self.task_types = v.task_types("task_types", task_types)
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.max_attempts = v.non_negative_int("max_attempts", max_attempts, maximum=v.MAX_ATTEMPTS)
        #: Tasks whose heartbeat is older than this are requeued by maintenance.
        self.stale_after = stale_after or heartbeat * STALE_AFTER_HEARTBEATS
        self.maintenance_interval = maintenance_interval
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
        """Process tasks.  ``once``: at most one task.  ``drain``: stop when nothing is ready.

        When nothing is ready the worker waits on :meth:`Database.work_waiter` — it wakes as
        soon as a task may have become ready (``LISTEN``/``NOTIFY`` on Postgres, ``PRAGMA
        data_version`` on SQLite), and claims again every ``poll_interval`` regardless (the
        only wake-up behind Supabase's transaction pooler).

        Maintenance runs first and then every ``maintenance_interval``: tasks of workers that
        stopped heartbeating go back to the queue, and SQLite's WAL is checkpointed.  A
        database error (unreachable, busy, restarting) never ends the loop: the worker waits
        with capped, jittered backoff and tries again.
        """
        if once or drain:  # never waits for work: no connection to listen on
            return self._loop(WorkWaiter(), once=once, drain=drain)
        with self._waiter() as waiter:
            return self._loop(waiter, once=once, drain=drain)

    def _waiter(self) -> WorkWaiter:
        """Built before the first claim, so a change made after any claim wakes the worker."""
        try:
            waiter = self.db.work_waiter()
        except DualdbError as exc:  # the database is away: poll until it is back
            self._on_event(f"waking on change unavailable ({exc}); polling")
            return WorkWaiter()
        self._on_event(f"waiting for work: {waiter.mode}")
        return waiter

    def _loop(self, waiter: WorkWaiter, *, once: bool, drain: bool) -> WorkerStats:
        failures = 0
        maintain_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() >= maintain_at:
                    self._maintain()
                    maintain_at = time.monotonic() + self.maintenance_interval.total_seconds()
                task = self.db.tasks.claim(self.worker_id, self.task_types)
            except DualdbError as exc:
                failures += 1
                delay = backoff_delay(failures)
                self._on_event(
                    f"database error ({type(exc).__name__}: {exc}); retrying in {delay:.1f}s"
                )
                self._stop.wait(delay)
                continue
            failures = 0
            if task is None:
                if once or drain:
                    break
                # Until a change may have made work ready (a NOTIFY, a commit to the file)
                # or, at the latest, the poll interval.
                waiter.wait(self.poll_interval, self._stop)
                continue
            self._process(task)
            if once:
                break
        return self.stats

    def _maintain(self) -> None:
        for task in self.db.tasks.requeue_stale(self.stale_after, max_attempts=self.max_attempts):
            self._on_event(f"stale {task.task_type} {task.id} → {task.status}")
        self.db.checkpoint()

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
