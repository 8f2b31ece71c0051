"""The floor: the same work as dualdb, hand-written for plain ``sqlite3`` and psycopg 3.

Each class does what a careful author would write without an ORM, on the schema dualdb's
migrations create:

* ``get_project``: one ``SELECT … WHERE id = ?``;
* ``create_project`` / ``update_project``: one ``INSERT … RETURNING`` / ``UPDATE … RETURNING``
  (autocommit: a single statement is atomic on its own);
* ``claim``: the oldest ready task (``status = 'Queued' AND unmet_dependencies = 0``, read
  from the same partial index), set ``In Progress`` with worker, times and attempts + 1, in one
  ``UPDATE … RETURNING`` — under ``BEGIN IMMEDIATE`` on SQLite, with ``FOR UPDATE SKIP
  LOCKED`` on Postgres;
* ``complete``: status ``Complete`` + ``output_location`` for the claiming worker only, in
  one statement (the database's triggers decrement the dependents' counters, for any writer).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from benchmarks.targets import backend_of, psycopg_dsn, sqlite_path

#: Every column of ``tasks`` (what dualdb's ``RETURNING`` hands back too).
TASK_COLUMNS = (
    "id, task_type, params, status, dependant_on, output_location, created_at, updated_at, "
    "project_id, worker_id, attempts, error, generation_started_at, heartbeat_at, "
    "generation_processed_at, unmet_dependencies"
)
READY = "status = 'Queued' AND unmet_dependencies = 0"
PROJECT_COLUMNS = "id, name, user_id, created_at, updated_at"
GET_PROJECT = f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = {{p}}"
CREATE_PROJECT = (
    "INSERT INTO projects (id, name, user_id, created_at) VALUES ({p}, {p}, {p}, {p}) "
    f"RETURNING {PROJECT_COLUMNS}"
)
UPDATE_PROJECT = (
    "UPDATE projects SET name = {p}, updated_at = {p} WHERE id = {p} "
    f"RETURNING {PROJECT_COLUMNS}"
)

SQLITE_CLAIM = (
    "UPDATE tasks SET status = 'In Progress', worker_id = ?, generation_started_at = ?, "
    "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1 "
    f"WHERE id = (SELECT id FROM tasks WHERE {READY} ORDER BY created_at, id LIMIT 1) "
    f"RETURNING {TASK_COLUMNS}"
)
SQLITE_COMPLETE = (
    "UPDATE tasks SET status = 'Complete', output_location = ?, updated_at = ?, error = NULL "
    "WHERE id = ? AND status = 'In Progress' AND worker_id = ? "
    f"RETURNING {TASK_COLUMNS}"
)

PG_CLAIM = (
    "UPDATE tasks SET status = 'In Progress', worker_id = %s, "
    "generation_started_at = clock_timestamp(), heartbeat_at = clock_timestamp(), "
    "updated_at = clock_timestamp(), attempts = attempts + 1 "
    f"WHERE id = (SELECT id FROM tasks WHERE {READY} ORDER BY created_at, id LIMIT 1 "
    f"FOR UPDATE SKIP LOCKED) RETURNING {TASK_COLUMNS}"
)
PG_COMPLETE = (
    "UPDATE tasks SET status = 'Complete', output_location = %s, "
    "updated_at = clock_timestamp(), error = NULL "
    "WHERE id = %s AND status = 'In Progress' AND worker_id = %s "
    f"RETURNING {TASK_COLUMNS}"
)


def sqlite_now() -> str:
    """Now, in dualdb's fixed-width SQLite timestamp text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RawDriver(Protocol):
    """What the benchmarks ask of a raw-driver implementation."""

    def get_project(self, project_id: uuid.UUID) -> tuple[Any, ...] | None:
        """The project row, or None."""

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> tuple[Any, ...]:
        """Insert a project; the row as stored."""

    def update_project(self, key: uuid.UUID, name: str) -> tuple[Any, ...] | None:
        """Rename a project; the row as stored, or None."""

    def claim(self, worker: str) -> tuple[Any, ...] | None:
        """Claim the oldest ready task; its row (``row[0]`` is the id) or None."""

    def complete(self, task_id: Any, worker: str, location: str) -> None:
        """Complete a task claimed by ``worker`` and release its dependents."""

    def queued_left(self) -> bool:
        """Whether any task is still Queued (ready or not)."""

    def close(self) -> None:
        """Close the connection."""


class RawSqlite:
    """Plain ``sqlite3``, connection set up as dualdb sets up its own (WAL, busy timeout…)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        for pragma in (
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
        ):
            self.conn.execute(pragma)
        self._get = GET_PROJECT.format(p="?")
        self._create = CREATE_PROJECT.format(p="?")
        self._update = UPDATE_PROJECT.format(p="?")

    def get_project(self, project_id: uuid.UUID) -> tuple[Any, ...] | None:
        """One ``SELECT`` in autocommit mode."""
        row: tuple[Any, ...] | None = self.conn.execute(self._get, (str(project_id),)).fetchone()
        return row

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> tuple[Any, ...]:
        """One ``INSERT … RETURNING`` in autocommit mode."""
        params = (str(key), name, str(user_id), sqlite_now())
        row: tuple[Any, ...] = self.conn.execute(self._create, params).fetchone()
        return row

    def update_project(self, key: uuid.UUID, name: str) -> tuple[Any, ...] | None:
        """One ``UPDATE … RETURNING`` in autocommit mode."""
        params = (name, sqlite_now(), str(key))
        row: tuple[Any, ...] | None = self.conn.execute(self._update, params).fetchone()
        return row

    def claim(self, worker: str) -> tuple[Any, ...] | None:
        """``BEGIN IMMEDIATE`` + ``UPDATE … RETURNING`` + ``COMMIT``."""
        now = sqlite_now()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(SQLITE_CLAIM, (worker, now, now, now)).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return rows[0] if rows else None

    def complete(self, task_id: Any, worker: str, location: str) -> None:
        """Status + location, then the dependents' counters, in one ``BEGIN IMMEDIATE``."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                SQLITE_COMPLETE, (location, sqlite_now(), task_id, worker)
            ).fetchall()
            if not done:
                raise RuntimeError(f"task {task_id} is not In Progress for {worker}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def queued_left(self) -> bool:
        """``EXISTS`` over the status index."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'Queued')"
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class RawPostgres:
    """Plain psycopg 3: autocommit for single statements, a transaction for ``complete``."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self._get = GET_PROJECT.format(p="%s")
        self._create = CREATE_PROJECT.format(p="%s")
        self._update = UPDATE_PROJECT.format(p="%s")

    def get_project(self, project_id: uuid.UUID) -> tuple[Any, ...] | None:
        """One ``SELECT`` (prepared by psycopg after a few runs, as dualdb's are)."""
        return self.conn.execute(self._get, (project_id,)).fetchone()

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> tuple[Any, ...]:
        """One autocommit ``INSERT … RETURNING``."""
        row = self.conn.execute(self._create, (key, name, user_id, datetime.now(UTC))).fetchone()
        assert row is not None
        return row

    def update_project(self, key: uuid.UUID, name: str) -> tuple[Any, ...] | None:
        """One autocommit ``UPDATE … RETURNING``."""
        return self.conn.execute(self._update, (name, datetime.now(UTC), key)).fetchone()

    def claim(self, worker: str) -> tuple[Any, ...] | None:
        """One autocommit ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``."""
        return self.conn.execute(PG_CLAIM, (worker,)).fetchone()

    def complete(self, task_id: Any, worker: str, location: str) -> None:
        """Status + location, then the dependents' counters, in one transaction."""
        with self.conn.transaction():
            done = self.conn.execute(PG_COMPLETE, (location, task_id, worker)).fetchone()
            if done is None:
                raise RuntimeError(f"task {task_id} is not In Progress for {worker}")

    def queued_left(self) -> bool:
        """``EXISTS`` over the status index."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'Queued')"
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def open_raw(url: str) -> RawDriver:
    """A raw driver on the database at ``url`` (a dualdb URL)."""
    if backend_of(url) == "sqlite":
        return RawSqlite(sqlite_path(url))
    return RawPostgres(psycopg_dsn(url))
