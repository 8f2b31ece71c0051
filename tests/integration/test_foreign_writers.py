"""Writers that bypass dualdb: the queue's rules hold whoever writes (migration 0006).

Every test writes with plain SQL only — a ``sqlite3`` connection on the SQLite file (foreign
keys off, the default of every other program, and on) or a psycopg connection to Postgres —
interleaved with dualdb's own calls, and checks the database's verdicts: the same rows, and
refusals with the same message text on both backends.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import dualdb
from dualdb import Conflict, InvalidInput, integrity
from dualdb.database import Database
from tests.integration.dal_support import snapshot
from tests.integration.test_queue_concurrency import _enqueue_dag

# --- the verdicts, as every writer reads them (the same text on both backends) -------------

PARAMS_OBJECT = "invalid params: must be a JSON object"
PARAMS_LIMITS = (
    "invalid params: nested deeper than 64 levels, or a number outside the 64-bit float range"
)
DEPS_SHAPE = "invalid dependant_on: must be an array of task ids (canonical UUIDs, no nulls)"
DEPS_SELF = "invalid dependant_on: a task cannot depend on itself"
DEPS_PROJECT = "invalid dependant_on: names a task that is not in this project"
DEPS_DEAD = "invalid dependant_on: names a Failed or Cancelled task, which will never complete"
DEPS_CYCLE = "invalid dependant_on: would make a dependency cycle"
DEPS_STARTED = "conflict: the dependencies of a started or finished task cannot change"
ATTEMPTS = "invalid attempts: must be a non-negative integer"
UNMET = "conflict: unmet_dependencies is kept by the database (it counts unfinished dependencies)"
TRANSITION = (
    "conflict: status change not allowed (Pending -> Queued|Cancelled, Queued -> In Progress|"
    "Pending|Cancelled, In Progress -> Complete|Failed|Queued|Cancelled; finished tasks never "
    "change)"
)
NOT_READY = "conflict: a task cannot start or complete before every dependency is Complete"
DELETE = "conflict: unfinished tasks depend on this task: cancel it (that cascades) before deleting"
EDGES = "conflict: task_dependencies is kept by the database from tasks.dependant_on"
GEN_TASKS = "invalid tasks: must be an array of task ids (canonical UUIDs, no nulls)"
ID_FIXED = "conflict: the id of a task never changes"
DEPS_MOVE = "conflict: tasks of its project depend on this task: it cannot move to another"

STATUSES = ("Pending", "Queued", "In Progress", "Complete", "Failed", "Cancelled")
UNFINISHED = ("Pending", "Queued", "In Progress")
ALLOWED = {
    "Pending": {"Queued", "Cancelled"},
    "Queued": {"In Progress", "Pending", "Cancelled"},
    "In Progress": {"Complete", "Failed", "Queued", "Cancelled"},
}


def stamp() -> str:
    """Now, as the fixed-width UTC text both backends take (SQLite requires exactly this)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


class Plain:
    """One connection of another program, writing plain SQL in autocommit mode.

    SQLite: the ``sqlite3`` module on the file, with ``foreign_keys`` as asked (off is what
    every other program gets).  Postgres: psycopg (foreign keys are always enforced there).
    Statements are written once with ``?`` placeholders.
    """

    def __init__(self, url: str, *, foreign_keys: bool = False) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        if self.backend == "sqlite":
            self._sqlite = sqlite3.connect(parsed.database or "", timeout=30, isolation_level=None)
            self._sqlite.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            self.foreign_keys = foreign_keys
        else:
            self._pg = psycopg.connect(url, autocommit=True)
            self.foreign_keys = True

    def __repr__(self) -> str:
        keys = "foreign keys on" if self.foreign_keys else "foreign keys off"
        return f"Plain({self.backend}, {keys})"

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()

    # --- statements ------------------------------------------------------------------

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (UUIDs as text)."""
        if self._sqlite is not None:
            cur: Any = self._sqlite.execute(sql, params)
        else:
            assert self._pg is not None
            cur = self._pg.execute(sql.replace("?", "%s"), params or None)
        rows = cur.fetchall() if cur.description else []
        return [tuple(_plain_value(v) for v in row) for row in rows]

    def write(self, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it changed."""
        if self._sqlite is not None:
            return int(self._sqlite.execute(sql, params).rowcount)
        assert self._pg is not None
        return int(self._pg.execute(sql.replace("?", "%s"), params or None).rowcount)

    def refused(self, sql: str, *params: Any) -> str:
        """Run a write that the database must refuse; the refusal's message.

        A refusal by the queue's rules is ``sqlite3.IntegrityError`` (a trigger's RAISE) on
        SQLite, and SQLSTATE 22023 (``invalid …``) or 23000 (``conflict: …``) on Postgres.
        """
        try:
            self.execute(sql, *params)
        except sqlite3.Error as err:
            assert isinstance(err, sqlite3.IntegrityError), f"{self}: {err!r}"
            assert err.sqlite_errorname == "SQLITE_CONSTRAINT_TRIGGER", f"{self}: {err!r}"
            return str(err)
        except psycopg.Error as err:
            message = err.diag.message_primary or ""
            expected = "22023" if message.startswith("invalid ") else "23000"
            assert err.sqlstate == expected, f"{self}: {err.sqlstate} {message}"
            return message
        raise AssertionError(f"{self} was allowed to write: {sql} {params}")

    def scalar(self, sql: str, *params: Any) -> Any:
        rows = self.execute(sql, *params)
        return rows[0][0] if rows else None

    # --- values ----------------------------------------------------------------------

    def ids(self, ids: Sequence[Any]) -> str:
        """A UUID array as text: JSON on SQLite, an array literal on Postgres."""
        if self.backend == "sqlite":
            return json.dumps([str(i) for i in ids])
        return "{" + ",".join(str(i) for i in ids) + "}"

    def now(self) -> str:
        """SQL for the writer's clock (Postgres' server clock; SQLite's, in dualdb's format)."""
        if self.backend == "sqlite":
            return "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')"
        return "clock_timestamp()"

    # --- the queue, as another program would run it ----------------------------------

    def insert_task(
        self,
        project_id: Any,
        *,
        deps: Sequence[Any] = (),
        status: str = "Queued",
        params: str = "{}",
        task_type: str = "plain",
        **columns: Any,
    ) -> str:
        """INSERT one task; its id."""
        values = {
            "id": str(uuid.uuid4()),
            "task_type": task_type,
            "params": params,
            "status": status,
            "dependant_on": self.ids(deps),
            "created_at": stamp(),
            "project_id": str(project_id),
            **columns,
        }
        marks = ", ".join("?" for _ in values)
        self.execute(f"INSERT INTO tasks ({', '.join(values)}) VALUES ({marks})", *values.values())
        return str(values["id"])

    def start(self, task_id: Any, worker: str = "plain") -> int:
        return self.write(
            f"UPDATE tasks SET status = 'In Progress', worker_id = ?, attempts = attempts + 1, "
            f"generation_started_at = {self.now()}, heartbeat_at = {self.now()} WHERE id = ?",
            worker,
            str(task_id),
        )

    def complete(self, task_id: Any, location: str, worker: str | None = None) -> int:
        """Complete a task this writer (or ``worker``) runs; 0 when it is not In Progress."""
        guard = "" if worker is None else " AND worker_id = ?"
        return self.write(
            f"UPDATE tasks SET status = 'Complete', output_location = ?, "
            f"updated_at = {self.now()} WHERE id = ? AND status = 'In Progress'{guard}",
            location,
            str(task_id),
            *(() if worker is None else (worker,)),
        )

    def claim(self, worker: str, types: Sequence[str] = ()) -> tuple[str, int] | None:
        """Take the oldest ready task (of one of ``types``, if given): (id, attempts), or None.

        SQLite: ``BEGIN IMMEDIATE`` then one ``UPDATE … RETURNING``, the clock read after the
        write lock is held.  Postgres: ``FOR UPDATE SKIP LOCKED`` and the server's clock.
        """
        mark = "?" if self._sqlite is not None else "%s"
        only = f" AND task_type IN ({', '.join([mark] * len(types))})" if types else ""
        if self._sqlite is not None:
            self._sqlite.execute("BEGIN IMMEDIATE")
            try:
                now = stamp()
                row = self._sqlite.execute(
                    "UPDATE tasks SET status = 'In Progress', worker_id = ?, "
                    "attempts = attempts + 1, generation_started_at = ?, heartbeat_at = ?, "
                    "updated_at = ? WHERE id = (SELECT id FROM tasks "
                    f"WHERE status = 'Queued' AND unmet_dependencies = 0{only} "
                    "ORDER BY created_at, id LIMIT 1) RETURNING id, attempts",
                    (worker, now, now, now, *types),
                ).fetchone()
                self._sqlite.execute("COMMIT")
            except BaseException:
                self._sqlite.execute("ROLLBACK")
                raise
        else:
            assert self._pg is not None
            row = self._pg.execute(
                "UPDATE tasks SET status = 'In Progress', worker_id = %s, "
                "attempts = tasks.attempts + 1, generation_started_at = pick.now, "
                "heartbeat_at = pick.now, updated_at = pick.now "
                "FROM (SELECT id, clock_timestamp() AS now FROM tasks "
                f"WHERE status = 'Queued' AND unmet_dependencies = 0{only} "
                "ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) AS pick "
                "WHERE tasks.id = pick.id RETURNING tasks.id, tasks.attempts",
                (worker, *types),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    # --- reading the raw state -------------------------------------------------------

    def tasks(self) -> dict[str, Row]:
        rows = self.execute(
            "SELECT id, status, dependant_on, unmet_dependencies, params, error, "
            "output_location, generation_processed_at, project_id FROM tasks"
        )
        out: dict[str, Row] = {}
        for r in rows:
            deps = json.loads(r[2]) if isinstance(r[2], str) else r[2]
            params = json.loads(r[4]) if isinstance(r[4], str) else r[4]
            out[r[0]] = Row(
                r[0], r[1], [str(d) for d in deps], r[3], params, r[5], r[6], r[7], r[8]
            )
        return out

    def edges(self) -> set[tuple[str, str]]:
        return {
            (a, b) for a, b in self.execute("SELECT task_id, dependency_id FROM task_dependencies")
        }

    def generations_of(self, task_id: Any) -> list[tuple[str, str | None, str | None]]:
        """(id, location, type) of each generation whose ``tasks`` is exactly [task_id]."""
        return [
            (gid, location, kind)
            for gid, tasks, location, kind in self.execute(
                "SELECT id, tasks, location, type FROM generations"
            )
            if (json.loads(tasks) if isinstance(tasks, str) else tasks) == [str(task_id)]
        ]

    def placements(self, shot_id: Any) -> list[tuple[str, int]]:
        """(generation id, position) on the shot, by position."""
        return [
            (g, p)
            for g, p in self.execute(
                "SELECT generation_id, position FROM shot_generations WHERE shot_id = ? "
                "ORDER BY position",
                str(shot_id),
            )
        ]


@dataclass
class Row:
    """A task as stored (ids as text)."""

    id: str
    status: str
    deps: list[str]
    unmet: int
    params: Any
    error: str | None
    output_location: str | None
    generation_processed_at: Any
    project_id: str


@dataclass
class Owner:
    """A user's project with a shot, and another project."""

    project: str
    shot: str
    other_project: str


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def writers(db: Database, migrated_url: str) -> Iterator[list[Plain]]:
    """Plain-SQL writers to try each rule with.

    SQLite: one connection with foreign keys off (what every other program gets) and one with
    them on.  Postgres: one connection.
    """
    modes = [False, True] if db.backend == "sqlite" else [True]
    opened = [Plain(migrated_url, foreign_keys=fk) for fk in modes]
    try:
        yield opened
    finally:
        for plain in opened:
            plain.close()


@pytest.fixture
def plain(writers: list[Plain]) -> Plain:
    """The plain writer every other program is: foreign keys off on SQLite."""
    return writers[0]


@pytest.fixture
def owner(db: Database) -> Owner:
    user = db.users.create(email="foreign@example.com")
    project = db.projects.create("Foreign", user.id)
    other = db.projects.create("Elsewhere", user.id)
    shot = db.shots.create(project.id, "Opening")
    return Owner(str(project.id), str(shot.id), str(other.id))


def _claimable(db: Database) -> set[str]:
    """Every task the DAL can claim now (claimed, then given back without using an attempt)."""
    taken: list[str] = []
    while (task := db.tasks.claim("probe")) is not None:
        taken.append(str(task.id))
    for key in taken:
        db.tasks.release_claim(key, "probe")
    return set(taken)


# --- readiness -----------------------------------------------------------------------------


def test_plain_inserts_get_their_edges_and_unmet_counts(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    for plain in writers:
        a = plain.insert_task(owner.project)
        b = plain.insert_task(owner.project, deps=[a])
        # A counter given by the writer is replaced by the truth.
        c = plain.insert_task(owner.project, deps=[a, b], unmet_dependencies=0)
        d = plain.insert_task(owner.project, deps=[b], status="Pending", unmet_dependencies=7)
        rows = plain.tasks()
        assert {k: rows[k].unmet for k in (a, b, c, d)} == {a: 0, b: 1, c: 2, d: 1}, plain
        assert {e for e in plain.edges() if e[0] in (a, b, c, d)} == {
            (b, a),
            (c, a),
            (c, b),
            (d, b),
        }
        # A dependency already Complete is not unmet.
        assert plain.start(a) == 1 and plain.complete(a, "files/a.png") == 1
        e = plain.insert_task(owner.project, deps=[a, b])
        assert plain.tasks()[e].unmet == 1
        assert {k: plain.tasks()[k].unmet for k in (b, c, d)} == {b: 0, c: 1, d: 1}
        # Only the tasks whose dependencies are all Complete are claimable (d is Pending).
        assert _claimable(db) == {b}
        cancelled = db.tasks.cancel(b)  # and with it, transitively, c, d and e
        assert {str(t.id) for t in cancelled} == {b, c, d, e}


def test_unfinished_dependencies_block_claims_and_starts_whoever_writes(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    for plain in writers:
        dep = plain.insert_task(owner.project)
        child = plain.insert_task(owner.project, deps=[dep])
        assert _claimable(db) == {dep}
        claimed = db.tasks.claim("dal")
        assert claimed is not None and str(claimed.id) == dep
        assert db.tasks.claim("dal") is None  # the child waits for the running dependency
        before = snapshot(db)
        assert plain.refused("UPDATE tasks SET status = 'In Progress' WHERE id = ?", child) == (
            NOT_READY
        )
        assert plain.refused("UPDATE tasks SET status = 'Complete' WHERE id = ?", child) == (
            TRANSITION
        )
        for status in ("In Progress", "Complete"):
            inserted = plain.refused(
                "INSERT INTO tasks (id, task_type, params, status, dependant_on, created_at, "
                "project_id) VALUES (?, 'x', '{}', ?, ?, ?, ?)",
                str(uuid.uuid4()),
                status,
                plain.ids([dep]),
                stamp(),
                owner.project,
            )
            assert inserted == NOT_READY
        assert snapshot(db) == before
        # The dependency completed by plain SQL (the DAL claimed it): the child is ready.
        assert plain.complete(dep, "files/dep.png", worker="dal") == 1
        assert plain.tasks()[child].unmet == 0
        got = db.tasks.claim("dal")
        assert got is not None and str(got.id) == child
        db.tasks.complete(got.id, "dal", "files/child.png")

    # And the other way round: completed through the DAL, started by plain SQL.
    plain = writers[-1]
    first = db.tasks.enqueue(owner.project, "x", {})
    then = plain.insert_task(owner.project, deps=[first.id])
    assert plain.refused("UPDATE tasks SET status = 'In Progress' WHERE id = ?", then) == (
        NOT_READY
    )
    db.tasks.claim("dal")
    db.tasks.complete(first.id, "dal", "files/first.png")
    assert plain.start(then) == 1
    assert plain.complete(then, "files/then.png") == 1
    assert plain.tasks()[then].status == "Complete"


def test_a_dependency_completed_by_plain_sql_makes_its_dependent_claimable(
    db: Database, plain: Plain, owner: Owner
) -> None:
    """The worker of another program: claim, then complete, with two plain UPDATEs."""
    dep = db.tasks.enqueue(owner.project, "x", {})
    child = db.tasks.enqueue(owner.project, "y", {}, depends_on=[dep.id])
    grandchild = db.tasks.enqueue(owner.project, "z", {}, depends_on=[dep.id, child.id])
    assert _claimable(db) == {str(dep.id)}
    assert plain.write("UPDATE tasks SET status = 'In Progress' WHERE id = ?", str(dep.id)) == 1
    assert db.tasks.claim("dal") is None
    assert (
        plain.write(
            "UPDATE tasks SET status = 'Complete', output_location = ? WHERE id = ?",
            "files/dep.png",
            str(dep.id),
        )
        == 1
    )
    assert db.tasks.get(dep.id).status == "Complete"
    got = db.tasks.claim("dal")
    assert got is not None and got.id == child.id
    assert db.tasks.claim("dal") is None
    db.tasks.complete(child.id, "dal", "files/child.png")
    last = db.tasks.claim("dal")
    assert last is not None and last.id == grandchild.id


def test_dependency_updates_by_plain_sql_keep_edges_and_counts(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    update = "UPDATE tasks SET dependant_on = ? WHERE id = ?"
    for plain in writers:
        a = plain.insert_task(owner.project)
        b = plain.insert_task(owner.project)
        c = plain.insert_task(owner.project, deps=[a])
        assert plain.write(update, plain.ids([a, b]), c) == 1
        assert {e for e in plain.edges() if e[0] == c} == {(c, a), (c, b)}
        assert plain.tasks()[c].unmet == 2
        plain.start(b)
        plain.complete(b, "files/b.png")
        assert plain.tasks()[c].unmet == 1
        assert plain.write(update, plain.ids([b]), c) == 1
        assert {e for e in plain.edges() if e[0] == c} == {(c, b)}
        assert plain.tasks()[c].unmet == 0
        assert _claimable(db) == {a, c}

        d = plain.insert_task(owner.project, deps=[c])
        elsewhere = plain.insert_task(owner.other_project)
        dead = plain.insert_task(owner.project, status="Cancelled")
        before = snapshot(db)
        assert plain.refused(update, plain.ids([c]), c) == DEPS_SELF
        assert plain.refused(update, plain.ids([d]), c) == DEPS_CYCLE
        assert plain.refused(update, plain.ids([a, d]), c) == DEPS_CYCLE
        assert plain.refused(update, plain.ids([elsewhere]), c) == DEPS_PROJECT
        assert plain.refused(update, plain.ids([str(uuid.uuid4())]), c) == DEPS_PROJECT
        assert plain.refused(update, plain.ids([dead]), c) == DEPS_DEAD
        assert plain.refused(update, plain.ids([a]), b) == DEPS_STARTED  # b is Complete
        insert = (
            "INSERT INTO tasks (id, task_type, params, dependant_on, created_at, project_id) "
            "VALUES (?, 'x', '{}', ?, ?, ?)"
        )
        for deps, verdict in (([dead], DEPS_DEAD), ([elsewhere], DEPS_PROJECT)):
            new = str(uuid.uuid4())
            assert plain.refused(insert, new, plain.ids(deps), stamp(), owner.project) == verdict
        assert snapshot(db) == before
        plain.start(a)
        assert plain.refused(update, plain.ids([b]), a) == DEPS_STARTED
        move = "UPDATE tasks SET project_id = ? WHERE id = ?"
        assert plain.refused(move, owner.other_project, a) == DEPS_STARTED
        # c no longer depends on a (its edge went with the array): a's cancellation spares it.
        plain.write("UPDATE tasks SET status = 'Cancelled' WHERE id = ?", a)
        assert [plain.tasks()[k].status for k in (a, c, d)] == ["Cancelled", "Queued", "Queued"]
        plain.write("UPDATE tasks SET status = 'Cancelled' WHERE id = ?", c)
        assert plain.tasks()[d].status == "Cancelled"
        plain.write("UPDATE tasks SET status = 'Cancelled' WHERE id = ?", elsewhere)


# --- derived state and transitions ---------------------------------------------------------


def test_direct_writes_of_derived_state_are_refused(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    for plain in writers:
        a = plain.insert_task(owner.project)
        b = plain.insert_task(owner.project)
        c = plain.insert_task(owner.project, deps=[a])
        before = snapshot(db)
        assert plain.refused("UPDATE tasks SET unmet_dependencies = 0 WHERE id = ?", c) == UNMET
        assert plain.refused("UPDATE tasks SET unmet_dependencies = 5 WHERE id = ?", a) == UNMET
        assert plain.refused("UPDATE tasks SET unmet_dependencies = NULL WHERE id = ?", c) == (
            UNMET
        )
        assert plain.refused("UPDATE tasks SET attempts = -1 WHERE id = ?", a) == ATTEMPTS
        assert plain.refused("UPDATE tasks SET attempts = NULL WHERE id = ?", a) == ATTEMPTS
        insert_attempts = (
            "INSERT INTO tasks (id, task_type, params, created_at, project_id, attempts) "
            "VALUES (?, 'x', '{}', ?, ?, ?)"
        )
        for bad in (-1, None):
            assert (
                plain.refused(insert_attempts, str(uuid.uuid4()), stamp(), owner.project, bad)
                == ATTEMPTS
            )
        # A counter given at insert is replaced by the truth; no counter at all is refused.
        insert_unmet = insert_attempts.replace("attempts", "unmet_dependencies")
        assert plain.refused(insert_unmet, str(uuid.uuid4()), stamp(), owner.project, None) == (
            UNMET
        )
        # Edges that disagree with dependant_on: added, removed, rewritten.
        edge_insert = "INSERT INTO task_dependencies (task_id, dependency_id) VALUES (?, ?)"
        assert plain.refused(edge_insert, c, b) == EDGES
        assert plain.refused(edge_insert, a, c) == EDGES
        assert plain.refused("DELETE FROM task_dependencies WHERE task_id = ?", c) == EDGES
        assert plain.refused("UPDATE task_dependencies SET dependency_id = ?", b) == EDGES
        assert plain.refused("UPDATE task_dependencies SET task_id = task_id") == EDGES
        assert snapshot(db) == before
        # The counter set to the value it already has is no change at all.
        assert plain.write("UPDATE tasks SET unmet_dependencies = 1 WHERE id = ?", c) == 1
        assert plain.tasks()[c].unmet == 1
        assert _claimable(db) == {a, b}
        for key in (a, b):
            db.tasks.cancel(key)


def test_status_transitions_by_plain_sql(db: Database, writers: list[Plain], owner: Owner) -> None:
    for plain in writers:
        for old in STATUSES:
            for new in STATUSES:
                if new == old:
                    continue
                key = plain.insert_task(owner.project, status=old)
                change = "UPDATE tasks SET status = ? WHERE id = ?"
                if new in ALLOWED.get(old, set()):
                    assert plain.write(change, new, key) == 1, (plain, old, new)
                else:
                    assert plain.refused(change, new, key) == TRANSITION, (plain, old, new)
                    assert plain.tasks()[key].status == old
    # A finished task stays finished for the DAL too.
    finished = {t.status for t in db.tasks.iter() if t.status not in UNFINISHED}
    assert finished == {"Complete", "Failed", "Cancelled"}
    done = next(t for t in db.tasks.iter() if t.status == "Complete")
    with pytest.raises(Conflict):
        db.tasks.cancel(done.id)


def test_failing_or_cancelling_by_plain_sql_cancels_dependents_transitively(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    for plain in writers:
        for how, error, cause in (
            ("Failed", "CUDA OOM", "failed"),
            ("Cancelled", "user said no", "user said no"),
            ("Cancelled", None, "cancelled"),
        ):
            root = plain.insert_task(owner.project)
            other = plain.insert_task(owner.project)
            child = plain.insert_task(owner.project, deps=[root])
            held = plain.insert_task(owner.project, deps=[child], status="Pending")
            fan_in = plain.insert_task(owner.project, deps=[other, held])
            # enqueued through the DAL, depending on a plain-SQL task
            dal_child = db.tasks.enqueue(owner.project, "dal", {}, depends_on=[fan_in])
            done = plain.insert_task(owner.project)
            plain.start(done)
            plain.complete(done, "files/done.png")
            finished = plain.insert_task(owner.project, deps=[done])
            plain.start(finished)
            plain.complete(finished, "files/finished.png")
            assert plain.start(root) == 1
            if how == "Failed":
                changed = plain.write(
                    "UPDATE tasks SET status = 'Failed', error = ? WHERE id = ?", error, root
                )
            else:
                # A cancelled task cascades from any unfinished status (here: In Progress).
                changed = plain.write(
                    "UPDATE tasks SET status = 'Cancelled', error = ? WHERE id = ?", error, root
                )
            assert changed == 1
            rows = plain.tasks()
            reason = f"cancelled: dependency {root} {cause}"
            for key in (child, held, fan_in, str(dal_child.id)):
                assert (rows[key].status, rows[key].error) == ("Cancelled", reason), plain
            assert rows[other].status == "Queued"
            assert rows[finished].status == "Complete" and rows[finished].error is None
            assert db.tasks.get(dal_child.id).status == "Cancelled"
            assert _claimable(db) == {other}
            db.tasks.cancel(other)


def test_a_cascade_reaches_dependents_written_by_either_side(
    db: Database, plain: Plain, owner: Owner
) -> None:
    """DAL failure, plain-SQL dependents; plain-SQL cancellation, DAL dependents."""
    root = db.tasks.enqueue(owner.project, "x", {})
    plain_child = plain.insert_task(owner.project, deps=[root.id])
    plain_grandchild = plain.insert_task(owner.project, deps=[plain_child])
    db.tasks.claim("dal")
    db.tasks.fail(root.id, "dal", "model crashed")
    rows = plain.tasks()
    for key in (plain_child, plain_grandchild):
        assert rows[key].status == "Cancelled"
        assert rows[key].error == f"cancelled: dependency {root.id} failed"

    top = plain.insert_task(owner.project)
    below = db.tasks.enqueue(owner.project, "y", {}, depends_on=[top])
    further = db.tasks.enqueue(owner.project, "z", {}, depends_on=[below.id])
    plain.write("UPDATE tasks SET status = 'Cancelled', error = 'stop' WHERE id = ?", top)
    for task in (below, further):
        got = db.tasks.get(task.id)
        assert (got.status, got.error) == ("Cancelled", f"cancelled: dependency {top} stop")
    with pytest.raises(Conflict):
        db.tasks.cancel(below.id)


# --- deletes -------------------------------------------------------------------------------


def _dangling_edges(plain: Plain) -> int:
    return int(
        plain.scalar(
            "SELECT count(*) FROM task_dependencies e WHERE NOT EXISTS "
            "(SELECT 1 FROM tasks t WHERE t.id = e.task_id) OR NOT EXISTS "
            "(SELECT 1 FROM tasks t WHERE t.id = e.dependency_id)"
        )
    )


def test_deleting_a_task_unfinished_tasks_wait_for_is_refused(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    for plain in writers:
        dep = plain.insert_task(owner.project)
        waiting = plain.insert_task(owner.project, deps=[dep], status="Pending")
        also = db.tasks.enqueue(owner.project, "x", {}, depends_on=[dep])
        before = snapshot(db)
        assert plain.refused("DELETE FROM tasks WHERE id = ?", dep) == DELETE
        assert plain.refused("DELETE FROM tasks WHERE project_id = ?", owner.project) == DELETE
        with pytest.raises(Conflict, match="cancel it"):
            db.tasks.delete(dep)
        with pytest.raises(Conflict, match="cancel it"), db.session() as s:
            s.connection.execute(sa.text("DELETE FROM tasks WHERE id = :id"), {"id": dep})
        assert snapshot(db) == before
        # Once nothing unfinished waits for it, it goes, and its edges with it.
        assert plain.write("DELETE FROM tasks WHERE id = ?", waiting) == 1
        db.tasks.cancel(also.id)
        assert plain.write("DELETE FROM tasks WHERE id = ?", dep) == 1
        assert not {e for e in plain.edges() if dep in e}
        assert _dangling_edges(plain) == 0
        # A finished dependent does not hold its dependency back.
        first = plain.insert_task(owner.project)
        second = plain.insert_task(owner.project, deps=[first])
        plain.start(first)
        plain.complete(first, "files/first.png")
        plain.start(second)
        plain.complete(second, "files/second.png")
        assert plain.write("DELETE FROM tasks WHERE id = ?", first) == 1
        assert (second, first) not in plain.edges()
        assert plain.tasks()[second].unmet == 0
        # A cancelled dependent still counted its unfinished dependency; once that is deleted,
        # it counts nothing (the counter is the truth for every task, finished or not).
        blocker = plain.insert_task(owner.project)
        gave_up = plain.insert_task(owner.project, deps=[blocker, second])
        plain.write("UPDATE tasks SET status = 'Cancelled' WHERE id = ?", gave_up)
        assert plain.tasks()[gave_up].unmet == 1
        assert plain.write("DELETE FROM tasks WHERE id = ?", blocker) == 1
        assert plain.tasks()[gave_up].unmet == 0
        assert {e for e in plain.edges() if e[0] == gave_up} == {(gave_up, second)}


def test_deleting_the_project_deletes_everything(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    """With foreign keys on, deleting a project takes its tasks (unfinished ones too), their
    edges, generations and placements; with them off (SQLite), each task deleted by hand
    still takes its edges."""
    for plain in writers:
        user = db.users.create()
        project = str(db.projects.create("Doomed", user.id).id)
        shot = str(db.shots.create(project, "Shot").id)
        a = plain.insert_task(project, params=json.dumps({"shot_id": shot}))
        plain.start(a)
        plain.complete(a, "files/a.png")
        b = plain.insert_task(project, deps=[a])
        c = plain.insert_task(project, deps=[b])
        assert len(plain.placements(shot)) == 1
        keep = plain.insert_task(owner.project)
        if plain.foreign_keys:
            assert plain.write("DELETE FROM projects WHERE id = ?", project) == 1
            for table, column in (("tasks", "project_id"), ("generations", "project_id")):
                assert (
                    plain.scalar(f"SELECT count(*) FROM {table} WHERE {column} = ?", project) == 0
                )
            assert plain.placements(shot) == []
        else:
            # Without foreign keys SQLite would leave the tasks behind, claimable: the
            # database deletes them with their project (trigger projects_after_delete), each
            # with its edges.
            assert plain.write("DELETE FROM projects WHERE id = ?", project) == 1
            assert plain.scalar("SELECT count(*) FROM tasks WHERE project_id = ?", project) == 0
        assert _dangling_edges(plain) == 0
        assert not {e for e in plain.edges() if {a, b, c} & set(e)}
        assert keep in plain.tasks()
        db.tasks.delete(keep)


# --- shapes: poison rows are refused when written ------------------------------------------


def _nested(depth: int, inner: str = "1") -> str:
    """An object holding objects ``depth`` levels deep (the outermost is level 1)."""
    return '{"a":' * depth + inner + "}" * depth


POISON_PARAMS = {
    "array": ("[1,2]", PARAMS_OBJECT),
    "string": ('"x"', PARAMS_OBJECT),
    "json null": ("null", PARAMS_OBJECT),
    "number": ("3", PARAMS_OBJECT),
    "sql null": (None, PARAMS_OBJECT),
    "65 levels": (_nested(65), PARAMS_LIMITS),
    "3,000 levels": (_nested(3000), PARAMS_LIMITS),
    "3,000 levels of arrays": ('{"a":' + "[" * 3000 + "]" * 3000 + "}", PARAMS_LIMITS),
    "5,000 digits": ('{"n":' + "9" * 5000 + "}", PARAMS_LIMITS),
    "1e400": ('{"n":1e400}', PARAMS_LIMITS),
    "-1e400 in an array": ('{"n":[1,[2,-1e400]]}', PARAMS_LIMITS),
}


@pytest.mark.parametrize("case", list(POISON_PARAMS))
def test_poison_params_are_refused_when_written(
    db: Database, writers: list[Plain], owner: Owner, case: str
) -> None:
    text, verdict = POISON_PARAMS[case]
    for plain in writers:
        before = snapshot(db)
        insert = (
            "INSERT INTO tasks (id, task_type, params, created_at, project_id) "
            "VALUES (?, 'x', ?, ?, ?)"
        )
        assert plain.refused(insert, str(uuid.uuid4()), text, stamp(), owner.project) == verdict
        key = plain.insert_task(owner.project, params='{"ok":true}')
        before = snapshot(db)
        assert plain.refused("UPDATE tasks SET params = ? WHERE id = ?", text, key) == verdict
        assert snapshot(db) == before
        assert plain.tasks()[key].params == {"ok": True}


@pytest.mark.parametrize(
    "text",
    [
        _nested(64),  # the deepest allowed: 64 levels of containers
        '{"max":1.7976931348623157e308,"min":-1.7976931348623157e308}',
        '{"tiny":0.' + "0" * 5000 + "1}",  # long, but within range
        '{"shot_id":null,"deps":[],"s":"\\u00e9"}',
    ],
    ids=["64 levels", "largest doubles", "5,000-digit fraction", "plain object"],
)
def test_params_within_the_limits_are_taken(plain: Plain, owner: Owner, text: str) -> None:
    key = plain.insert_task(owner.project, params=text)
    # (jsonb writes 1.7976931348623157e308 out in full: compare numbers as numbers)
    stored = json.loads(json.dumps(plain.tasks()[key].params), parse_int=float)
    assert stored == json.loads(text, parse_int=float)
    assert plain.write("UPDATE tasks SET params = ? WHERE id = ?", text, key) == 1


def test_poison_dependency_arrays_are_refused_when_written(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    pg = db.backend == "postgresql"
    for plain in writers:
        dep = plain.insert_task(owner.project)
        key = plain.insert_task(owner.project)
        insert = (
            "INSERT INTO tasks (id, task_type, params, dependant_on, created_at, project_id) "
            "VALUES (?, 'x', '{}', ?, ?, ?)"
        )
        update = "UPDATE tasks SET dependant_on = ? WHERE id = ?"
        # The same verdict on both backends: a null entry, SQL NULL, a nested array.
        same = {
            "null entry": "{NULL}" if pg else "[null]",
            "null among ids": f"{{{dep},NULL}}" if pg else json.dumps([dep, None]),
            "sql null": None,
            "nested array": f"{{{{{dep}}}}}" if pg else json.dumps([[dep]]),
        }
        before = snapshot(db)
        for case, value in same.items():
            assert plain.refused(insert, str(uuid.uuid4()), value, stamp(), owner.project) == (
                DEPS_SHAPE
            ), case
            assert plain.refused(update, value, key) == DEPS_SHAPE, case
        assert snapshot(db) == before
        if not pg:
            # SQLite stores text: anything that is not an array of canonical UUIDs is refused.
            for value in (
                '["x"]',
                json.dumps([dep.upper()]),
                json.dumps([dep.replace("-", "")]),
                json.dumps([7]),
                "{}",
                "not json",
                json.dumps(dep),
            ):
                assert plain.refused(insert, str(uuid.uuid4()), value, stamp(), owner.project) == (
                    DEPS_SHAPE
                ), value
                assert plain.refused(update, value, key) == DEPS_SHAPE, value
        else:
            # uuid[] holds nothing else: text that is no UUID never reaches the rules, and an
            # uppercase UUID is the same UUID, stored canonically.
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                plain.execute(update, "{x}", key)
            assert plain.write(update, "{" + dep.upper() + "}", key) == 1
            assert plain.tasks()[key].deps == [dep]
            assert (key, dep) in plain.edges()
            assert plain.tasks()[key].unmet == 1


def test_a_dependent_task_without_a_project_is_refused_alike(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    """Its dependencies are in no project of its own: the same verdict on both backends,
    before the column's NOT NULL is reached (migration 0013 keeps 0006's verdict)."""
    pg = db.backend == "postgresql"
    for plain in writers:
        dep = plain.insert_task(owner.project)
        insert = (
            "INSERT INTO tasks (id, task_type, params, dependant_on, created_at, project_id) "
            "VALUES (?, 'x', '{}', ?, ?, NULL)"
        )
        deps = f"{{{dep}}}" if pg else json.dumps([dep])
        before = snapshot(db)
        assert plain.refused(insert, str(uuid.uuid4()), deps, stamp()) == DEPS_PROJECT
        assert snapshot(db) == before


def test_poison_generation_task_arrays_are_refused_when_written(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    pg = db.backend == "postgresql"
    task = str(db.tasks.enqueue(owner.project, "x", {}).id)
    for plain in writers:
        gen = str(uuid.uuid4())
        insert = "INSERT INTO generations (id, tasks, created_at, project_id) VALUES (?, ?, ?, ?)"
        plain.execute(insert, gen, plain.ids([task]), stamp(), owner.project)
        update = "UPDATE generations SET tasks = ? WHERE id = ?"
        before = snapshot(db)
        for value in (
            "{NULL}" if pg else "[null]",
            None,
            f"{{{{{task}}}}}" if pg else json.dumps([[task]]),
        ):
            assert plain.refused(insert, str(uuid.uuid4()), value, stamp(), owner.project) == (
                GEN_TASKS
            ), value
            assert plain.refused(update, value, gen) == GEN_TASKS, value
        if not pg:
            for value in ('["x"]', json.dumps([task.upper()]), "{}", "oops"):
                assert plain.refused(update, value, gen) == GEN_TASKS, value
        assert snapshot(db) == before


# --- the verdicts inside dualdb's own sessions ---------------------------------------------


def test_rule_conflicts_in_a_dal_session_arrive_as_conflict(
    db: Database, plain: Plain, owner: Owner
) -> None:
    """Raw SQL inside ``db.session()`` that a rule refuses: ``Conflict``, nothing written."""
    a = plain.insert_task(owner.project)
    b = plain.insert_task(owner.project, deps=[a])
    before = snapshot(db)
    statements = {
        UNMET: ("UPDATE tasks SET unmet_dependencies = 0 WHERE id = :id", {"id": b}),
        TRANSITION: ("UPDATE tasks SET status = 'Complete' WHERE id = :id", {"id": a}),
        NOT_READY: ("UPDATE tasks SET status = 'In Progress' WHERE id = :id", {"id": b}),
        DELETE: ("DELETE FROM tasks WHERE id = :id", {"id": a}),
        EDGES: ("DELETE FROM task_dependencies WHERE task_id = :id", {"id": b}),
    }
    for verdict, (sql, params) in statements.items():
        with pytest.raises(Conflict) as info, db.session() as s:
            s.tasks.get(a)  # the session works, then the raw statement is refused
            s.connection.execute(sa.text(sql), params)
        # The Conflict says what the rule says, without the SQL-level "conflict: " prefix.
        assert str(info.value) == verdict.removeprefix("conflict: ")
    assert snapshot(db) == before


def test_rule_invalid_input_in_a_dal_session_arrives_as_invalid_input(
    db: Database, plain: Plain, owner: Owner
) -> None:
    key = plain.insert_task(owner.project)
    before = snapshot(db)
    for column, sql, params in (
        ("params", "UPDATE tasks SET params = :v WHERE id = :id", {"v": "[1,2]", "id": key}),
        ("params", "UPDATE tasks SET params = :v WHERE id = :id", {"v": _nested(3000), "id": key}),
        ("attempts", "UPDATE tasks SET attempts = -1 WHERE id = :id", {"id": key}),
        (
            "dependant_on",
            "UPDATE tasks SET dependant_on = :v WHERE id = :id",
            {"v": plain.ids([key]), "id": key},
        ),
    ):
        with pytest.raises(InvalidInput) as info, db.session() as s:
            s.connection.execute(sa.text(sql), params)
        assert info.value.field == column
        assert str(info.value).startswith(f"{column}: ")
    assert snapshot(db) == before


# --- the generation of a completed shot task, exactly once ---------------------------------


def _shot_params(shot: str, **more: Any) -> str:
    return json.dumps({"shot_id": shot, **more})


def test_plain_completion_makes_one_generation_placed_last_on_the_shot(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    # Two generations already on the shot, placed by the DAL.
    for i in range(2):
        made = db.generations.create(owner.project, location=f"files/old{i}.png")
        db.shots.add_generation(owner.shot, made.id)
    for plain in writers:
        key = plain.insert_task(owner.project, params=_shot_params(owner.shot), task_type="img")
        assert plain.tasks()[key].generation_processed_at is None
        plain.start(key)
        assert plain.generations_of(key) == []
        assert plain.complete(key, "files/plain.png") == 1
        [(gen, location, kind)] = plain.generations_of(key)
        assert (location, kind) == ("files/plain.png", "img")
        placed = plain.placements(owner.shot)
        assert placed[-1] == (gen, len(placed) - 1)
        assert [p for _, p in placed] == list(range(len(placed)))
        assert plain.tasks()[key].generation_processed_at is not None
        # The DAL sees it too: the generation is the task's, and last on the shot.
        assert [str(g.id) for g in db.generations.for_task(key)] == [gen]
        assert str(db.shots.generations(owner.shot)[-1].id) == gen
        # Nothing a plain writer does to the finished task makes another one.
        assert plain.complete(key, "files/again.png") == 0
        # Complete -> Complete is no change of status: allowed, and it makes nothing.
        rewrite = "UPDATE tasks SET status = 'Complete', output_location = ? WHERE id = ?"
        assert plain.write(rewrite, "files/plain.png", key) == 1
        plain.write("UPDATE tasks SET generation_processed_at = NULL WHERE id = ?", key)
        plain.write("UPDATE tasks SET status = 'Complete' WHERE id = ?", key)
        assert plain.refused("UPDATE tasks SET status = 'In Progress' WHERE id = ?", key) == (
            TRANSITION
        )
        with pytest.raises(Conflict):
            db.tasks.complete(key, "plain", "files/dal.png")
        assert len(plain.generations_of(key)) == 1
        assert [g for g, _ in plain.placements(owner.shot)].count(gen) == 1
    assert len(plain.placements(owner.shot)) == 2 + len(writers)


def test_dal_completion_of_a_plain_shot_task_makes_one_generation(
    db: Database, plain: Plain, owner: Owner
) -> None:
    key = plain.insert_task(owner.project, params=_shot_params(owner.shot))
    claimed = db.tasks.claim("dal")
    assert claimed is not None and str(claimed.id) == key
    done = db.tasks.complete(key, "dal", "files/dal.png")
    assert done.generation_processed_at is not None
    # A retry after a lost reply is answered; the plain writer's completion finds nothing.
    assert db.tasks.complete(key, "dal", "files/dal.png").status == "Complete"
    assert plain.complete(key, "files/plain.png") == 0
    [(gen, location, _)] = plain.generations_of(key)
    assert location == "files/dal.png"
    assert plain.placements(owner.shot) == [(gen, 0)]
    # A task naming no shot, or a null one, or another project's shot: no placement.
    other_shot = str(db.shots.create(owner.other_project, "Not here").id)
    for params, makes in (
        ("{}", 0),
        ('{"shot_id":null}', 0),
        (_shot_params(other_shot), 1),
        (_shot_params(owner.shot.upper()), 1),
    ):
        extra = plain.insert_task(owner.project, params=params)
        plain.start(extra)
        plain.complete(extra, "files/extra.png")
        assert len(plain.generations_of(extra)) == makes, params
    assert plain.placements(other_shot) == []
    assert len(plain.placements(owner.shot)) == 2  # the uppercase shot id is the same shot


def test_a_completed_shot_task_goes_last_even_after_another_program_left_a_gap(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    """Deleting a placement (or a generation) by plain SQL leaves a gap in the positions; the
    next completion is still placed after every other generation on the shot."""
    for i in range(3):
        made = db.generations.create(owner.project, location=f"files/old{i}.png")
        db.shots.add_generation(owner.shot, made.id)
    for plain in writers:
        first = plain.placements(owner.shot)[0][0]
        assert plain.write("DELETE FROM generations WHERE id = ?", first) == 1
        if not plain.foreign_keys:  # SQLite without foreign keys: no cascade to placements
            plain.write("DELETE FROM shot_generations WHERE generation_id = ?", first)
        highest = max(p for _, p in plain.placements(owner.shot))
        key = plain.insert_task(owner.project, params=_shot_params(owner.shot))
        plain.start(key)
        plain.complete(key, "files/new.png")
        [(gen, _, _)] = plain.generations_of(key)
        assert plain.placements(owner.shot)[-1] == (gen, highest + 1)
        assert str(db.shots.generations(owner.shot)[-1].id) == gen


def test_a_task_inserted_complete_gets_its_generation(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    """Importing finished work: a shot task written as Complete becomes Complete too."""
    for plain in writers:
        key = plain.insert_task(
            owner.project, status="Complete", params=_shot_params(owner.shot), output_location="f"
        )
        [(gen, location, _)] = plain.generations_of(key)
        assert location == "f"
        assert plain.placements(owner.shot)[-1][0] == gen
        assert plain.tasks()[key].generation_processed_at is not None
        # One that says its generation was already made is taken at its word.
        done = plain.insert_task(
            owner.project,
            status="Complete",
            params=_shot_params(owner.shot),
            generation_processed_at=stamp(),
        )
        assert plain.generations_of(done) == []
    assert [t.status for t in db.tasks.iter()] == ["Complete"] * 2 * len(writers)


def _race_to_complete(url: str, key: uuid.UUID) -> list[object]:
    """Six plain connections (SQLite: foreign keys off and on) and two dualdb ones complete
    task ``key`` (In Progress, worker ``w``) at the same moment; what each got."""
    start = threading.Barrier(8)
    results: list[object] = []
    lock = threading.Lock()

    def plain_racer(i: int) -> None:
        own = Plain(url, foreign_keys=bool(i % 2))
        try:
            start.wait()
            outcome: object = own.complete(key, f"files/plain{i}.png", worker="w")
        except Exception as exc:  # collected and asserted by the caller
            outcome = exc
        finally:
            own.close()
        with lock:
            results.append(outcome)

    def dal_racer() -> None:
        with dualdb.connect(url) as own:
            start.wait()
            try:
                outcome: object = own.tasks.complete(key, "w", "files/dal.png")
            except Exception as exc:  # collected and asserted by the caller
                outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=plain_racer, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=dal_racer) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    return results


def test_racing_completions_by_plain_sql_and_the_dal_make_one_generation(
    db: Database, migrated_url: str, owner: Owner
) -> None:
    for round_ in range(3):
        key = db.tasks.enqueue(owner.project, "img", {"shot_id": owner.shot}).id
        claimed = db.tasks.claim("w")
        assert claimed is not None and claimed.id == key
        results = _race_to_complete(migrated_url, key)
        assert len(results) == 8, results
        final = db.tasks.get(key)
        assert final.status == "Complete"
        plain_counts = sorted(r for r in results if isinstance(r, int))
        dal = [r for r in results if not isinstance(r, int)]
        if final.output_location == "files/dal.png":
            # a dualdb call won; the other is answered (same call), every plain one found none
            assert plain_counts == [0] * 6
            assert [getattr(r, "status", r) for r in dal] == ["Complete", "Complete"]
        else:
            # a plain one won; the rest found none, and dualdb's calls were refused
            assert plain_counts == [0] * 5 + [1], results
            assert all(isinstance(r, Conflict) for r in dal), results
        # Exactly one completion: one generation, placed once, with the winner's output.
        gens = db.generations.for_task(key)
        assert [g.location for g in gens] == [final.output_location]
        placed = [p.generation_id for p in db.shot_generations.iter(shot_id=owner.shot)]
        assert placed.count(gens[0].id) == 1
        assert len(placed) == round_ + 1


# --- interleaving: dualdb and plain SQL on the same queue ----------------------------------


def assert_queue_invariants(plain: Plain) -> None:
    """What the rules promise, read from the raw rows: every derived fact matches the truth."""
    rows = plain.tasks()
    edges = plain.edges()
    # Edges are exactly the dependant_on arrays (a deleted dependency has no edge left).
    assert edges == {(t.id, d) for t in rows.values() for d in t.deps if d in rows}
    for t in rows.values():
        deps = [rows[d] for d in t.deps if d in rows]
        unmet = sum(1 for d in deps if d.status != "Complete")
        assert t.unmet == unmet, f"{t.id} counts {t.unmet} unmet dependencies, not {unmet}"
        if t.status in ("In Progress", "Complete"):
            assert unmet == 0, f"{t.id} is {t.status} before its dependencies completed"
        if t.status in UNFINISHED:
            dead = [d.id for d in deps if d.status in ("Failed", "Cancelled")]
            assert not dead, f"{t.id} is {t.status} but depends on finished-for-good {dead}"
        shot = t.params.get("shot_id")
        made = plain.generations_of(t.id)
        if t.status == "Complete" and shot is not None:
            assert len(made) == 1, f"{t.id} has {len(made)} generations"
            assert t.generation_processed_at is not None
        else:
            assert made == [], f"{t.id} is {t.status} and has a generation"
    placements = plain.execute("SELECT shot_id, generation_id, position FROM shot_generations")
    assert len({g for _, g, _ in placements}) == len(placements), "a generation placed twice"
    for shot in {s for s, _, _ in placements}:
        assert sorted(p for s, _, p in placements if s == shot) == list(
            range(sum(1 for s, _, _ in placements if s == shot))
        )


def test_interleaved_dal_and_plain_writers_keep_every_invariant(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    rng = random.Random(6)
    reader = writers[0]
    ran: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    born: dict[str, int] = {}  # creation order: the scenario replays the same way every run

    def tasks_in(*statuses: str) -> list[Row]:
        return sorted(
            (t for t in reader.tasks().values() if t.status in statuses), key=lambda t: born[t.id]
        )

    def new_task_spec() -> tuple[list[str], dict[str, Any], str]:
        pool = [t.id for t in tasks_in("Pending", "Queued", "In Progress", "Complete")]
        deps = rng.sample(pool, k=min(len(pool), rng.choice([0, 0, 1, 1, 2, 3])))
        params: dict[str, Any] = {"n": rng.randrange(1000)}
        if rng.random() < 0.5:
            params["shot_id"] = owner.shot
        return deps, params, "Pending" if rng.random() < 0.15 else "Queued"

    def waiting_on(key: str) -> bool:
        return any(key in t.deps for t in tasks_in(*UNFINISHED))

    def step(op: str) -> bool:
        plain = rng.choice(writers)
        if op == "dal enqueue":
            deps, params, status = new_task_spec()
            made = db.tasks.enqueue(owner.project, "dal", params, depends_on=deps, status=status)
            born[str(made.id)] = len(born)
        elif op == "plain insert":
            deps, params, status = new_task_spec()
            key = plain.insert_task(
                owner.project, deps=deps, params=json.dumps(params), status=status
            )
            born[key] = len(born)
        elif op == "dal claim":
            return db.tasks.claim(f"dal-{rng.randrange(3)}") is not None
        elif op == "plain claim":
            return plain.claim(f"plain-{rng.randrange(3)}") is not None
        elif op in ("dal complete", "plain complete", "dal fail", "plain fail", "requeue"):
            running = tasks_in("In Progress")
            if not running:
                return False
            task = rng.choice(running)
            worker = str(reader.scalar("SELECT worker_id FROM tasks WHERE id = ?", task.id))
            if op == "dal complete":
                db.tasks.complete(task.id, worker, f"files/{task.id}.png")
            elif op == "plain complete":
                assert plain.complete(task.id, f"files/{task.id}.png", worker=worker) == 1
            elif op == "dal fail":
                db.tasks.fail(task.id, worker, "dal boom", retry=rng.random() < 0.5)
            elif op == "plain fail":
                plain.write("UPDATE tasks SET status = 'Failed', error = 'x' WHERE id = ?", task.id)
            else:
                plain.write(
                    "UPDATE tasks SET status = 'Queued', worker_id = NULL WHERE id = ?", task.id
                )
        elif op in ("dal cancel", "plain cancel", "dal release", "plain release"):
            pool = tasks_in("Pending") if op.endswith("release") else tasks_in(*UNFINISHED)
            if not pool:
                return False
            task = rng.choice(pool)
            if op == "dal cancel":
                db.tasks.cancel(task.id, "dal stop")
            elif op == "plain cancel":
                plain.write("UPDATE tasks SET status = 'Cancelled' WHERE id = ?", task.id)
            elif op == "dal release":
                db.tasks.release(task.id)
            else:
                plain.write("UPDATE tasks SET status = 'Queued' WHERE id = ?", task.id)
        elif op in ("dal delete", "plain delete"):
            everything = tasks_in(*STATUSES)
            if not everything:
                return False
            task = rng.choice(everything)
            blocked = waiting_on(task.id)
            if op == "plain delete" and blocked:
                assert plain.refused("DELETE FROM tasks WHERE id = ?", task.id) == DELETE
                refusals[op] += 1
            elif op == "plain delete":
                assert plain.write("DELETE FROM tasks WHERE id = ?", task.id) == 1
            elif blocked:
                with pytest.raises(Conflict, match="cancel it"):
                    db.tasks.delete(task.id)
                refusals[op] += 1
            else:
                db.tasks.delete(task.id)
        return True

    weights = {
        "dal enqueue": 6,
        "plain insert": 6,
        "dal claim": 5,
        "plain claim": 5,
        "dal complete": 4,
        "plain complete": 4,
        "dal fail": 1,
        "plain fail": 1,
        "requeue": 1,
        "dal cancel": 1,
        "plain cancel": 1,
        "dal release": 1,
        "plain release": 1,
        "dal delete": 1,
        "plain delete": 1,
    }
    ops, w = list(weights), list(weights.values())
    for i in range(300):
        op = rng.choices(ops, w)[0]
        if step(op):
            ran[op] += 1
        if i % 50 == 49:
            assert_queue_invariants(reader)
    # Then finish what is left: release the held, complete the running, and drain the rest
    # with both sides claiming in turn.
    for task in tasks_in("Pending"):
        writers[-1].write("UPDATE tasks SET status = 'Queued' WHERE id = ?", task.id)
    for task in tasks_in("In Progress"):
        assert writers[-1].complete(task.id, "files/finished.png") == 1
    while True:
        claimed = db.tasks.claim("dal-drain")
        if claimed is not None:
            db.tasks.complete(claimed.id, "dal-drain", "files/drained.png")
        got = writers[-1].claim("plain-drain")
        if got is not None:
            writers[-1].complete(got[0], "files/drained.png", worker="plain-drain")
        if claimed is None and got is None:
            break
    assert_queue_invariants(reader)
    assert set(ran) == set(weights), f"some operations never ran: {ran}"
    assert set(refusals) == {"dal delete", "plain delete"}, f"deletes never refused: {refusals}"
    statuses = Counter(t.status for t in reader.tasks().values())
    assert statuses["Complete"] >= 40, statuses
    assert statuses["Cancelled"] > 0 and statuses["Failed"] > 0, statuses
    assert set(statuses) <= {"Complete", "Failed", "Cancelled"}, statuses  # nothing stranded
    # ... and `dualdb check --data` finds nothing to say about what both sides left.
    report = integrity.audit(db.target)
    assert report.clean, [(f.rule, f.count, f.ids) for f in report.findings]


# --- many processes, half of them plain SQL ------------------------------------------------

DRAIN_WORKERS = 4
DRAIN_TASKS = 2000
# Each kind of worker has a type only it takes, so both must run (SQLite's lock is not fair:
# two plain loops can starve the others), and a type both compete for.
DRAIN_TYPES = ("dal", "plain", "any")


def _unfinished(plain: Plain) -> int:
    return int(
        plain.scalar(
            "SELECT count(*) FROM tasks WHERE status IN ('Pending', 'Queued', 'In Progress')"
        )
    )


def _drain_with_dal(url: str, worker_id: str, out: str, start: Any) -> None:
    """A dualdb worker: claim and complete until no unfinished task is left."""
    done: list[dict[str, Any]] = []
    with dualdb.connect(url) as db:
        start.wait()
        idle = 0
        while True:
            task = db.tasks.claim(worker_id, task_types=["dal", "any"])
            if task is None:
                counts = db.tasks.counts()
                if counts["Queued"] + counts["In Progress"] + counts["Pending"] == 0:
                    break
                idle += 1
                time.sleep(0.002 * min(idle, 10))  # back off while others finish dependencies
                continue
            idle = 0
            db.tasks.complete(task.id, worker_id, f"out/{task.id}")
            done.append({"id": str(task.id), "attempts": task.attempts, "by": "dal"})
    Path(out).write_text(json.dumps(done))


def _drain_with_plain_sql(url: str, worker_id: str, out: str, start: Any) -> None:
    """Another program's worker: the same loop in plain SQL (see :meth:`Plain.claim`)."""
    done: list[dict[str, Any]] = []
    plain = Plain(url)
    try:
        start.wait()
        idle = 0
        while True:
            got = plain.claim(worker_id, types=("plain", "any"))
            if got is None:
                if _unfinished(plain) == 0:
                    break
                idle += 1
                time.sleep(0.002 * min(idle, 10))  # back off while others finish dependencies
                continue
            idle = 0
            key, attempts = got
            if plain.backend == "sqlite":
                changed = plain.write(
                    "UPDATE tasks SET status = 'Complete', output_location = ?, updated_at = ? "
                    "WHERE id = ? AND status = 'In Progress' AND worker_id = ?",
                    f"out/{key}",
                    stamp(),
                    key,
                    worker_id,
                )
            else:
                changed = plain.complete(key, f"out/{key}", worker=worker_id)
            assert changed == 1, f"{worker_id} could not complete {key}"
            done.append({"id": key, "attempts": attempts, "by": "plain"})
    finally:
        plain.close()
    Path(out).write_text(json.dumps(done))


def test_many_processes_drain_a_dag_exactly_once_half_by_plain_sql(
    migrated_url: str, tmp_path: Path
) -> None:
    """Two dualdb workers and two plain-SQL workers drain 2,000 tasks forming a DAG."""
    with dualdb.connect(migrated_url) as db:
        ids = _enqueue_dag(db, DRAIN_TASKS, types=DRAIN_TYPES)
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"w{i}.json") for i in range(DRAIN_WORKERS)]
    start = ctx.Barrier(DRAIN_WORKERS)
    procs = [
        ctx.Process(
            target=_drain_with_plain_sql if i % 2 else _drain_with_dal,
            args=(migrated_url, f"w{i}", outs[i], start),
        )
        for i in range(DRAIN_WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * DRAIN_WORKERS, "a worker crashed (its stderr)"
    completed = [item for out in outs for item in json.loads(Path(out).read_text())]
    assert len(completed) == DRAIN_TASKS
    assert {c["id"] for c in completed} == {str(i) for i in ids}  # each exactly once
    assert all(c["attempts"] == 1 for c in completed)  # never claimed twice
    types = {str(task_id): DRAIN_TYPES[i % len(DRAIN_TYPES)] for i, task_id in enumerate(ids)}
    by = Counter((types[c["id"]], c["by"]) for c in completed)
    assert by[("dal", "plain")] == by[("plain", "dal")] == 0, by  # the type filters held
    assert by[("dal", "dal")] > 0 and by[("plain", "plain")] > 0, by
    with dualdb.connect(migrated_url) as db:
        assert db.tasks.counts()["Complete"] == DRAIN_TASKS
        every = {t.id: t for t in db.tasks.iter(batch_size=1000)}
    who = {c["id"]: c["by"] for c in completed}
    crossings = 0
    for task in every.values():
        assert task.worker_id is not None and task.output_location == f"out/{task.id}"
        for dep in task.dependant_on:
            done_at = every[dep].updated_at
            assert task.generation_started_at is not None and done_at is not None
            assert task.generation_started_at >= done_at, f"{task.id} started before {dep}"
            crossings += who[str(task.id)] != who[str(dep)]
    # Dependencies completed by one kind of writer released tasks the other kind ran.
    assert crossings > 0
    reader = Plain(migrated_url)
    try:
        assert_queue_invariants(reader)
    finally:
        reader.close()


def test_a_task_keeps_its_id_and_its_dependents_keep_their_project(
    db: Database, writers: list[Plain], owner: Owner
) -> None:
    """Edges name tasks by id, and a dependency is always in its dependent's project."""
    for plain in writers:
        a = plain.insert_task(owner.project)
        b = plain.insert_task(owner.project, deps=[a])
        loose = plain.insert_task(owner.project)
        before = snapshot(db)
        for key in (a, b, loose):
            assert plain.refused(
                "UPDATE tasks SET id = ? WHERE id = ?", str(uuid.uuid4()), key
            ) == (ID_FIXED)
        move = "UPDATE tasks SET project_id = ? WHERE id = ?"
        assert plain.refused(move, owner.other_project, a) == DEPS_MOVE  # b would be left
        assert plain.refused(move, owner.other_project, b) == DEPS_PROJECT  # a is not there
        every = "UPDATE tasks SET project_id = ? WHERE project_id = ? AND status = 'Queued'"
        assert plain.refused(every, owner.other_project, owner.project) in (
            DEPS_MOVE,
            DEPS_PROJECT,
        )
        assert snapshot(db) == before
        # A task nothing depends on, and that depends on nothing, may move.
        assert plain.write(move, owner.other_project, loose) == 1
        claimed = db.tasks.claim("dal")
        assert claimed is not None and str(claimed.id) == a
        db.tasks.complete(a, "dal", "files/a.png")
        got = db.tasks.claim("dal")
        assert got is not None and str(got.id) == b
        db.tasks.complete(b, "dal", "files/b.png")
        db.tasks.cancel(loose)
