"""Bulk setup for the benchmarks, written with the raw driver (setup is never timed).

Finished and blocked tasks are inserted directly (``executemany`` on SQLite, ``COPY`` on
Postgres); the database's triggers fill in their ``task_dependencies`` edges and
``unmet_dependencies`` counters, as for any writer; :meth:`Loader.readiness_mismatches`
checks that they agree.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import uuid_utils.compat as uuid_utils

from benchmarks.targets import backend_of, psycopg_dsn, sqlite_path
from dualdb.types import format_timestamp


@dataclass(frozen=True)
class BulkTask:
    """One row of ``tasks`` to bulk-load (plus its dependency edges)."""

    id: uuid.UUID
    status: str
    deps: tuple[uuid.UUID, ...] = ()
    unmet: int = 0
    worker: str | None = None
    attempts: int = 0
    location: str | None = None
    error: str | None = None


def _new_id() -> uuid.UUID:
    return uuid_utils.uuid7()


def finished_tasks(n: int, chain_length: int) -> list[BulkTask]:
    """``n`` finished tasks in dependency chains.

    Nine chains in ten are all ``Complete``; every tenth has a ``Failed`` head and
    ``Cancelled`` members (whose one dependency never completed, so their counter is 1).
    """
    rows: list[BulkTask] = []
    chain = 0
    while len(rows) < n:
        failed = chain % 10 == 9
        prev: uuid.UUID | None = None
        for i in range(min(chain_length, n - len(rows))):
            deps = () if prev is None else (prev,)
            if failed:
                row = BulkTask(
                    _new_id(),
                    "Failed" if i == 0 else "Cancelled",
                    deps,
                    unmet=len(deps),
                    worker="old-worker" if i == 0 else None,
                    attempts=1 if i == 0 else 0,
                    error="boom" if i == 0 else "cancelled: dependency failed",
                )
            else:
                row = BulkTask(
                    _new_id(),
                    "Complete",
                    deps,
                    worker="old-worker",
                    attempts=1,
                    location="files/old.mp4",
                )
            rows.append(row)
            prev = row.id
        chain += 1
    return rows


def ready_tasks(n: int) -> list[BulkTask]:
    """``n`` claimable tasks (``Queued``, no dependencies)."""
    return [BulkTask(_new_id(), "Queued") for _ in range(n)]


def blocked_tasks(n: int, chain_length: int, fan_in: int) -> list[BulkTask]:
    """``n`` tasks that cannot run: long chains behind an unfinished head, and fan-ins.

    Each chain's head is held (``Pending``) or still running (``In Progress`` on a worker that
    never finishes); every other member is ``Queued`` waiting for the one before.  After every
    ``fan_in`` chains, one ``Queued`` task waits for all of their tails.
    """
    rows: list[BulkTask] = []
    tails: list[uuid.UUID] = []
    chain = 0
    while len(rows) < n:
        prev: uuid.UUID | None = None
        for _ in range(min(chain_length, n - len(rows))):
            if prev is None:
                running = chain % 2 == 1
                row = BulkTask(
                    _new_id(),
                    "In Progress" if running else "Pending",
                    worker="ghost-worker" if running else None,
                    attempts=1 if running else 0,
                )
            else:
                row = BulkTask(_new_id(), "Queued", (prev,), unmet=1)
            rows.append(row)
            prev = row.id
        assert prev is not None
        tails.append(prev)
        chain += 1
        if len(tails) == fan_in and len(rows) < n:
            rows.append(BulkTask(_new_id(), "Queued", tuple(tails), unmet=len(tails)))
            tails = []
    return rows


_TASK_INSERT_COLUMNS = (
    "id, task_type, params, status, dependant_on, created_at, updated_at, project_id, "
    "worker_id, attempts, error, output_location, unmet_dependencies"
)


class Loader:
    """Raw setup and inspection of one benchmark database."""

    def __init__(self, url: str) -> None:
        self.backend = backend_of(url)
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[tuple[object, ...]] | None = None
        if self.backend == "sqlite":
            self._sqlite = sqlite3.connect(sqlite_path(url), timeout=30, isolation_level=None)
            self._sqlite.execute("PRAGMA foreign_keys=ON")
        else:
            self._pg = psycopg.connect(psycopg_dsn(url), autocommit=True)

    def _one(self, query: str) -> object:
        if self._sqlite is not None:
            row = self._sqlite.execute(query).fetchone()
        else:
            assert self._pg is not None
            row = self._pg.execute(query).fetchone()
        assert row is not None
        return row[0]

    def clear_tasks(self) -> None:
        """Remove every task (and edge); Postgres is left with no dead rows (``TRUNCATE``)."""
        if self._sqlite is not None:
            # The database refuses to delete a task unfinished ones wait for: finish them first
            # (edges go with their tasks).  Ready tasks are completed, pass by pass, before the
            # rest are cancelled, so that the cancel cascade (tasks_after_status) walks only
            # what is still waiting.  Before migration 0015 that cascade also read every
            # unfinished task of the table for each task cancelled: cancelling 100,000 ready
            # tasks in one UPDATE took hours.
            self._sqlite.execute("BEGIN IMMEDIATE")
            while self.finish_ready():
                pass
            self._sqlite.execute(
                "UPDATE tasks SET status = 'Cancelled' "
                "WHERE status IN ('Pending', 'Queued', 'In Progress')"
            )
            self._sqlite.execute("DELETE FROM tasks")
            self._sqlite.execute("COMMIT")
        else:
            assert self._pg is not None
            self._pg.execute("TRUNCATE task_dependencies, tasks CASCADE")

    def insert(self, project_id: uuid.UUID, rows: list[BulkTask], start: datetime) -> None:
        """Insert ``rows`` (created ``start``, ``start`` + 1 ms, …) and their edges."""
        stamps = [start + timedelta(milliseconds=i) for i in range(len(rows))]
        if self._sqlite is not None:
            conn = self._sqlite
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"INSERT INTO tasks ({_TASK_INSERT_COLUMNS}) "
                "VALUES (?, 'bench', '{}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        str(r.id),
                        r.status,
                        "[" + ",".join(f'"{d}"' for d in r.deps) + "]",
                        format_timestamp(at),
                        format_timestamp(at),
                        str(project_id),
                        r.worker,
                        r.attempts,
                        r.error,
                        r.location,
                        r.unmet,
                    )
                    for r, at in zip(rows, stamps, strict=True)
                ],
            )
            conn.execute("COMMIT")
            return
        assert self._pg is not None
        with (
            self._pg.transaction(),
            self._pg.cursor() as cur,
            cur.copy(f"COPY tasks ({_TASK_INSERT_COLUMNS}) FROM STDIN") as copy,
        ):
            for r, at in zip(rows, stamps, strict=True):
                copy.write_row(
                    (
                        r.id,
                        "bench",
                        "{}",
                        r.status,
                        "{" + ",".join(str(d) for d in r.deps) + "}",
                        at,
                        at,
                        project_id,
                        r.worker,
                        r.attempts,
                        r.error,
                        r.location,
                        r.unmet,
                    )
                )

    def settle(self, *, vacuum: bool = True) -> None:
        """Fresh planner statistics and no pending background work before measuring.

        Postgres: ``VACUUM ANALYZE`` (or only ``ANALYZE``), then a ``CHECKPOINT`` when allowed,
        so neither autovacuum nor the checkpointer flushes the bulk load during the timing.
        SQLite: a WAL checkpoint; it is left without ``sqlite_stat1``, as dualdb leaves it.
        """
        if self._sqlite is not None:
            self._sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        assert self._pg is not None
        verb = "VACUUM ANALYZE" if vacuum else "ANALYZE"
        self._pg.execute(f"{verb} tasks")
        self._pg.execute(f"{verb} task_dependencies")
        # Without superuser (or pg_checkpoint) the timing is only a little noisier.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            self._pg.execute("CHECKPOINT")

    def finish_ready(self) -> int:
        """Mark every ready task Complete in one ``UPDATE`` (as claims would, row by row).

        On Postgres each row leaves a dead entry in the partial index ``ix_tasks_ready`` until
        the next VACUUM; see :meth:`autovacuum`.
        """
        # Claimed, then completed: the database allows a task to complete only from In Progress.
        start = (
            "UPDATE tasks SET status = 'In Progress', worker_id = 'old-worker', attempts = 1 "
            "WHERE status = 'Queued' AND unmet_dependencies = 0"
        )
        finish = (
            "UPDATE tasks SET status = 'Complete', output_location = 'files/old.mp4' "
            "WHERE status = 'In Progress' AND worker_id = 'old-worker'"
        )
        if self._sqlite is not None:
            self._sqlite.execute(start)
            return self._sqlite.execute(finish).rowcount
        assert self._pg is not None
        self._pg.execute(start)
        return self._pg.execute(finish).rowcount

    def autovacuum(self, enabled: bool) -> None:
        """Postgres: switch autovacuum of ``tasks`` off (for a repeatable unvacuumed table)."""
        if self._pg is not None:
            self._pg.execute(
                "ALTER TABLE tasks SET (autovacuum_enabled = false)"
                if not enabled
                else "ALTER TABLE tasks RESET (autovacuum_enabled)"
            )

    def readiness_mismatches(self) -> int:
        """Tasks whose counter or edges disagree with ``dependant_on`` (0 when consistent)."""
        wrong_counter = self._one(
            "SELECT count(*) FROM tasks t WHERE t.unmet_dependencies <> ("
            "SELECT count(*) FROM task_dependencies e JOIN tasks d ON d.id = e.dependency_id "
            "WHERE e.task_id = t.id AND d.status <> 'Complete')"
        )
        length = "json_array_length" if self.backend == "sqlite" else "cardinality"
        listed = self._one(f"SELECT coalesce(sum({length}(dependant_on)), 0) FROM tasks")
        edges = self._one("SELECT count(*) FROM task_dependencies")
        return int(str(wrong_counter)) + abs(int(str(listed)) - int(str(edges)))

    def count(self, where: str = "1 = 1") -> int:
        """Tasks matching a SQL condition."""
        return int(str(self._one(f"SELECT count(*) FROM tasks WHERE {where}")))

    def close(self) -> None:
        """Close the connection."""
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()
