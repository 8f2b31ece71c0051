"""Differential test: the same random DAL operations on SQLite and on Postgres, side by side.

A hypothesis state machine applies every operation to both databases and asserts identical
observable results after every step: returned records (timestamps excluded, ``updated_at``
compared as set/unset), list orders and pages, counts, and error types with their fields.
After each step the whole content of both databases, read through the DAL, must match too.

Ids are passed explicitly and increase with creation order, so records compare directly and
the ``(created_at, id)`` order is creation order on both backends.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import dualdb
from dualdb.database import Repositories
from dualdb.errors import DualdbError
from dualdb.records import Page, Record, ShotGeneration
from dualdb.schema import users
from dualdb.unset import UNSET
from tests.conftest import PgServer, _create_database, _drop_database, _require_pg

# --- comparing outcomes ----------------------------------------------------------------------


def normal(value: Any) -> Any:
    """A backend-independent view of a DAL result."""
    if isinstance(value, ShotGeneration):
        # Placement ids are made inside the DAL (UUIDv7), so they differ between backends.
        return ("placement", value.shot_id, value.generation_id, value.position)
    if isinstance(value, Record):
        data = value.as_dict()
        for stamp in ("created_at", "updated_at"):
            if stamp in data:
                data[stamp] = data[stamp] is not None
        if "params" in data:
            # As text, so key order and int/float types count too.
            data["params"] = json.dumps(data["params"])
        return (type(value).__name__, data)
    if isinstance(value, Page):
        return ("page", [normal(r) for r in value.items], value.next_cursor is not None)
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    return value


def outcome(call: Callable[[], Any]) -> Any:
    """What a call did: its normalised result, or the dualdb error it raised (type and field).

    Any other exception (a raw driver error, say) propagates and fails the test.
    """
    try:
        return ("ok", normal(call()))
    except DualdbError as exc:
        return ("error", type(exc).__name__, getattr(exc, "field", None))


RAW_COLUMNS = "id, project_id, task_type, params, dependant_on, unmet_dependencies"


class RawArray(list[str]):
    """A list of ids, sent as JSON text to SQLite and as an array to Postgres."""


def _sqlite_adapt(value: RawArray) -> str:
    return json.dumps(list(value))


sqlite3.register_adapter(RawArray, _sqlite_adapt)

#: The kinds of native constraint violations, by each driver's name for them.
_KINDS = {
    "SQLITE_CONSTRAINT_FOREIGNKEY": "foreign key",
    "SQLITE_CONSTRAINT_PRIMARYKEY": "unique",
    "SQLITE_CONSTRAINT_UNIQUE": "unique",
    "SQLITE_CONSTRAINT_CHECK": "check",
    "SQLITE_CONSTRAINT_NOTNULL": "not null",
    "23503": "foreign key",
    "23505": "unique",
    "23514": "check",
    "23502": "not null",
}


def raw_outcome(call: Callable[[], Any]) -> Any:
    """What a plain-SQL statement did: ``("ok", rowcount)`` or the rule it broke."""
    try:
        return ("ok", call())
    except (sqlite3.Error, psycopg.Error) as exc:
        message = str(exc).strip().splitlines()[0]
        if message.startswith(("invalid ", "conflict: ")):
            return ("error", message)
        code = getattr(exc, "sqlite_errorname", None) or getattr(exc, "sqlstate", None)
        return ("error", _KINDS.get(str(code), f"{type(exc).__name__}: {message}"))


def wipe(db: dualdb.Database) -> None:
    """Empty every table: deleting the users cascades to everything else (and the database
    refuses direct deletes of its derived rows)."""
    with db.engine.begin() as conn:
        conn.execute(users.delete())
    assert set(db.row_counts().values()) == {0}


# --- strategies ------------------------------------------------------------------------------

text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=6
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else ``bad``: rows must exist to work on, but errors must be
    compared too."""
    return st.integers(0, 4).flatmap(lambda roll: bad if roll == 0 else good)


names = mostly(
    st.one_of(text, st.sampled_from([" padded ", "é 🎬"])),
    st.sampled_from(["", "   ", "x" * 201, "a\x00b"]),
)
emails = st.one_of(st.none(), st.sampled_from(["a@example.com", "b@example.com", "x" * 321]))
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
good_params = st.dictionaries(text, json_value, max_size=4)
bad_params = st.one_of(
    good_params.map(lambda d: {**d, "bad": float("inf")}),
    st.sampled_from([float("nan"), {1, 2}, b"bytes", "nul\x00"]).map(lambda v: {"x": v}),
    st.just({1: "non-string key"}),
)
params = mostly(good_params, bad_params)
task_types = mostly(
    st.sampled_from(["single_image", "travel_stitch", "upscale"]),
    st.sampled_from(["bad type", ""]),
)
statuses = mostly(st.sampled_from(["Queued", "Pending"]), st.sampled_from(["queued", "Failed"]))
positions = st.one_of(st.none(), st.integers(min_value=-1, max_value=6))
locations = st.one_of(st.none(), st.sampled_from(["a.png", "b.mp4", "x" * 2049]))
kinds = st.one_of(st.none(), st.sampled_from(["image", "video"]))
unknown_ids = st.uuids(version=4)

REPOS = ["users", "projects", "shots", "generations", "shot_generations", "tasks"]


KINDS = ("users", "projects", "shots", "generations", "tasks")


class DalPair(RuleBasedStateMachine):
    """The same operations on ``lite`` (SQLite) and ``pg`` (Postgres)."""

    # Set by the test before running.
    lite: dualdb.Database
    pg: dualdb.Database
    #: Plain driver connections to the same two databases (autocommit, no DAL).
    lite_raw: sqlite3.Connection
    pg_raw: psycopg.Connection[Any]

    def __init__(self) -> None:
        super().__init__()
        wipe(self.lite)
        wipe(self.pg)
        self.counter = 0
        #: Ids created per kind (kept after deletes: stale ids must be NotFound on both).
        self.ids: dict[str, list[uuid.UUID]] = {kind: [] for kind in KINDS}
        #: The project of each shot, generation and task created.
        self.project_of: dict[uuid.UUID, uuid.UUID] = {}

    # --- helpers ------------------------------------------------------------------------------

    def new_id(self) -> uuid.UUID:
        """The next id: increasing, so id order is creation order."""
        self.counter += 1
        return uuid.UUID(f"00000000-0000-4000-8000-{self.counter:012x}")

    def both(self, op: Callable[[Repositories], Any]) -> Any:
        """Run ``op`` on both databases; their outcomes must be identical."""
        a = outcome(lambda: op(self.lite))
        b = outcome(lambda: op(self.pg))
        assert a == b, f"SQLite and Postgres differ:\n  sqlite:   {a}\n  postgres: {b}"
        # With --hypothesis-show-statistics: how often each rule succeeds or fails how.
        event(f"{sys._getframe(1).f_code.co_name}: {a[0] if a[0] == 'ok' else a[1:]}")
        return a

    def created(self, result: Any, kind: str, key: uuid.UUID, project: Any = None) -> None:
        """Remember ``key`` if the create succeeded."""
        if result[0] == "ok":
            self.ids[kind].append(key)
            if project is not None:
                self.project_of[key] = project

    def pick(self, data: st.DataObject, kind: str) -> uuid.UUID:
        """A known id of ``kind`` (recent ones more often), or now and then an unknown one."""
        known = self.ids[kind]
        if not known or data.draw(st.integers(0, 9)) == 0:
            unknown: uuid.UUID = data.draw(unknown_ids)
            return unknown
        return known[-1 - data.draw(st.integers(0, len(known) - 1))]

    def in_project(self, data: st.DataObject, kind: str, project: Any, n: int) -> list[uuid.UUID]:
        """Up to ``n`` ids of ``kind``, mostly of ``project``, sometimes foreign or unknown."""
        mine = [k for k in self.ids[kind] if self.project_of.get(k) == project]
        others = [k for k in self.ids[kind] if self.project_of.get(k) != project]
        picks: list[uuid.UUID] = []
        for _ in range(data.draw(st.integers(0, n))):
            roll = data.draw(st.integers(0, 9))
            if roll < 8 and mine:
                picks.append(data.draw(st.sampled_from(mine)))
            elif roll == 8 and others:
                picks.append(data.draw(st.sampled_from(others)))
            elif roll == 9:
                picks.append(data.draw(unknown_ids))
        return picks

    @initialize()
    def baseline(self) -> None:
        """Two users with a project each, shots, generations and a task chain to work on."""
        for u in range(2):
            uid, pid = self.new_id(), self.new_id()
            result = self.both(lambda db, uid=uid, u=u: db.users.create(uid, email=f"{u}@x.io"))
            self.created(result, "users", uid)
            result = self.both(lambda db, uid=uid, pid=pid: db.projects.create("P", uid, id=pid))
            self.created(result, "projects", pid)
            for name in ("Opening", "Finale"):
                sid = self.new_id()
                result = self.both(lambda db, p=pid, n=name, s=sid: db.shots.create(p, n, id=s))
                self.created(result, "shots", sid, pid)
            previous: list[uuid.UUID] = []
            for t in range(2):
                tid = self.new_id()
                result = self.both(
                    lambda db, p=pid, t=t, d=previous, i=tid: db.tasks.enqueue(
                        p, "step", {"t": t}, depends_on=d, id=i
                    )
                )
                self.created(result, "tasks", tid, pid)
                previous = [tid]
            for _ in range(3):
                gid = self.new_id()
                result = self.both(
                    lambda db, p=pid, d=previous, g=gid: db.generations.create(p, tasks=d, id=g)
                )
                self.created(result, "generations", gid, pid)
                first_shot = self.ids["shots"][-2]
                self.both(lambda db, s=first_shot, g=gid: db.shots.add_generation(s, g))

    # --- creates ------------------------------------------------------------------------------

    @rule(email=emails)
    def create_user(self, email: str | None) -> None:
        uid = self.new_id()
        self.created(self.both(lambda db: db.users.create(uid, email=email)), "users", uid)

    @rule(name=names, data=st.data())
    def create_project(self, name: str, data: st.DataObject) -> None:
        pid, owner = self.new_id(), self.pick(data, "users")
        result = self.both(lambda db: db.projects.create(name, owner, id=pid))
        self.created(result, "projects", pid)

    @rule(data=st.data())
    def create_with_a_taken_id(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["projects", "shots", "tasks"]))
        taken, project = self.pick(data, kind), self.pick(data, "projects")
        create = {
            "projects": lambda db: db.projects.create("dup", self.ids["users"][0], id=taken),
            "shots": lambda db: db.shots.create(project, "dup", id=taken),
            "tasks": lambda db: db.tasks.enqueue(project, "dup", {}, id=taken),
        }[kind]
        self.created(self.both(create), kind, taken, project if kind != "projects" else None)

    @rule(name=names, data=st.data())
    def create_shot(self, name: str, data: st.DataObject) -> None:
        sid, pid = self.new_id(), self.pick(data, "projects")
        self.created(self.both(lambda db: db.shots.create(pid, name, id=sid)), "shots", sid, pid)

    @rule(location=locations, kind=kinds, data=st.data())
    def create_generation(
        self, location: str | None, kind: str | None, data: st.DataObject
    ) -> None:
        gid, pid = self.new_id(), self.pick(data, "projects")
        linked = self.in_project(data, "tasks", pid, 2)
        result = self.both(
            lambda db: db.generations.create(
                pid, location=location, type=kind, tasks=linked, id=gid
            )
        )
        self.created(result, "generations", gid, pid)

    @rule(task_type=task_types, p=params, status=statuses, data=st.data())
    def enqueue(self, task_type: str, p: Any, status: str, data: st.DataObject) -> None:
        tid, pid = self.new_id(), self.pick(data, "projects")
        deps = self.in_project(data, "tasks", pid, 3)
        result = self.both(
            lambda db: db.tasks.enqueue(pid, task_type, p, depends_on=deps, status=status, id=tid)
        )
        self.created(result, "tasks", tid, pid)

    @rule(n=st.integers(1, 4), data=st.data())
    def create_task_chain(self, n: int, data: st.DataObject) -> None:
        pid = self.pick(data, "projects")
        ids = [self.new_id() for _ in range(n)]
        outside = self.in_project(data, "tasks", pid, 1)
        rows = [
            {
                "id": ids[i],
                "project_id": pid,
                "task_type": "step",
                "params": {"i": i},
                "depends_on": [*outside, *ids[:i][-1:]],
            }
            for i in range(n)
        ]
        result = self.both(lambda db: db.tasks.create_many(rows))
        for tid in ids:
            self.created(result, "tasks", tid, pid)

    # --- updates ------------------------------------------------------------------------------

    @rule(email=st.one_of(st.just(UNSET), emails), data=st.data())
    def update_user(self, email: Any, data: st.DataObject) -> None:
        uid = self.pick(data, "users")
        self.both(lambda db: db.users.update(uid, email=email))

    @rule(
        kind=st.sampled_from(["projects", "shots"]),
        name=st.one_of(st.just(UNSET), names),
        data=st.data(),
    )
    def rename(self, kind: str, name: Any, data: st.DataObject) -> None:
        key = self.pick(data, kind)
        self.both(lambda db: getattr(db, kind).update(key, name=name))

    @rule(
        location=st.one_of(st.just(UNSET), locations),
        kind=st.one_of(st.just(UNSET), kinds),
        relink=st.booleans(),
        data=st.data(),
    )
    def update_generation(
        self, location: Any, kind: Any, relink: bool, data: st.DataObject
    ) -> None:
        gid = self.pick(data, "generations")
        linked = self.in_project(data, "tasks", self.project_of.get(gid), 2) if relink else UNSET
        self.both(lambda db: db.generations.update(gid, location=location, type=kind, tasks=linked))

    @rule(
        p=st.one_of(st.just(UNSET), params),
        task_type=st.one_of(st.just(UNSET), task_types),
        data=st.data(),
    )
    def update_task(self, p: Any, task_type: Any, data: st.DataObject) -> None:
        tid = self.pick(data, "tasks")
        self.both(lambda db: db.tasks.update(tid, params=p, task_type=task_type))

    # --- deletes ------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS), data=st.data())
    def delete(self, kind: str, data: st.DataObject) -> None:
        # A generation on a shot half of the time: its shot's positions must close up.
        key = self.placed(data)[1] if kind == "generations" and data.draw(st.booleans()) else None
        key = key or self.pick(data, kind)
        # Users and projects go rarely: they take everything under them along.
        if kind in ("users", "projects") and data.draw(st.integers(0, 3)) != 0:
            return
        self.both(lambda db: getattr(db, kind).delete(key))

    @rule(index=st.integers(0, 5), data=st.data())
    def delete_placement(self, index: int, data: st.DataObject) -> None:
        shot = self.pick(data, "shots")
        placed = self.lite.shot_generations.list(shot_id=shot).items
        if index < len(placed):
            gid = placed[index].generation_id

            def op(db: Repositories) -> Any:
                # Placement ids differ per backend: find this backend's by generation.
                mine = db.shot_generations.list(shot_id=shot, generation_id=gid).items
                return db.shot_generations.delete(mine[0].id)

            self.both(op)

    # --- placements ---------------------------------------------------------------------------

    def shot_and_generation(self, data: st.DataObject) -> tuple[uuid.UUID, uuid.UUID]:
        """A shot, and mostly a generation of its project (sometimes another or unknown)."""
        shot = self.pick(data, "shots")
        gens = self.in_project(data, "generations", self.project_of.get(shot), 1)
        return shot, (gens[0] if gens else self.pick(data, "generations"))

    @rule(position=positions, data=st.data())
    def add_generation(self, position: int | None, data: st.DataObject) -> None:
        shot, gen = self.shot_and_generation(data)
        self.both(lambda db: db.shots.add_generation(shot, gen, position=position))

    def placed(self, data: st.DataObject) -> tuple[uuid.UUID, uuid.UUID]:
        """A shot, and mostly a generation placed on it."""
        shot = self.pick(data, "shots")
        on = [p.generation_id for p in self.lite.shot_generations.iter(shot_id=shot)]
        if on and data.draw(st.integers(0, 4)) != 0:
            gen: uuid.UUID = data.draw(st.sampled_from(on))
            return shot, gen
        return shot, self.pick(data, "generations")

    @rule(position=st.integers(-1, 6), data=st.data())
    def move_generation(self, position: int, data: st.DataObject) -> None:
        shot, gen = self.placed(data)
        self.both(lambda db: db.shots.move_generation(shot, gen, position))

    @rule(data=st.data())
    def remove_generation(self, data: st.DataObject) -> None:
        shot, gen = self.placed(data)
        self.both(lambda db: db.shots.remove_generation(shot, gen))

    @rule(data=st.data())
    def reorder(self, data: st.DataObject) -> None:
        shot = self.pick(data, "shots")
        current = [p.generation_id for p in self.lite.shot_generations.iter(shot_id=shot)]
        order = data.draw(st.permutations(current))
        if current and data.draw(st.integers(0, 4)) == 0:
            order = order[1:]  # a wrong set: refused on both
        self.both(lambda db: db.shots.reorder(shot, order))

    # --- reads --------------------------------------------------------------------------------

    @rule(repo=st.sampled_from(REPOS), limit=st.integers(1, 4), data=st.data())
    def paginate(self, repo: str, limit: int, data: st.DataObject) -> None:
        filters: dict[str, Any] = {}
        by = {
            "projects": ("user_id", "users"),
            "shots": ("project_id", "projects"),
            "generations": ("project_id", "projects"),
            "tasks": ("project_id", "projects"),
            "shot_generations": ("shot_id", "shots"),
        }
        if repo in by and data.draw(st.booleans()):
            key, kind = by[repo]
            filters[key] = self.pick(data, kind)
        if repo == "tasks" and data.draw(st.booleans()):
            filters["status"] = data.draw(st.sampled_from(["Queued", "Pending"]))
        cursors: dict[str, str | None] = {"lite": None, "pg": None}
        for _ in range(100):
            pages = {}
            for name, db in (("lite", self.lite), ("pg", self.pg)):
                pages[name] = getattr(db, repo).list(**filters, limit=limit, cursor=cursors[name])
            assert normal(pages["lite"]) == normal(pages["pg"]), (repo, filters)
            if pages["lite"].next_cursor is None:
                break
            cursors = {k: p.next_cursor for k, p in pages.items()}
        self.both(lambda db: getattr(db, repo).count(**filters))

    @rule(kind=st.sampled_from(KINDS), data=st.data())
    def get_and_find(self, kind: str, data: st.DataObject) -> None:
        key = self.pick(data, kind)
        self.both(lambda db: getattr(db, kind).get(key))
        self.both(lambda db: getattr(db, kind).find(key))

    @rule(data=st.data())
    def domain_reads(self, data: st.DataObject) -> None:
        task, user, shot = (
            self.pick(data, "tasks"),
            self.pick(data, "users"),
            self.pick(data, "shots"),
        )
        self.both(lambda db: db.generations.for_task(task))
        self.both(lambda db: db.projects.for_user(user))
        self.both(lambda db: db.shots.generations(shot))

    # --- sessions -----------------------------------------------------------------------------

    @rule(name=names, task_type=task_types, fail_at_end=st.booleans(), data=st.data())
    def session(self, name: str, task_type: str, fail_at_end: bool, data: st.DataObject) -> None:
        pid, shot_id, task_id = self.pick(data, "projects"), self.new_id(), self.new_id()

        def op(db: dualdb.Database) -> Any:
            seen = []
            try:
                with db.session() as s:
                    seen.append(outcome(lambda: s.shots.create(pid, name, id=shot_id)))
                    seen.append(outcome(lambda: s.tasks.enqueue(pid, task_type, {}, id=task_id)))
                    seen.append(outcome(lambda: s.shots.count(project_id=pid)))
                    if fail_at_end:
                        raise RuntimeError("roll back")
            except RuntimeError:
                seen.append("rolled back")
            return seen

        a, b = op(self.lite), op(self.pg)
        assert a == b, f"SQLite and Postgres differ:\n  sqlite:   {a}\n  postgres: {b}"
        event(f"session: {[x if isinstance(x, str) else x[0] for x in a]}")
        if not fail_at_end:
            self.created(a[0], "shots", shot_id, pid)
            self.created(a[1], "tasks", task_id, pid)

    # --- plain SQL, as other programs write (no DAL) -------------------------------------------

    def raw(self, sqlite_sql: str, pg_sql: str, *args: Any) -> Any:
        """Run one statement with plain sqlite3 and psycopg; the outcomes must be identical.

        Ids go in as text; ``pg_sql`` casts them.  Errors compare by the database rule's own
        message (the triggers' text is the same on both) or by constraint kind.
        """
        a = raw_outcome(lambda: self.lite_raw.execute(sqlite_sql, args).rowcount)
        b = raw_outcome(lambda: self.pg_raw.execute(pg_sql, args).rowcount)
        assert a == b, f"SQLite and Postgres differ:\n  sqlite:   {a}\n  postgres: {b}"
        event(f"{sys._getframe(1).f_code.co_name}: {a[0] if a[0] == 'ok' else a[1]}")
        return a

    @rule(data=st.data())
    def raw_claim_and_complete(self, data: st.DataObject) -> None:
        """A worker written in plain SQL: start a task, then complete it."""
        key = str(self.pick(data, "tasks"))
        self.raw(
            "UPDATE tasks SET status = 'In Progress', worker_id = 'raw', "
            "attempts = attempts + 1 WHERE id = ?",
            "UPDATE tasks SET status = 'In Progress', worker_id = 'raw', "
            "attempts = attempts + 1 WHERE id = %s::uuid",
            key,
        )
        if data.draw(st.booleans()):
            self.raw(
                "UPDATE tasks SET status = 'Complete', output_location = 'raw/out' WHERE id = ?",
                "UPDATE tasks SET status = 'Complete', output_location = 'raw/out' "
                "WHERE id = %s::uuid",
                key,
            )

    @rule(status=st.sampled_from(["Cancelled", "Failed", "Queued", "Pending"]), data=st.data())
    def raw_set_status(self, status: str, data: st.DataObject) -> None:
        key = str(self.pick(data, "tasks"))
        self.raw(
            "UPDATE tasks SET status = ?, error = 'raw' WHERE id = ?",
            "UPDATE tasks SET status = %s, error = 'raw' WHERE id = %s::uuid",
            status,
            key,
        )

    @rule(data=st.data())
    def raw_delete_task(self, data: st.DataObject) -> None:
        key = str(self.pick(data, "tasks"))
        self.raw("DELETE FROM tasks WHERE id = ?", "DELETE FROM tasks WHERE id = %s::uuid", key)

    @rule(data=st.data())
    def raw_insert_task(self, data: st.DataObject) -> None:
        """A task inserted by another program, with dependencies, counter left to the database."""
        pid = self.pick(data, "projects")
        deps = [str(d) for d in self.in_project(data, "tasks", pid, 3)]
        tid = self.new_id()
        result = self.raw(
            f"INSERT INTO tasks ({RAW_COLUMNS}) VALUES (?, ?, 'raw', '{{}}', ?, 7)",
            f"INSERT INTO tasks ({RAW_COLUMNS}) "
            "VALUES (%s::uuid, %s::uuid, 'raw', '{}', %s::uuid[], 7)",
            str(tid),
            str(pid),
            RawArray(deps),
        )
        if result[0] == "ok":
            self.ids["tasks"].append(tid)
            self.project_of[tid] = pid

    @rule(
        bad=st.sampled_from(
            ["[1, 2]", '"text"', "null", "[" * 100 + "]" * 100, '{"n": 1e400}', '{"a": 1}']
        ),
        data=st.data(),
    )
    def raw_write_params(self, bad: str, data: st.DataObject) -> None:
        key = str(self.pick(data, "tasks"))
        self.raw(
            "UPDATE tasks SET params = ? WHERE id = ?",
            "UPDATE tasks SET params = %s::jsonb WHERE id = %s::uuid",
            bad,
            key,
        )

    @rule(data=st.data())
    def raw_tamper_with_readiness(self, data: st.DataObject) -> None:
        key = str(self.pick(data, "tasks"))
        self.raw(
            "UPDATE tasks SET unmet_dependencies = 0 WHERE id = ?",
            "UPDATE tasks SET unmet_dependencies = 0 WHERE id = %s::uuid",
            key,
        )

    # --- after every step ---------------------------------------------------------------------

    @invariant()
    def same_content(self) -> None:
        """Both databases hold the same rows, and every shot's positions are 0..n-1."""
        for repo in REPOS:
            a = [normal(r) for r in getattr(self.lite, repo).iter()]
            b = [normal(r) for r in getattr(self.pg, repo).iter()]
            assert a == b, f"{repo} differ between SQLite and Postgres"
            if repo == "shot_generations":
                by_shot: dict[uuid.UUID, list[int]] = {}
                for _, shot, _, position in a:
                    by_shot.setdefault(shot, []).append(position)
                for shot, seen in by_shot.items():
                    assert seen == list(range(len(seen))), f"shot {shot} positions {seen}"
        assert self.lite.row_counts() == self.pg.row_counts()
        # The database's derived state agrees too (readiness is not in the records).
        query = (
            "SELECT t.id, t.unmet_dependencies, "
            "(SELECT count(*) FROM task_dependencies e WHERE e.task_id = t.id) "
            "FROM tasks t ORDER BY t.id"
        )
        lite = [(str(i), u, e) for i, u, e in self.lite_raw.execute(query).fetchall()]
        pg = [(str(i), u, e) for i, u, e in self.pg_raw.execute(query).fetchall()]
        assert lite == pg, "readiness differs between SQLite and Postgres"


@pytest.fixture
def pair(
    pg_server: PgServer, pg_template: str | None, sqlite_template: Path, tmp_path: Path
) -> Iterator[tuple[dualdb.Database, dualdb.Database]]:
    """A migrated SQLite file and a migrated Postgres database, side by side."""
    _require_pg(pg_server)
    assert pg_template is not None
    lite_path = tmp_path / "lite.db"
    lite_path.write_bytes(sqlite_template.read_bytes())
    name = _create_database(pg_server, template=pg_template)
    # The other programs: plain drivers, autocommit; SQLite with foreign keys on, as dualdb
    # (test_foreign_writers.py covers them off).
    lite_raw = sqlite3.connect(lite_path, isolation_level=None, timeout=30)
    lite_raw.execute("PRAGMA foreign_keys = ON")
    pg_raw = psycopg.connect(pg_server.url_for(name), autocommit=True)
    try:
        with (
            dualdb.connect(f"sqlite:///{lite_path}") as lite,
            dualdb.connect(pg_server.url_for(name)) as pg,
        ):
            DalPair.lite_raw, DalPair.pg_raw = lite_raw, pg_raw
            yield lite, pg
    finally:
        lite_raw.close()
        pg_raw.close()
        _drop_database(pg_server, name)


@pytest.mark.postgres
def test_sqlite_and_postgres_agree_on_random_operation_sequences(
    pair: tuple[dualdb.Database, dualdb.Database],
) -> None:
    DalPair.lite, DalPair.pg = pair
    run_state_machine_as_test(
        DalPair,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_normal_ignores_timestamps_but_not_values() -> None:
    """The comparison itself: equal up to timestamps, different on any other field."""
    from datetime import UTC, datetime, timedelta

    from dualdb.records import Project

    now = datetime.now(UTC)
    uid, pid = uuid.uuid4(), uuid.uuid4()
    a = Project(pid, "A", uid, now, None)
    assert normal(a) == normal(dataclasses.replace(a, created_at=now + timedelta(seconds=1)))
    assert normal(a) != normal(dataclasses.replace(a, updated_at=now))
    assert normal(a) != normal(dataclasses.replace(a, name="B"))
    assert outcome(lambda: math.sqrt(4)) == ("ok", 2.0)
