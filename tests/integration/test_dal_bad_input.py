"""Bad input of every kind: a typed error naming the field, and not one row changed.

Each test walks a table of cases on a real SQLite file and a real Postgres; after every case the
whole database is compared with a snapshot taken before it.  All failing cases are reported
together.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import dualdb
from dualdb.errors import Conflict, InvalidInput, NotFound
from dualdb.queue import MAX_STALE_AGE
from dualdb.records import Task
from dualdb.schema import tasks
from dualdb.worker import Worker
from tests.integration.dal_support import World, assert_unchanged

#: (label, call, expected error, field the error must name — None when it names none)
Case = tuple[str, Callable[[], object], type[Exception], str | None]


def check(db: dualdb.Database, cases: list[Case]) -> None:
    """Run every case; fail listing each one that raised the wrong thing or wrote anything."""
    failures: list[str] = []
    for label, action, error, field in cases:
        try:
            assert_unchanged(db, action, error, field)
        except AssertionError as exc:
            failures.append(f"{label}: {exc}")
        except Exception as exc:
            failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


MALFORMED_UUIDS: list[object] = [
    "",
    "abc",
    "123e4567-e89b-12d3-a456-42661417400",  # one digit short
    "123e4567-e89b-12d3-a456-4266141740000",  # one digit long
    "123e4567-e89b-12d3-a456-42661417400g",
    " 123e4567-e89b-12d3-a456-426614174000 x",
    12345,
    1.5,
    b"123e4567e89b12d3a456426614174000",
    ["123e4567-e89b-12d3-a456-426614174000"],
    object(),
]


def test_malformed_uuids_name_the_argument(db: dualdb.Database, world: World) -> None:
    pid, sid, gid, tid = world.project.id, world.shot.id, world.generation.id, world.task.id
    cases: list[Case] = []
    for bad in MALFORMED_UUIDS:
        b: Any = bad
        cases += [
            (f"projects.get({bad!r})", lambda b=b: db.projects.get(b), InvalidInput, "id"),
            (f"tasks.find({bad!r})", lambda b=b: db.tasks.find(b), InvalidInput, "id"),
            (f"shots.delete({bad!r})", lambda b=b: db.shots.delete(b), InvalidInput, "id"),
            (
                f"generations.update({bad!r})",
                lambda b=b: db.generations.update(b, location="x"),
                InvalidInput,
                "id",
            ),
            (
                f"projects.create(user_id={bad!r})",
                lambda b=b: db.projects.create("P", b),
                InvalidInput,
                "user_id",
            ),
            (
                f"shots.create(project_id={bad!r})",
                lambda b=b: db.shots.create(b, "S"),
                InvalidInput,
                "project_id",
            ),
            (
                f"tasks.enqueue(project_id={bad!r})",
                lambda b=b: db.tasks.enqueue(b, "x", {}),
                InvalidInput,
                "project_id",
            ),
            (
                f"tasks.enqueue(depends_on=[ok, {bad!r}])",
                lambda b=b: db.tasks.enqueue(pid, "x", {}, depends_on=[tid, b]),
                InvalidInput,
                "depends_on[1]",
            ),
            (
                f"generations.create(tasks=[{bad!r}])",
                lambda b=b: db.generations.create(pid, tasks=[b]),
                InvalidInput,
                "tasks[0]",
            ),
            (
                f"projects.create(id={bad!r})",
                lambda b=b: db.projects.create("P", world.user.id, id=b),
                InvalidInput,
                "id",
            ),
            (
                f"shots.add_generation(generation_id={bad!r})",
                lambda b=b: db.shots.add_generation(sid, b),
                InvalidInput,
                "generation_id",
            ),
            (
                f"shots.move_generation(shot_id={bad!r})",
                lambda b=b: db.shots.move_generation(b, gid, 0),
                InvalidInput,
                "shot_id",
            ),
            (
                f"generations.for_task({bad!r})",
                lambda b=b: db.generations.for_task(b),
                InvalidInput,
                "task_id",
            ),
            (
                f"projects.for_user({bad!r})",
                lambda b=b: db.projects.for_user(b),
                InvalidInput,
                "user_id",
            ),
            (
                f"tasks.list(project_id={bad!r})",
                lambda b=b: db.tasks.list(project_id=b),
                InvalidInput,
                "project_id",
            ),
            (
                f"shot_generations.count(shot_id={bad!r})",
                lambda b=b: db.shot_generations.count(shot_id=b),
                InvalidInput,
                "shot_id",
            ),
        ]
    cases += [
        ("depends_on as a string", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=str(tid)),
         InvalidInput, "depends_on"),
        ("tasks as a string", lambda: db.generations.create(pid, tasks=str(tid)),  # type: ignore[arg-type]
         InvalidInput, "tasks"),
        ("projects.create(user_id=None)", lambda: db.projects.create("P", None),  # type: ignore[arg-type]
         InvalidInput, "user_id"),
    ]  # fmt: skip
    check(db, cases)


def test_unknown_ids_are_not_found(db: dualdb.Database, world: World) -> None:
    nobody = uuid.uuid4()
    pid, sid, gid = world.project.id, world.shot.id, world.generation.id
    cases: list[Case] = [
        ("users.get", lambda: db.users.get(nobody), NotFound, None),
        ("projects.update", lambda: db.projects.update(nobody, name="x"), NotFound, None),
        ("shots.update", lambda: db.shots.update(nobody, name="x"), NotFound, None),
        ("generations.update", lambda: db.generations.update(nobody, type="x"), NotFound, None),
        ("tasks.update", lambda: db.tasks.update(nobody, params={}), NotFound, None),
        ("users.update", lambda: db.users.update(nobody, email=None), NotFound, None),
        ("users.delete", lambda: db.users.delete(nobody), NotFound, None),
        ("projects.delete", lambda: db.projects.delete(nobody), NotFound, None),
        ("generations.delete", lambda: db.generations.delete(nobody), NotFound, None),
        ("tasks.delete", lambda: db.tasks.delete(nobody), NotFound, None),
        ("shot_generations.delete", lambda: db.shot_generations.delete(nobody), NotFound, None),
        ("projects.create(unknown user)", lambda: db.projects.create("P", nobody), NotFound, None),
        ("shots.create(unknown project)", lambda: db.shots.create(nobody, "S"), NotFound, None),
        ("generations.create(unknown project)", lambda: db.generations.create(nobody), NotFound,
         None),
        ("tasks.enqueue(unknown project)", lambda: db.tasks.enqueue(nobody, "x", {}), NotFound,
         None),
        ("shots.add_generation(unknown shot)", lambda: db.shots.add_generation(nobody, gid),
         NotFound, None),
        ("shots.add_generation(unknown generation)", lambda: db.shots.add_generation(sid, nobody),
         NotFound, None),
        ("shots.move_generation(unknown shot)", lambda: db.shots.move_generation(nobody, gid, 0),
         NotFound, None),
        ("shots.remove_generation(not placed)", lambda: db.shots.remove_generation(sid, gid),
         NotFound, None),
        ("shots.reorder(unknown shot)", lambda: db.shots.reorder(nobody, []), NotFound, None),
        ("shots.placements(unknown shot)", lambda: db.shots.placements(nobody), NotFound, None),
        ("shots.generations(unknown shot)", lambda: db.shots.generations(nobody), NotFound, None),
        ("a batch naming one unknown project",
         lambda: db.shots.create_many([{"project_id": pid, "name": "a"},
                                       {"project_id": nobody, "name": "b"}]), NotFound, None),
        ("generation with an unknown task", lambda: db.generations.create(pid, tasks=[nobody]),
         InvalidInput, "tasks"),
    ]  # fmt: skip
    check(db, cases)


def test_statuses(db: dualdb.Database, world: World) -> None:
    pid = world.project.id
    cases: list[Case] = []
    for bad in ("queued", "QUEUED", "Done", "", " Queued", "In progress", None, 1, ["Queued"]):
        b: Any = bad
        cases += [
            (f"enqueue(status={bad!r})", lambda b=b: db.tasks.enqueue(pid, "x", {}, status=b),
             InvalidInput, "status"),
            (f"list(status={bad!r})", lambda b=b: db.tasks.list(status=b), InvalidInput,
             "status"),
        ]  # fmt: skip
    for started in ("In Progress", "Complete", "Failed", "Cancelled"):
        s: Any = started
        cases.append(
            (f"enqueue(status={started!r})", lambda s=s: db.tasks.enqueue(pid, "x", {}, status=s),
             InvalidInput, "status")
        )  # fmt: skip
    cases.append(
        ("count(status='bogus')", lambda: db.tasks.count(status="bogus"), InvalidInput, "status")
    )
    # None means "no filter" in list, so it is the one value that is not refused there.
    check(db, [c for c in cases if c[0] != "list(status=None)"])


BAD_PARAMS: list[tuple[str, object]] = [
    ("NaN", {"x": float("nan")}),
    ("infinity", {"x": float("inf")}),
    ("-infinity nested", {"x": [1, {"y": float("-inf")}]}),
    ("a set", {"x": {1, 2}}),
    ("a frozenset key's value", {"x": frozenset()}),
    ("an int key", {1: "x"}),
    ("a None key", {None: "x"}),
    ("a tuple key", {(1, 2): "x"}),
    ("a nested int key", {"x": {2: "y"}}),
    ("NUL in a value", {"x": "a\x00b"}),
    ("NUL in a key", {"a\x00": 1}),
    ("lone surrogate", {"x": "\ud800"}),
    ("bytes", {"x": b"raw"}),
    ("a datetime", {"x": datetime.now(UTC)}),
    ("a uuid object", {"x": uuid.uuid4()}),
    ("an arbitrary object", {"x": object()}),
    ("a list, not an object", [1, 2]),
    ("a string, not an object", '{"x": 1}'),
    ("None", None),
    ("too large", {"x": "y" * 1_000_001}),
]


def test_params_that_json_cannot_hold(db: dualdb.Database, world: World) -> None:
    pid, tid = world.project.id, world.task.id
    cases: list[Case] = []
    for label, bad in BAD_PARAMS:
        b: Any = bad
        cases += [
            (f"enqueue: {label}", lambda b=b: db.tasks.enqueue(pid, "x", b), InvalidInput,
             "params"),
            (f"update: {label}", lambda b=b: db.tasks.update(tid, params=b), InvalidInput,
             "params"),
        ]  # fmt: skip
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    cases.append(("nested 5000 deep", lambda: db.tasks.enqueue(pid, "x", deep), InvalidInput,
                  "params"))  # fmt: skip
    check(db, cases)


def test_names_and_text_fields(db: dualdb.Database, world: World) -> None:
    uid, pid, sid, gid = world.user.id, world.project.id, world.shot.id, world.generation.id
    names: list[object] = ["", "   ", "\t\n", "x" * 201, "a\x00b", "\udcff", None, 5, b"name"]
    cases: list[Case] = []
    for bad in names:
        b: Any = bad
        cases += [
            (f"projects.create({bad!r:.20})", lambda b=b: db.projects.create(b, uid),
             InvalidInput, "name"),
            (f"projects.update({bad!r:.20})", lambda b=b: db.projects.update(pid, name=b),
             InvalidInput, "name"),
            (f"shots.create({bad!r:.20})", lambda b=b: db.shots.create(pid, b), InvalidInput,
             "name"),
            (f"shots.update({bad!r:.20})", lambda b=b: db.shots.update(sid, name=b),
             InvalidInput, "name"),
        ]  # fmt: skip
    for bad in ("", "has space", "slash/y", "x" * 101, "-leading", "é", None, 3):
        b = bad
        cases += [
            (f"enqueue(task_type={bad!r:.20})", lambda b=b: db.tasks.enqueue(pid, b, {}),
             InvalidInput, "task_type"),
            (f"tasks.update(task_type={bad!r:.20})",
             lambda b=b: db.tasks.update(world.task.id, task_type=b), InvalidInput, "task_type"),
        ]  # fmt: skip
    cases += [
        ("email too long", lambda: db.users.create(email="e" * 321), InvalidInput, "email"),
        ("email with NUL", lambda: db.users.create(email="a\x00@b"), InvalidInput, "email"),
        ("email not text", lambda: db.users.update(uid, email=7), InvalidInput, "email"),  # type: ignore[arg-type]
        ("location too long", lambda: db.generations.create(pid, location="l" * 2049),
         InvalidInput, "location"),
        ("location with NUL", lambda: db.generations.update(gid, location="a\x00"),
         InvalidInput, "location"),
        ("type too long", lambda: db.generations.create(pid, type="t" * 101), InvalidInput,
         "type"),
        ("type not text", lambda: db.generations.update(gid, type=1.5), InvalidInput, "type"),  # type: ignore[arg-type]
    ]  # fmt: skip
    check(db, cases)


def test_limits_positions_and_filters(db: dualdb.Database, world: World) -> None:
    sid, gid = world.shot.id, world.generation.id
    db.shots.add_generation(sid, gid)
    cases: list[Case] = []
    for bad in (0, -1, 1001, 10**12, True, False, "10", 2.0, None):
        b: Any = bad
        cases += [
            (f"list(limit={bad!r})", lambda b=b: db.projects.list(limit=b), InvalidInput,
             "limit"),
            (f"iter(batch_size={bad!r})", lambda b=b: db.tasks.iter(batch_size=b), InvalidInput,
             "batch_size"),
        ]  # fmt: skip
    for bad in (-1, -(2**40), "0", 1.0, True):
        b = bad
        cases += [
            (f"add_generation(position={bad!r})",
             lambda b=b: db.shots.add_generation(sid, gid, position=b), InvalidInput,
             "position"),
            (f"move_generation(position={bad!r})",
             lambda b=b: db.shots.move_generation(sid, gid, b), InvalidInput, "position"),
        ]  # fmt: skip
    for repo in ("users", "projects", "shots", "generations", "shot_generations", "tasks"):
        r = getattr(db, repo)
        cases.append(
            (f"{repo}.count(colour=...)", lambda r=r: r.count(colour="red"), InvalidInput,
             "colour")
        )  # fmt: skip
        cases += [
            (f"{repo}.list(colour=...)", lambda r=r: r.list(colour="red"), InvalidInput,
             "colour"),
            (f"{repo}.iter(colour=...)", lambda r=r: r.iter(colour="red"), InvalidInput,
             "colour"),
        ]  # fmt: skip
    cases += [
        ("count by a real but unfilterable column", lambda: db.tasks.count(params="{}"),
         InvalidInput, "params"),
        ("shots.list(project_id=...) with a name", lambda: db.shots.count(name="Opening"),
         InvalidInput, "name"),
    ]  # fmt: skip
    check(db, cases)


def test_dependencies(db: dualdb.Database, world: World) -> None:
    pid, tid = world.project.id, world.task.id
    failed = db.tasks.enqueue(pid, "x", {})
    cancelled = db.tasks.enqueue(pid, "x", {})
    assert db.tasks.claim("w", ["x"]) is not None
    db.tasks.fail(failed.id, "w", "boom")
    db.tasks.cancel(cancelled.id)
    me = uuid.uuid4()
    too_many = [uuid.uuid4() for _ in range(1001)]
    cases: list[Case] = [
        ("a task of another project",
         lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[world.other_task.id]),
         InvalidInput, "depends_on"),
        ("an unknown task", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[uuid.uuid4()]),
         InvalidInput, "depends_on"),
        ("itself", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[me], id=me),
         InvalidInput, "depends_on"),
        ("a Failed task", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[failed.id]),
         InvalidInput, "depends_on"),
        ("a Cancelled task", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[cancelled.id]),
         InvalidInput, "depends_on"),
        ("more than 1000", lambda: db.tasks.enqueue(pid, "x", {}, depends_on=too_many),
         InvalidInput, "depends_on"),
        ("a valid one then an unknown one",
         lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[tid, uuid.uuid4()]),
         InvalidInput, "depends_on"),
        ("a later row of the same batch",
         lambda: db.tasks.create_many([
             {"project_id": pid, "task_type": "x", "params": {}, "depends_on": [me]},
             {"id": me, "project_id": pid, "task_type": "x", "params": {}},
         ]), InvalidInput, "depends_on"),
        ("a generation linked to another project's task",
         lambda: db.generations.create(pid, tasks=[world.other_task.id]), InvalidInput, "tasks"),
        ("deleting a task others wait for", lambda: db.tasks.delete(tid), Conflict, None),
    ]  # fmt: skip
    db.tasks.enqueue(pid, "waiter", {}, depends_on=[tid])
    check(db, cases)


def test_create_many_rows_must_be_well_formed(db: dualdb.Database, world: World) -> None:
    uid, pid = world.user.id, world.project.id
    cases: list[Case] = [
        ("projects: unknown key", lambda: db.projects.create_many([{"name": "a", "user_id": uid,
         "colour": "red"}]), InvalidInput, "colour"),
        ("shots: typo in a key", lambda: db.shots.create_many([{"project_id": pid, "nmae": "a"}]),
         InvalidInput, "nmae"),
        ("generations: unknown key", lambda: db.generations.create_many([{"project_id": pid,
         "url": "x"}]), InvalidInput, "url"),
        ("users: unknown key", lambda: db.users.create_many([{"mail": "a@b"}]), InvalidInput,
         "mail"),
        ("tasks: unknown key", lambda: db.tasks.create_many([{"project_id": pid,
         "task_type": "x", "params": {}, "priority": 1}]), InvalidInput, "priority"),
        ("projects: a row that is not a dict", lambda: db.projects.create_many(
         [{"name": "a", "user_id": uid}, ["b", uid]]), InvalidInput, "rows[1]"),  # type: ignore[list-item]
        ("shots: a string of rows", lambda: db.shots.create_many("rows"),  # type: ignore[arg-type]
         InvalidInput, "rows"),
        ("users: a duplicate id in the batch", lambda: db.users.create_many(
         [{"id": uid}, {"email": "new@b"}]), Conflict, None),
        ("projects: second row missing its name", lambda: db.projects.create_many(
         [{"name": "a", "user_id": uid}, {"user_id": uid}]), InvalidInput, "name"),
    ]  # fmt: skip
    check(db, cases)


def test_returned_datetimes_are_aware_utc(db: dualdb.Database, world: World) -> None:
    """Nothing in the DAL takes a datetime; everything it returns is aware and in UTC."""
    updated = db.projects.update(world.project.id, name="New")
    for record in (
        world.user,
        db.users.get(world.user.id),
        updated,
        db.projects.get(world.project.id),
        db.tasks.get(world.task.id),
        db.generations.get(world.generation.id),
        db.shots.list().items[0],
    ):
        for name in ("created_at", "updated_at"):
            value = getattr(record, name, None)
            if value is not None:
                assert value.tzinfo is not None and value.utcoffset().total_seconds() == 0
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(tasks.c.created_at)).scalars().all()
    assert all(ts.tzinfo is not None for ts in stored)


def _nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    cur = doc
    for _ in range(levels - 1):
        cur["a"] = {}
        cur = cur["a"]
    return doc


def test_rough_edges_a_new_user_hit(db: dualdb.Database, world: World) -> None:
    """Each gave a raw Python error, a backend-specific verdict, or silently did nothing."""
    pid = world.project.id

    def handler(task: Task) -> str:
        return "files/x.png"

    cases: list[Case] = [
        ("requeue_stale(timedelta.max)", lambda: db.tasks.requeue_stale(timedelta.max),
         InvalidInput, "older_than"),
        ("claim(task_types='upscale')", lambda: db.tasks.claim("w", task_types="upscale"),
         InvalidInput, "task_types"),
        ("claim(task_types=b'upscale')", lambda: db.tasks.claim("w", task_types=b"x"),  # type: ignore[arg-type]
         InvalidInput, "task_types"),
        ("claim(task_types=[])", lambda: db.tasks.claim("w", task_types=[]), InvalidInput,
         "task_types"),
        ("Worker(heartbeat=0)", lambda: Worker(db, handler, heartbeat=timedelta(0)),
         InvalidInput, "heartbeat"),
        ("Worker(task_types='upscale')", lambda: Worker(db, handler, task_types="upscale"),
         InvalidInput, "task_types"),
        ("Worker(stale_after=0)", lambda: Worker(db, handler, stale_after=timedelta(0)),
         InvalidInput, "stale_after"),
        ("params nested 3,000 deep", lambda: db.tasks.enqueue(pid, "x", _nested(3000)),
         InvalidInput, "params"),
        ("params with a 5,000-digit number", lambda: db.tasks.enqueue(pid, "x", {"n": 10**5000}),
         InvalidInput, "params"),
        ("params with a 310-digit number", lambda: db.tasks.enqueue(pid, "x", {"n": 10**309}),
         InvalidInput, "params"),
    ]  # fmt: skip
    check(db, cases)
    deep = assert_unchanged(db, lambda: db.tasks.enqueue(pid, "x", _nested(3000)), InvalidInput,
                            "params")  # fmt: skip
    assert str(deep) == "params: not storable as JSON: nested deeper than 64 levels"
    # The limits themselves are allowed.
    assert db.tasks.enqueue(pid, "x", _nested(64)).params == _nested(64)
    assert db.tasks.enqueue(pid, "x", {"n": 10**308}).params == {"n": 10**308}
    # The largest double itself, exactly at the limit (Postgres once compared it inexactly).
    assert db.tasks.enqueue(pid, "x", {"n": -sys.float_info.max}).params == {
        "n": -sys.float_info.max
    }
    assert db.tasks.requeue_stale(MAX_STALE_AGE) == []


def test_constraint_conflicts_read_the_same_on_both_backends(
    db: dualdb.Database, world: World
) -> None:
    """The driver's own words differ by backend; the Conflict message does not."""
    dup = assert_unchanged(db, lambda: db.users.create(id=world.user.id), Conflict, None)
    assert str(dup) == "users: a row with the same key already exists"
    dup = assert_unchanged(
        db, lambda: db.projects.create("Again", world.user.id, id=world.project.id), Conflict, None
    )
    assert str(dup) == "projects: a row with the same key already exists"
    # Violations only a writer bypassing the DAL's checks reaches, inside a session.
    statements = {
        "INSERT INTO tasks (id, project_id, task_type, params, status) VALUES "
        f"('{uuid.uuid4()}', '{world.project.id}', 't', '{{}}', 'Bogus')": (
            "check constraint ck_tasks_status failed"
        ),
        "UPDATE projects SET name = NULL": "projects.name must not be NULL",
        "UPDATE shots SET project_id = '00000000-0000-0000-0000-000000000001'": (
            "a row it refers to does not exist, or other rows still refer to it"
        ),
    }
    for statement, message in statements.items():

        def write(statement: str = statement) -> None:
            with db.session() as s:
                s.connection.execute(sa.text(statement))

        caught = assert_unchanged(db, write, Conflict, None)
        assert str(caught) == message, statement


@pytest.mark.slow
def test_create_many_naming_more_than_65535_dependencies(db: dualdb.Database, world: World) -> None:
    """Postgres binds at most 65,535 parameters per statement: lookups go in chunks."""
    pid = world.project.id
    unknown = [
        {"project_id": pid, "task_type": "x", "params": {}, "depends_on": [uuid.uuid4()
                                                                           for _ in range(1000)]}
        for _ in range(66)
    ]  # fmt: skip
    err = assert_unchanged(db, lambda: db.tasks.create_many(unknown), InvalidInput, "depends_on")
    assert "does not exist" in str(err)
    base = db.tasks.create_many(
        [{"project_id": pid, "task_type": "x", "params": {}} for _ in range(20_500)]
    )
    rows = [
        {"project_id": pid, "task_type": "y", "params": {},
         "depends_on": [t.id for t in base[i * 1000 : (i + 1) * 1000]]}
        for i in range(21)
    ]  # fmt: skip
    made = db.tasks.create_many(rows)
    assert [t.dependant_on for t in made] == [r["depends_on"] for r in rows]
    assert db.tasks.count(task_type="y") == 21
