"""The floor: the same work as dualdb, hand-written for plain ``sqlite3`` and psycopg 3.

Each class does what a careful author would write without an ORM, on the schema dualdb's
migrations create:

* ``get_project``: one ``SELECT … WHERE id = ?``;
* ``create_project`` / ``update_project`` / ``delete_project``: one ``INSERT … RETURNING`` /
  ``UPDATE … RETURNING`` / ``DELETE`` (autocommit: a single statement is atomic on its own);
* ``list_projects``: one keyset page, ``ORDER BY created_at, id LIMIT n + 1``;
* ``insert_tasks`` / ``copy_tasks``: ``executemany`` in one transaction / ``COPY`` (Postgres);
* ``scan_tasks``: a keyset scan, pages of 500 ordered by ``(created_at, id)``;

The reads and writes of projects and tasks return dualdb's own record classes, converted the way
a hand-writer would (``uuid.UUID``, ``datetime.fromisoformat``, ``json.loads`` on SQLite; what
psycopg's loaders give on Postgres), so both sides do the same type conversion.  The queue's
verbs return plain tuples.  Further:
* ``claim``: the oldest ready task (``status = 'Queued' AND unmet_dependencies = 0``, read
  from the same partial index), set ``In Progress`` with worker, times and attempts + 1, in one
  ``UPDATE … RETURNING`` — under ``BEGIN IMMEDIATE`` on SQLite, with ``FOR UPDATE SKIP
  LOCKED`` on Postgres;
* ``complete``: status ``Complete`` + ``output_location`` for the claiming worker only, in
  one statement (the database's triggers decrement the dependents' counters, for any writer).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from benchmarks.targets import backend_of, psycopg_dsn, sqlite_path
from dualdb.records import Project, Task

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
DELETE_PROJECT = "DELETE FROM projects WHERE id = {p}"
LIST_PROJECTS = (
    f"SELECT {PROJECT_COLUMNS} FROM projects WHERE user_id = {{p}} "
    "ORDER BY created_at, id LIMIT {p}"
)
#: The columns of :class:`dualdb.records.Task`, in its field order.
TASK_RECORD_COLUMNS = (
    "id, project_id, task_type, params, status, dependant_on, output_location, created_at, "
    "updated_at, worker_id, attempts, error, generation_started_at, heartbeat_at, "
    "generation_processed_at"
)
SCAN_FIRST = (
    f"SELECT {TASK_RECORD_COLUMNS} FROM tasks WHERE project_id = {{p}} "
    "ORDER BY created_at, id LIMIT {p}"
)
SCAN_NEXT = (
    f"SELECT {TASK_RECORD_COLUMNS} FROM tasks WHERE project_id = {{p}} "
    "AND (created_at, id) > ({p}, {p}) ORDER BY created_at, id LIMIT {p}"
)
#: Rows per page of the raw keyset scan (dualdb's ``iter`` default).
SCAN_BATCH = 500
BULK_COLUMNS = "id, project_id, task_type, params, status, dependant_on, created_at"
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


def _ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _sqlite_project(row: tuple[Any, ...]) -> Project:
    return Project(
        uuid.UUID(row[0]), row[1], uuid.UUID(row[2]), datetime.fromisoformat(row[3]), _ts(row[4])
    )


def _sqlite_task(row: tuple[Any, ...]) -> Task:
    return Task(
        uuid.UUID(row[0]),
        uuid.UUID(row[1]),
        row[2],
        json.loads(row[3]),
        row[4],
        [uuid.UUID(d) for d in json.loads(row[5])],
        row[6],
        datetime.fromisoformat(row[7]),
        _ts(row[8]),
        row[9],
        row[10],
        row[11],
        _ts(row[12]),
        _ts(row[13]),
        _ts(row[14]),
    )


#: One new task of a bulk insert: id, project id, type, params, created_at.
BulkRow = tuple[uuid.UUID, uuid.UUID, str, dict[str, Any], datetime]


class RawDriver(Protocol):
    """What the benchmarks ask of a raw-driver implementation."""

    def get_project(self, project_id: uuid.UUID) -> Project | None:
        """The project, or None."""

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> Project:
        """Insert a project; the row as stored."""

    def update_project(self, key: uuid.UUID, name: str) -> Any:
        """Rename a project; the row as stored, or None."""

    def delete_project(self, key: uuid.UUID) -> int:
        """Delete a project; the number of rows deleted."""

    def list_projects(self, user_id: uuid.UUID, limit: int) -> list[Project]:
        """The first ``limit`` projects of ``user_id`` (one keyset page)."""

    def insert_tasks(self, rows: Sequence[BulkRow]) -> None:
        """Insert new ``Queued`` tasks with ``executemany``, in one transaction."""

    def scan_tasks(self, project_id: uuid.UUID) -> Iterator[Task]:
        """Every task of a project, by keyset pages of :data:`SCAN_BATCH`."""

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
        self._delete = DELETE_PROJECT.format(p="?")
        self._list = LIST_PROJECTS.format(p="?")

    def get_project(self, project_id: uuid.UUID) -> Project | None:
        """One ``SELECT`` in autocommit mode."""
        row = self.conn.execute(self._get, (str(project_id),)).fetchone()
        return None if row is None else _sqlite_project(row)

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> Project:
        """One ``INSERT … RETURNING`` in autocommit mode."""
        params = (str(key), name, str(user_id), sqlite_now())
        return _sqlite_project(self.conn.execute(self._create, params).fetchone())

    def update_project(self, key: uuid.UUID, name: str) -> Project | None:
        """One ``UPDATE … RETURNING`` in autocommit mode."""
        params = (name, sqlite_now(), str(key))
        row = self.conn.execute(self._update, params).fetchone()
        return None if row is None else _sqlite_project(row)

    def delete_project(self, key: uuid.UUID) -> int:
        """One ``DELETE`` in autocommit mode."""
        return self.conn.execute(self._delete, (str(key),)).rowcount

    def list_projects(self, user_id: uuid.UUID, limit: int) -> list[Project]:
        """One page: ``limit + 1`` rows read (whether there is more), ``limit`` returned."""
        rows = self.conn.execute(self._list, (str(user_id), limit + 1)).fetchall()
        return [_sqlite_project(r) for r in rows[:limit]]

    def insert_tasks(self, rows: Sequence[BulkRow]) -> None:
        """``executemany`` of one ``INSERT`` in a ``BEGIN IMMEDIATE`` transaction."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO tasks ({BULK_COLUMNS}) VALUES (?, ?, ?, ?, 'Queued', '[]', ?)",
                [
                    (
                        str(key),
                        str(project),
                        kind,
                        json.dumps(params, separators=(",", ":")),
                        at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    )
                    for key, project, kind, params, at in rows
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def scan_tasks(self, project_id: uuid.UUID) -> Iterator[Task]:
        """Keyset pages of :data:`SCAN_BATCH` rows, each converted to a :class:`Task`."""
        first, after = SCAN_FIRST.format(p="?"), SCAN_NEXT.format(p="?")
        key = str(project_id)
        rows = self.conn.execute(first, (key, SCAN_BATCH)).fetchall()
        while rows:
            yield from (_sqlite_task(r) for r in rows)
            if len(rows) < SCAN_BATCH:
                return
            last = rows[-1]
            rows = self.conn.execute(after, (key, last[7], last[0], SCAN_BATCH)).fetchall()

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
        self._delete = DELETE_PROJECT.format(p="%s")
        self._list = LIST_PROJECTS.format(p="%s")

    def get_project(self, project_id: uuid.UUID) -> Project | None:
        """One ``SELECT`` (prepared by psycopg after a few runs, as dualdb's are)."""
        row = self.conn.execute(self._get, (project_id,)).fetchone()
        return None if row is None else Project(*row)

    def create_project(self, key: uuid.UUID, name: str, user_id: uuid.UUID) -> Project:
        """One autocommit ``INSERT … RETURNING``."""
        row = self.conn.execute(self._create, (key, name, user_id, datetime.now(UTC))).fetchone()
        assert row is not None
        return Project(*row)

    def update_project(self, key: uuid.UUID, name: str) -> Project | None:
        """One autocommit ``UPDATE … RETURNING``."""
        row = self.conn.execute(self._update, (name, datetime.now(UTC), key)).fetchone()
        return None if row is None else Project(*row)

    def delete_project(self, key: uuid.UUID) -> int:
        """One autocommit ``DELETE``."""
        return self.conn.execute(self._delete, (key,)).rowcount

    def list_projects(self, user_id: uuid.UUID, limit: int) -> list[Project]:
        """One page: ``limit + 1`` rows read (whether there is more), ``limit`` returned."""
        rows = self.conn.execute(self._list, (user_id, limit + 1)).fetchall()
        return [Project(*r) for r in rows[:limit]]

    def insert_tasks(self, rows: Sequence[BulkRow]) -> None:
        """``executemany`` (psycopg pipelines it) in one transaction."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO tasks ({BULK_COLUMNS}) "
                "VALUES (%s, %s, %s, %s::jsonb, 'Queued', '{}', %s)",
                [
                    (key, project, kind, json.dumps(params, separators=(",", ":")), at)
                    for key, project, kind, params, at in rows
                ],
            )

    def copy_tasks(self, rows: Sequence[BulkRow]) -> None:
        """``COPY tasks … FROM STDIN`` in one transaction (the row triggers fire as usual)."""
        with (
            self.conn.transaction(),
            self.conn.cursor() as cur,
            cur.copy(f"COPY tasks ({BULK_COLUMNS}) FROM STDIN") as copy,
        ):
            for key, project, kind, params, at in rows:
                copy.write_row(
                    (key, project, kind, json.dumps(params, separators=(",", ":")), "Queued",
                     "{}", at)
                )  # fmt: skip

    def scan_tasks(self, project_id: uuid.UUID) -> Iterator[Task]:
        """Keyset pages of :data:`SCAN_BATCH` rows, each built into a :class:`Task`."""
        first, after = SCAN_FIRST.format(p="%s"), SCAN_NEXT.format(p="%s")
        rows = self.conn.execute(first, (project_id, SCAN_BATCH)).fetchall()
        while rows:
            yield from (Task(*r) for r in rows)
            if len(rows) < SCAN_BATCH:
                return
            last = rows[-1]
            rows = self.conn.execute(after, (project_id, last[7], last[0], SCAN_BATCH)).fetchall()

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
