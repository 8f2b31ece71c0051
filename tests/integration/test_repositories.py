"""The parity suite: every repository, on a real SQLite file and a real Postgres.

Each test runs once per backend through the ``migrated_url`` fixture and asserts the same
observable behaviour on both: records, list orders, pagination, errors and what is (not) written.

A test marked ``as_user_too`` runs once more per backend with ``db`` acting as the world's user
through a verified access token (``db.for_user(token)``, the ``user`` actor; the others use the
plain, ``unscoped`` database): on Postgres every transaction then runs as ``authenticated``
under Row Level Security, on SQLite the DAL applies the same ownership rules.  Mark a test
``as_user_too`` when it stays inside that user's own data.  The unmarked ones touch a second
user's rows on purpose, or expect ``NotFound`` when *writing* to an id that does not exist —
acting as a user, such a write is ``PermissionDenied`` ("not yours, or does not exist"): under
RLS a row that does not exist and one that is someone else's look the same, and saying which
would leak it.  ``test_scoped_access.py`` covers both.  Of the generic contract (``Spec``), the
user runs the recipes that create no users (shots, generations, tasks): a user can only ever
be their own ``users`` row.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa

import dualdb
from dualdb import migrations
from dualdb.auth import TokenVerifier
from dualdb.config import resolve
from dualdb.database import Repositories
from dualdb.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    SchemaOutOfDate,
)
from dualdb.records import Record, ShotGeneration
from dualdb.schema import TABLES, task_dependencies, tasks
from tests.integration.dal_support import World, assert_unchanged, build_world, snapshot

DUALDB = str(Path(sys.executable).parent / "dualdb")


def order_key(record: Any) -> tuple[Any, ...]:
    return (record.created_at, record.id)


# --- the generic CRUD contract, per repository ------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How to exercise one repository generically."""

    name: str
    #: Fields of the i-th new row, for ``create_many`` (``parent`` scopes it, see ``filters``).
    row: Callable[[Any, World, int], dict[str, Any]]
    #: Create the i-th row with the repository's own ``create``.
    create: Callable[[Any, Any, World, int], Record]
    #: The list filter that matches exactly the rows made under ``parent``.
    filters: Callable[[Any], dict[str, Any]]
    #: A row that fails validation, and the field it must be blamed on.
    bad_row: Callable[[Any, World], tuple[dict[str, Any], str]]
    #: The recipe creates users (as rows or as parents): only the unscoped database can.
    creates_users: bool = False


def _parent(db: dualdb.Database, world: World, spec: str) -> Any:
    """A fresh parent for ``spec``'s rows, so a filter on it selects only the test's rows."""
    if spec == "users":
        return "batch@example.com"  # users are "scoped" by a shared email
    if spec == "projects":
        return db.users.create(email="parent@example.com")
    return db.projects.create("Parent", world.user.id)


SPECS = [
    Spec(
        "users",
        row=lambda parent, w, i: {"email": parent},
        create=lambda repo, parent, w, i: repo.create(email=parent),
        filters=lambda parent: {"email": parent},
        bad_row=lambda parent, w: ({"email": 42}, "email"),
        creates_users=True,
    ),
    Spec(
        "projects",
        row=lambda parent, w, i: {"name": f"P{i}", "user_id": parent.id},
        create=lambda repo, parent, w, i: repo.create(f"P{i}", parent.id),
        filters=lambda parent: {"user_id": parent.id},
        bad_row=lambda parent, w: ({"name": "   ", "user_id": parent.id}, "name"),
        creates_users=True,
    ),
    Spec(
        "shots",
        row=lambda parent, w, i: {"project_id": parent.id, "name": f"S{i}"},
        create=lambda repo, parent, w, i: repo.create(parent.id, f"S{i}"),
        filters=lambda parent: {"project_id": parent.id},
        bad_row=lambda parent, w: ({"project_id": "not-a-uuid", "name": "x"}, "project_id"),
    ),
    Spec(
        "generations",
        row=lambda parent, w, i: {"project_id": parent.id, "location": f"g{i}.png"},
        create=lambda repo, parent, w, i: repo.create(parent.id, location=f"g{i}.png"),
        filters=lambda parent: {"project_id": parent.id},
        bad_row=lambda parent, w: ({"project_id": parent.id, "tasks": ["nope"]}, "tasks[0]"),
    ),
    Spec(
        "tasks",
        row=lambda parent, w, i: {
            "project_id": parent.id,
            "task_type": "single_image",
            "params": {"i": i},
        },
        create=lambda repo, parent, w, i: repo.enqueue(parent.id, "single_image", {"i": i}),
        filters=lambda parent: {"project_id": parent.id},
        bad_row=lambda parent, w: (
            {"project_id": parent.id, "task_type": "x", "params": {}, "status": "Done"},
            "status",
        ),
    ),
]


# --- who acts: the unscoped database, or the world's user ----------------------------------

#: ``db`` is the plain database; only a test marked ``as_user_too`` also runs as ``USER``.
UNSCOPED, USER = "unscoped", "user"
SECRET = "parity-suite-jwt-secret-long-enough-for-hs256"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``spec`` over ``SPECS``, and a test marked ``as_user_too`` over both actors
    (as the user, only the recipes that create no users)."""
    if metafunc.definition.get_closest_marker("as_user_too") is None:
        if "spec" in metafunc.fixturenames:
            metafunc.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
        return
    if "db" not in metafunc.fixturenames:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} is marked as_user_too but takes no `db`: the actor "
            "is who `db` acts as; drop the mark or use `db`"
        )
    if "spec" not in metafunc.fixturenames:
        metafunc.parametrize("actor", [UNSCOPED, USER], indirect=True)
        return
    metafunc.parametrize(
        ("spec", "actor"),
        [
            pytest.param(spec, actor, id=f"{spec.name}-{actor}")
            for actor in (UNSCOPED, USER)
            for spec in SPECS
            if actor == UNSCOPED or not spec.creates_users
        ],
        indirect=["actor"],
    )


@pytest.fixture
def actor(request: pytest.FixtureRequest) -> str:
    """Who ``db`` acts as: ``UNSCOPED`` unless parametrised (``as_user_too``)."""
    return str(getattr(request, "param", UNSCOPED))


@pytest.fixture
def database(migrated_url: str) -> Iterator[dualdb.Database]:
    """The unscoped database, which also verifies the ``user`` actor's token."""
    with dualdb.connect(migrated_url, verifier=TokenVerifier(jwt_secret=SECRET)) as connected:
        yield connected


@pytest.fixture
def world(database: dualdb.Database) -> World:
    """Two users with a project each, built by the unscoped database whoever the actor is."""
    return build_world(database)


class AsUser:
    """``db.for_user(token)`` plus the engine, which the tests use to watch and snapshot."""

    def __init__(self, database: dualdb.Database, scoped: dualdb.ScopedDatabase) -> None:
        self._scoped = scoped
        self.engine: sa.Engine = database.engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scoped, name)


@pytest.fixture
def db(database: dualdb.Database, actor: str, request: pytest.FixtureRequest) -> Any:
    """The database the test drives: ``database`` itself, or it acting as the world's user."""
    if actor == UNSCOPED:
        return database
    world: World = request.getfixturevalue("world")
    token = jwt.encode(
        {
            "sub": str(world.user.id),
            "aud": "authenticated",
            "role": "authenticated",
            "exp": int(time.time()) + 3600,
        },
        SECRET,
        algorithm="HS256",
    )
    scoped = database.for_user(token)
    assert scoped.user_id == world.user.id
    return AsUser(database, scoped)


@pytest.mark.as_user_too
def test_create_get_find(db: dualdb.Database, world: World, spec: Spec) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    made = spec.create(repo, parent, world, 0)
    assert repo.get(made.id) == made, "create must return exactly what get reads back"
    assert repo.get(str(made.id)) == made, "string ids are accepted"
    assert repo.find(made.id) == made
    with pytest.raises(FrozenInstanceError):
        made.id = uuid.uuid4()  # type: ignore[misc]
    unknown = uuid.uuid4()
    assert repo.find(unknown) is None
    with pytest.raises(NotFound, match=str(unknown)):
        repo.get(unknown)
    with pytest.raises(InvalidInput) as bad:
        repo.get("12345")
    assert bad.value.field == "id"
    with pytest.raises(InvalidInput):
        repo.find(None)


@pytest.mark.as_user_too
def test_list_orders_and_paginates_without_dupes_or_skips(
    db: dualdb.Database, world: World, spec: Spec
) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    made = [spec.create(repo, parent, world, i) for i in range(3)]
    made += repo.create_many([spec.row(parent, world, i) for i in range(3, 23)])
    filters = spec.filters(parent)
    expected = sorted((repo.get(m.id) for m in made), key=order_key)

    # Every page but the last is full; the pages concatenate to the whole ordered list.
    seen: list[Any] = []
    cursor = None
    pages = 0
    while True:
        page = repo.list(**filters, limit=4, cursor=cursor)
        pages += 1
        seen += page.items
        if page.next_cursor is None:
            break
        assert len(page.items) == 4
        cursor = page.next_cursor
    assert pages == 6
    assert seen == expected
    assert len({r.id for r in seen}) == 23
    assert repo.count(**filters) == 23

    # A page that ends exactly at the end says so (no empty page after it).
    assert repo.list(**filters, limit=23).next_cursor is None
    last = repo.list(**filters, limit=22)
    assert last.next_cursor is not None
    tail = repo.list(**filters, limit=22, cursor=last.next_cursor)
    assert tail.items == expected[22:] and tail.next_cursor is None

    # Unfiltered, the same order holds across every row of the table.
    everything = repo.list(limit=1000).items
    assert everything == sorted(everything, key=order_key)
    assert len(everything) == repo.count()

    # A row added while paging shows up on a later page: keyset pagination never skips.
    first = repo.list(**filters, limit=10)
    newcomer = spec.create(repo, parent, world, 99)
    rest: list[Any] = []
    cursor = first.next_cursor
    while cursor is not None:
        page = repo.list(**filters, limit=10, cursor=cursor)
        rest += page.items
        cursor = page.next_cursor
    assert [r.id for r in first.items + rest] == [r.id for r in expected] + [newcomer.id]


def _cursor(*values: Any) -> str:
    raw = json.dumps(list(values)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.as_user_too
def test_bad_cursors_and_limits_are_invalid_input(
    db: dualdb.Database, world: World, spec: Spec
) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    for i in range(3):
        spec.create(repo, parent, world, i)
    # A valid cursor of another table is not a cursor of this one.
    other = db.shots if spec.name != "shots" else db.projects
    foreign = other.list(limit=1).next_cursor if other.count() > 1 else None
    if foreign is None:
        db.shots.create(world.project.id, "extra")
        db.projects.create("extra", world.user.id)
        foreign = other.list(limit=1).next_cursor
    assert foreign is not None
    entity = repo.entity
    bad = [
        "garbage!",
        "",
        foreign,  # a cursor of another table
        _cursor(entity),
        _cursor(entity, 5, str(uuid.uuid4())),
        _cursor(entity, None, None),
        _cursor(entity, "2024-01-01T00:00:00.000000Z", 7),
        _cursor(entity, "2024-01-01T00:00:00.000000Z", str(uuid.uuid4()), "extra"),
        _cursor(entity, "not a date", str(uuid.uuid4())),
        _cursor({"a": 1}),
    ]
    for cursor in bad:
        with pytest.raises(InvalidInput) as err:
            repo.list(cursor=cursor)
        assert err.value.field == "cursor", cursor
    for limit in (0, -1, 1001, True, "5", 2.0, None):
        with pytest.raises(InvalidInput) as err:
            repo.list(limit=limit)
        assert err.value.field == "limit", limit
    assert len(repo.list(limit=1000).items) == repo.count()


@pytest.mark.as_user_too
def test_iter_streams_every_row_across_batches(
    db: dualdb.Database, world: World, spec: Spec
) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    made = repo.create_many([spec.row(parent, world, i) for i in range(10)])
    filters = spec.filters(parent)
    listed = repo.list(**filters, limit=1000).items
    assert [r.id for r in listed] == [r.id for r in sorted(made, key=order_key)]

    it = repo.iter(**filters, batch_size=3)
    assert iter(it) is it, "iter returns a lazy iterator, not a list"
    head = [next(it), next(it)]
    # Rows created while streaming appear at the end: the stream reads batch by batch.
    late = spec.create(repo, parent, world, 10)
    streamed = head + list(it)
    assert [r.id for r in streamed] == [r.id for r in listed] + [late.id]
    for size in (1, 4, 11, 500):
        assert list(repo.iter(**filters, batch_size=size)) == [*listed, repo.get(late.id)]

    # Bad arguments fail when iter is called, not at the first next().
    with pytest.raises(InvalidInput) as err:
        repo.iter(batch_size=0)
    assert err.value.field == "batch_size"
    key = next(iter(filters))
    with pytest.raises(InvalidInput) as err:
        repo.iter(**{key: 17})
    assert err.value.field == key


def test_delete_and_count(db: dualdb.Database, world: World, spec: Spec) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    filters = spec.filters(parent)
    made = repo.create_many([spec.row(parent, world, i) for i in range(4)])
    total = repo.count()
    assert repo.count(**filters) == 4
    repo.delete(made[1].id)
    assert repo.find(made[1].id) is None
    assert repo.count(**filters) == 3 and repo.count() == total - 1
    assert [r.id for r in repo.list(**filters).items] == [made[0].id, made[2].id, made[3].id]
    assert_unchanged(db, lambda: repo.delete(made[1].id), NotFound, None)
    assert_unchanged(db, lambda: repo.delete("nope"), InvalidInput, "id")
    with pytest.raises(InvalidInput) as err:
        repo.count(colour="red")
    assert err.value.field == "colour"


@pytest.mark.as_user_too
def test_create_many_is_one_batch_and_all_or_nothing(
    db: dualdb.Database, world: World, spec: Spec
) -> None:
    repo = getattr(db, spec.name)
    parent = _parent(db, world, spec.name)
    assert repo.create_many([]) == []

    inserts: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if re.match(rf"\s*INSERT INTO {repo.table.name}[\s(]", statement, re.IGNORECASE):
            inserts.append((statement, many))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        made = repo.create_many([spec.row(parent, world, i) for i in range(5)])
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert len(inserts) == 1, f"create_many should insert in one statement batch: {inserts}"
    assert [repo.get(m.id) for m in made] == made

    # One invalid row anywhere refuses the whole batch, before any SQL.
    bad, field = spec.bad_row(parent, world)
    rows = [spec.row(parent, world, i) for i in range(5, 8)]
    assert_unchanged(db, lambda: repo.create_many([*rows[:2], bad, rows[2]]), InvalidInput, field)
    # A row the database refuses (a duplicate id) rolls back the rows inserted before it.
    dup = uuid.uuid4()
    clash = [{**rows[0], "id": dup}, rows[1], {**rows[2], "id": dup}]
    assert_unchanged(db, lambda: repo.create_many(clash), Conflict, None)
    assert_unchanged(db, lambda: repo.create_many([{**rows[0], "id": made[0].id}]), Conflict, None)


# --- updates -------------------------------------------------------------------------------


def test_users_update_unset_vs_none(db: dualdb.Database) -> None:
    user = db.users.create(email="a@example.com")
    assert db.users.update(user.id) == user, "no arguments: nothing changes"
    changed = db.users.update(user.id, email="b@example.com")
    assert changed.email == "b@example.com" and changed.created_at == user.created_at
    cleared = db.users.update(user.id, email=None)
    assert cleared.email is None and db.users.get(user.id) == cleared
    assert_unchanged(db, lambda: db.users.update(uuid.uuid4(), email="x"), NotFound, None)


def test_projects_and_shots_update_rename_and_maintain_updated_at(
    db: dualdb.Database, world: World
) -> None:
    for repo, record in ((db.projects, world.project), (db.shots, world.shot)):
        assert record.updated_at is None
        assert repo.update(record.id) == record
        renamed = repo.update(record.id, name="  Renamed  ")
        assert renamed.name == "Renamed"
        assert renamed.updated_at is not None and renamed.updated_at > renamed.created_at
        assert renamed.created_at == record.created_at
        assert repo.get(record.id) == renamed
        again = repo.update(record.id, name="Again")
        assert again.updated_at is not None and again.updated_at > renamed.updated_at
        assert_unchanged(
            db, lambda r=repo, i=record.id: r.update(i, name=None), InvalidInput, "name"
        )
        assert_unchanged(db, lambda r=repo, i=record.id: r.update(i, name=""), InvalidInput, "name")
        assert_unchanged(db, lambda r=repo: r.update(uuid.uuid4(), name="x"), NotFound, None)
    assert db.projects.get(world.project.id).user_id == world.user.id


def test_generations_update_is_partial(db: dualdb.Database, world: World) -> None:
    gen = db.generations.create(world.project.id, location="a.png", type="image")
    loc = db.generations.update(gen.id, location="b.png")
    assert (loc.location, loc.type, loc.tasks) == ("b.png", "image", [])
    assert loc.updated_at is not None and loc.updated_at > gen.created_at
    typ = db.generations.update(gen.id, type=None)
    assert (typ.location, typ.type) == ("b.png", None)
    linked = db.generations.update(gen.id, tasks=[world.task.id, str(world.task.id)])
    assert linked.tasks == [world.task.id] and linked.location == "b.png"
    assert linked.updated_at is not None and typ.updated_at is not None
    assert linked.updated_at > typ.updated_at
    assert db.generations.get(gen.id) == linked
    assert_unchanged(
        db,
        lambda: db.generations.update(gen.id, tasks=[world.other_task.id]),
        InvalidInput,
        "tasks",
    )
    assert_unchanged(db, lambda: db.generations.update(uuid.uuid4(), tasks=[]), NotFound, None)


def test_tasks_update_params_and_type_only_before_start(db: dualdb.Database, world: World) -> None:
    task = world.task
    p = db.tasks.update(task.id, params={"prompt": "a bigger cat", "steps": 30})
    assert p.params == {"prompt": "a bigger cat", "steps": 30} and p.task_type == "single_image"
    assert p.updated_at is not None and p.updated_at > p.created_at
    t = db.tasks.update(task.id, task_type="upscale")
    assert t.task_type == "upscale" and t.params == p.params
    assert db.tasks.get(task.id) == t
    with db.engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.id == task.id).values(status="In Progress"))
    assert_unchanged(db, lambda: db.tasks.update(task.id, params={}), Conflict, None)
    assert_unchanged(db, lambda: db.tasks.update(uuid.uuid4(), params={}), NotFound, None)


# --- tasks ------------------------------------------------------------------------------------


def edges(db: dualdb.Database) -> set[tuple[uuid.UUID, uuid.UUID]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(task_dependencies)).all()
    return {(r.task_id, r.dependency_id) for r in rows}


@pytest.mark.as_user_too
def test_enqueue_with_dependencies(db: dualdb.Database, world: World) -> None:
    pid = world.project.id
    a = db.tasks.enqueue(pid, "single_image", {"n": 1})
    b = db.tasks.enqueue(pid, "single_image", {"n": 2}, status="Pending")
    c = db.tasks.enqueue(pid, "travel_stitch", {}, depends_on=[b.id, str(a.id), b.id])
    assert (a.status, b.status, c.status) == ("Queued", "Pending", "Queued")
    assert c.dependant_on == [b.id, a.id], "deduplicated, order kept"
    assert db.tasks.get(c.id) == c
    assert {(c.id, a.id), (c.id, b.id)} <= edges(db)
    # In one batch a row may depend on rows before it.
    d_id, e_id = uuid.uuid4(), uuid.uuid4()
    made = db.tasks.create_many(
        [
            {"id": d_id, "project_id": pid, "task_type": "x", "params": {}},
            {"id": e_id, "project_id": pid, "task_type": "x", "params": {}, "depends_on": [d_id]},
        ]
    )
    assert [m.id for m in made] == [d_id, e_id] and made[1].dependant_on == [d_id]
    assert (e_id, d_id) in edges(db)
    # ...but not on rows after it, nor on unknown tasks or another project's.
    f_id = uuid.uuid4()
    later = [
        {"project_id": pid, "task_type": "x", "params": {}, "depends_on": [f_id]},
        {"id": f_id, "project_id": pid, "task_type": "x", "params": {}},
    ]
    assert_unchanged(db, lambda: db.tasks.create_many(later), InvalidInput, "depends_on")
    assert_unchanged(
        db,
        lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[uuid.uuid4()]),
        InvalidInput,
        "depends_on",
    )
    assert_unchanged(
        db,
        lambda: db.tasks.enqueue(pid, "x", {}, depends_on=[world.other_task.id]),
        InvalidInput,
        "depends_on",
    )


@pytest.mark.as_user_too
def test_task_params_come_back_exactly_as_create_returned_them(
    db: dualdb.Database, world: World
) -> None:
    params: dict[str, Any] = {
        "zz": 1,
        "b": {"yy": [1, (2, 3)], "a": None},
        "a": 2**70,
        "é": "ünïcode",
        "f": 0.1,
        "big": 1e300,
    }
    task = db.tasks.enqueue(world.project.id, "x", params)
    params["zz"] = "changed afterwards"
    stored = db.tasks.get(task.id)
    assert stored == task, "create returns what the database holds (tuples are lists)"
    assert stored.params["zz"] == 1, "the record does not share the caller's dict"
    # Postgres' jsonb orders keys (shorter first, then bytewise); SQLite must match it.
    assert list(stored.params) == ["a", "b", "f", "zz", "é", "big"]  # "é" is two bytes
    assert list(stored.params["b"]) == ["a", "yy"]
    assert db.tasks.update(task.id, params={"zz": 0, "a": 1}).params == {"a": 1, "zz": 0}
    assert list(db.tasks.get(task.id).params) == ["a", "zz"]


@pytest.mark.as_user_too
def test_tasks_list_filters(db: dualdb.Database, world: World) -> None:
    pid = world.project.id
    q1 = db.tasks.enqueue(pid, "upscale", {})
    pending = db.tasks.enqueue(pid, "upscale", {}, status="Pending")
    q2 = db.tasks.enqueue(pid, "single_image", {})
    with db.engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.id == q2.id).values(worker_id="gpu-1"))
    mine = [world.task.id, q1.id, pending.id, q2.id]
    assert [t.id for t in db.tasks.list(project_id=pid).items] == mine
    assert [t.id for t in db.tasks.list(status="Pending").items] == [pending.id]
    assert [t.id for t in db.tasks.list(project_id=pid, status="Queued").items] == [
        world.task.id,
        q1.id,
        q2.id,
    ]
    assert [t.id for t in db.tasks.list(task_type="upscale").items] == [q1.id, pending.id]
    assert [t.id for t in db.tasks.list(worker_id="gpu-1").items] == [q2.id]
    assert db.tasks.count(project_id=pid, task_type="upscale", status="Queued") == 1
    assert db.tasks.list(status="Failed").items == []
    assert [t.id for t in db.tasks.iter(task_type="upscale", batch_size=1)] == [q1.id, pending.id]
    for kwargs, field in (
        ({"status": "queued"}, "status"),
        ({"status": "Bogus"}, "status"),
        ({"project_id": "abc"}, "project_id"),
        ({"task_type": "has space"}, "task_type"),
    ):
        with pytest.raises(InvalidInput) as err:
            db.tasks.list(**kwargs)
        assert err.value.field == field


@pytest.mark.as_user_too
def test_task_delete_refused_while_unfinished_dependents(db: dualdb.Database, world: World) -> None:
    pid = world.project.id
    first = db.tasks.enqueue(pid, "a", {})
    second = db.tasks.enqueue(pid, "b", {}, depends_on=[first.id])
    assert_unchanged(db, lambda: db.tasks.delete(first.id), Conflict, None)
    with db.engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.id == second.id).values(status="Cancelled"))
    db.tasks.delete(first.id)
    assert db.tasks.find(first.id) is None
    assert (second.id, first.id) not in edges(db)
    assert db.tasks.get(second.id).dependant_on == [first.id], "the canonical record stays"


# --- shots and their ordered generations ------------------------------------------------------


def positions(db: dualdb.Database, shot_id: uuid.UUID) -> list[uuid.UUID]:
    """The shot's generation ids in order, after checking positions are exactly 0..n-1."""
    placed = db.shots.placements(shot_id)
    assert [p.position for p in placed] == list(range(len(placed))), placed
    return [p.generation_id for p in placed]


@pytest.mark.as_user_too
def test_add_move_remove_reorder_keep_positions_dense(db: dualdb.Database, world: World) -> None:
    shot = world.shot.id
    g = [db.generations.create(world.project.id, location=f"{i}.png") for i in range(5)]
    a, b, c, d, e = (x.id for x in g)
    first = db.shots.add_generation(shot, a)
    assert isinstance(first, ShotGeneration)
    assert (first.shot_id, first.generation_id, first.position) == (shot, a, 0)
    assert db.shots.add_generation(shot, b).position == 1  # None appends
    assert db.shots.add_generation(shot, c, position=0).position == 0  # inserts, shifts
    assert positions(db, shot) == [c, a, b]
    assert db.shots.add_generation(shot, d, position=2).position == 2
    assert positions(db, shot) == [c, a, d, b]
    assert db.shots.add_generation(shot, e, position=99).position == 4  # clamped to the end
    assert positions(db, shot) == [c, a, d, b, e]

    moved = db.shots.move_generation(shot, e, 0)
    assert [p.generation_id for p in moved] == [e, c, a, d, b]
    assert [p.position for p in moved] == [0, 1, 2, 3, 4]
    assert positions(db, shot) == [e, c, a, d, b]
    db.shots.move_generation(shot, e, 1000)
    assert positions(db, shot) == [c, a, d, b, e]
    db.shots.move_generation(shot, c, 2)
    assert positions(db, shot) == [a, d, c, b, e]

    left = db.shots.remove_generation(shot, c)
    assert [p.generation_id for p in left] == [a, d, b, e]
    assert positions(db, shot) == [a, d, b, e]
    assert db.generations.find(c) is not None, "removing from a shot keeps the generation"

    done = db.shots.reorder(shot, [e, b, str(d), a])
    assert [(p.generation_id, p.position) for p in done] == [(e, 0), (b, 1), (d, 2), (a, 3)]
    assert [x.id for x in db.shots.generations(shot)] == [e, b, d, a]
    assert db.shots.generations(shot)[0] == db.generations.get(e)

    # The join table reads the same order, and deleting a placement closes the gap.
    by_list = db.shot_generations.list(shot_id=shot).items
    assert [p.generation_id for p in by_list] == [e, b, d, a]
    assert db.shot_generations.get(by_list[1].id) == by_list[1]
    db.shot_generations.delete(by_list[1].id)
    assert positions(db, shot) == [e, d, a]
    assert db.shot_generations.count(shot_id=shot) == 3
    assert db.shot_generations.count(generation_id=e) == 1


@pytest.mark.as_user_too
def test_shot_generations_list_paginates_by_shot_then_position(
    db: dualdb.Database, world: World
) -> None:
    shots = [world.shot, *db.shots.create_many([{"project_id": world.project.id, "name": "B"}])]
    gens = db.generations.create_many([{"project_id": world.project.id} for _ in range(5)])
    for shot in shots:
        for g in reversed(gens):
            db.shots.add_generation(shot.id, g.id, position=0)  # ends up in gens order
    expected = sorted(
        (p for s in shots for p in db.shots.placements(s.id)), key=lambda p: (p.shot_id, p.position)
    )
    seen: list[ShotGeneration] = []
    cursor = None
    while True:
        page = db.shot_generations.list(limit=3, cursor=cursor)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected and len(seen) == 10
    assert list(db.shot_generations.iter(batch_size=4)) == expected
    assert [p.generation_id for p in db.shot_generations.iter(shot_id=shots[1].id)] == [
        g.id for g in gens
    ]
    assert db.shot_generations.count(shot_id=shots[0].id) == 5
    entity = db.shot_generations.entity
    sid = str(shots[0].id)
    for crafted in (
        _cursor(entity, sid, 2**40, str(uuid.uuid4())),  # out of any integer column's range
        _cursor(entity, sid, True, str(uuid.uuid4())),
        _cursor(entity, sid, "1", str(uuid.uuid4())),
        _cursor(entity, 5, 1, str(uuid.uuid4())),
    ):
        with pytest.raises(InvalidInput) as err:
            db.shot_generations.list(cursor=crafted)
        assert err.value.field == "cursor"


def test_placement_errors_change_nothing(db: dualdb.Database, world: World) -> None:
    shot = world.shot.id
    here = db.generations.create(world.project.id)
    there = db.generations.create(world.other_project.id)
    loose = db.generations.create(world.project.id)
    db.shots.add_generation(shot, here.id)
    cases: list[tuple[Callable[[], object], type[Exception], str | None]] = [
        (lambda: db.shots.add_generation(shot, here.id), Conflict, None),
        (lambda: db.shots.add_generation(shot, there.id), InvalidInput, "generation_id"),
        (lambda: db.shots.add_generation(shot, uuid.uuid4()), NotFound, None),
        (lambda: db.shots.add_generation(uuid.uuid4(), here.id), NotFound, None),
        (lambda: db.shots.add_generation(shot, loose.id, position=-1), InvalidInput, "position"),
        (lambda: db.shots.add_generation(shot, loose.id, position="1"), InvalidInput, "position"),
        (lambda: db.shots.add_generation("x", loose.id), InvalidInput, "shot_id"),
        (lambda: db.shots.add_generation(shot, "x"), InvalidInput, "generation_id"),
        (lambda: db.shots.move_generation(shot, loose.id, 0), NotFound, None),
        (lambda: db.shots.move_generation(shot, here.id, -3), InvalidInput, "position"),
        (lambda: db.shots.remove_generation(shot, loose.id), NotFound, None),
        (lambda: db.shots.reorder(shot, []), InvalidInput, "generation_ids"),
        (lambda: db.shots.reorder(shot, [here.id, here.id]), InvalidInput, "generation_ids"),
        (lambda: db.shots.reorder(shot, [loose.id]), InvalidInput, "generation_ids"),
        (lambda: db.shots.reorder(shot, ["zz"]), InvalidInput, "generation_ids[0]"),
        (lambda: db.shots.generations(uuid.uuid4()), NotFound, None),
        (lambda: db.shot_generations.delete(uuid.uuid4()), NotFound, None),
    ]
    for action, error, field in cases:
        assert_unchanged(db, action, error, field)


@pytest.mark.as_user_too
def test_random_placement_edits_match_a_model(db: dualdb.Database, world: World) -> None:
    """A seeded random walk of placement edits; positions stay dense and match a plain list."""
    rng = random.Random(20240607)
    shot = world.shot.id
    pool = [
        x.id
        for x in db.generations.create_many(
            [{"project_id": world.project.id, "location": f"{i}"} for i in range(8)]
        )
    ]
    model: list[uuid.UUID] = []
    middle: dict[str, int] = {}  # ops that hit a generation in the middle of the shot
    for _ in range(70):
        op = rng.choice(["add", "add", "add", "move", "remove", "reorder", "delete_gen"])
        off = [g for g in pool if g not in model]
        if op == "add" and off:
            gid = rng.choice(off)
            pos = rng.choice([None, 0, rng.randrange(0, len(model) + 3)])
            db.shots.add_generation(shot, gid, position=pos)
            model.insert(len(model) if pos is None else min(pos, len(model)), gid)
            in_middle = pos is not None and 0 < pos < len(model) - 1
        elif op == "move" and model:
            gid, pos = rng.choice(model), rng.randrange(0, len(model) + 2)
            db.shots.move_generation(shot, gid, pos)
            model.remove(gid)
            model.insert(min(pos, len(model)), gid)
            in_middle = 0 < pos < len(model) - 1
        elif op in ("remove", "delete_gen") and model:
            gid = rng.choice(model)
            in_middle = 0 < model.index(gid) < len(model) - 1
            if op == "remove":
                db.shots.remove_generation(shot, gid)
            else:
                db.generations.delete(gid)
                pool.remove(gid)
                pool.append(db.generations.create(world.project.id).id)
            model.remove(gid)
        elif op == "reorder" and model:
            rng.shuffle(model)
            db.shots.reorder(shot, model)
            in_middle = len(model) > 2
        else:
            continue
        middle[op] = middle.get(op, 0) + in_middle
        assert positions(db, shot) == model, op
    assert all(
        middle.get(op, 0) > 0 for op in ("add", "move", "remove", "reorder", "delete_gen")
    ), f"the walk should edit the middle of the shot with every op: {middle}"


@pytest.mark.as_user_too
def test_deleting_a_generation_closes_the_gap_on_its_shots(
    db: dualdb.Database, world: World
) -> None:
    other_shot = db.shots.create(world.project.id, "Second")
    g = [db.generations.create(world.project.id).id for _ in range(3)]
    for gid in g:
        db.shots.add_generation(world.shot.id, gid)
    db.shots.add_generation(other_shot.id, g[1])
    db.shots.add_generation(other_shot.id, g[2])
    db.generations.delete(g[1])
    assert positions(db, world.shot.id) == [g[0], g[2]]
    assert positions(db, other_shot.id) == [g[2]]


@pytest.mark.as_user_too
def test_deleting_a_shot_removes_its_placements_only(db: dualdb.Database, world: World) -> None:
    gid = world.generation.id
    db.shots.add_generation(world.shot.id, gid)
    db.shots.delete(world.shot.id)
    assert db.shot_generations.count() == 0
    assert db.generations.get(gid) == world.generation


@pytest.mark.as_user_too
def test_generations_for_task(db: dualdb.Database, world: World) -> None:
    t1, t2 = world.task.id, db.tasks.enqueue(world.project.id, "x", {}).id
    one = db.generations.create(world.project.id, tasks=[t2])
    both = db.generations.create(world.project.id, tasks=[t1, t2])
    db.generations.create(world.project.id)
    assert db.generations.for_task(t1) == [world.generation, both]
    assert db.generations.for_task(str(t2)) == [one, both]
    assert db.generations.for_task(uuid.uuid4()) == []
    with pytest.raises(InvalidInput) as err:
        db.generations.for_task("nope")
    assert err.value.field == "task_id"


def test_projects_for_user(db: dualdb.Database, world: World) -> None:
    second = db.projects.create("Second", world.user.id)
    assert db.projects.for_user(world.user.id) == [world.project, second]
    assert db.projects.for_user(world.other_user.id) == [world.other_project]
    assert db.projects.for_user(uuid.uuid4()) == []
    assert_unchanged(db, lambda: db.projects.create("P", uuid.uuid4()), NotFound, None)


def _tree(s: Repositories, user_id: uuid.UUID) -> uuid.UUID:
    """A project with every kind of child row, including dependency edges and placements."""
    p = s.projects.create("Doomed", user_id)
    t1 = s.tasks.enqueue(p.id, "single_image", {"n": 1})
    t2 = s.tasks.enqueue(p.id, "travel_stitch", {"n": 2}, depends_on=[t1.id])
    shot = s.shots.create(p.id, "Shot")
    for i in range(3):
        g = s.generations.create(p.id, location=f"{i}.png", tasks=[t1.id, t2.id])
        s.shots.add_generation(shot.id, g.id)
    return p.id


def test_deleting_a_project_removes_all_its_children(db: dualdb.Database, world: World) -> None:
    before = snapshot(db)
    with db.session() as s:
        doomed = _tree(s, world.user.id)
    grown = snapshot(db)
    assert all(grown[t] != before[t] for t in grown if t != "users"), "every table got rows"
    db.projects.delete(doomed)
    assert snapshot(db) == before
    assert_unchanged(db, lambda: db.projects.delete(doomed), NotFound, None)


def test_deleting_a_user_removes_everything_they_own(db: dualdb.Database, world: World) -> None:
    before = snapshot(db)
    newcomer = db.users.create(email="leaving@example.com")
    _tree(db, newcomer.id)
    db.users.delete(newcomer.id)
    assert snapshot(db) == before


# --- sessions ---------------------------------------------------------------------------------


@pytest.mark.as_user_too
def test_session_commits_on_success(db: dualdb.Database, world: World) -> None:
    with db.session() as s:
        p = s.projects.create("In a session", world.user.id)
        shot = s.shots.create(p.id, "S")
        assert s.projects.get(p.id) == p, "a session reads its own writes"
        assert db.projects.find(p.id) is None, "others do not see uncommitted rows"
    assert db.projects.get(p.id) == p and db.shots.get(shot.id) == shot


@pytest.mark.as_user_too
def test_session_rolls_back_on_error(db: dualdb.Database, world: World) -> None:
    before = snapshot(db)
    with pytest.raises(RuntimeError, match="boom"), db.session() as s:
        p = s.projects.create("Rolled back", world.user.id)
        s.tasks.enqueue(p.id, "x", {})
        raise RuntimeError("boom")
    assert snapshot(db) == before
    with pytest.raises(NotFound), db.session() as s:
        s.projects.create("Also rolled back", world.user.id)
        s.projects.get(uuid.uuid4())
    assert snapshot(db) == before


def test_failed_call_in_a_session_leaves_nothing_and_the_session_goes_on(
    db: dualdb.Database, world: World
) -> None:
    dup = uuid.uuid4()
    before = snapshot(db)
    with db.session() as s:
        kept = s.projects.create("Kept", world.user.id)
        after_first = snapshot_in(s)
        # Refused by the database half-way through a batch (the first row was inserted).
        with pytest.raises(Conflict):
            s.generations.create_many(
                [{"id": dup, "project_id": kept.id}, {"id": dup, "project_id": kept.id}]
            )
        with pytest.raises(Conflict):
            s.users.create(world.user.id)
        with pytest.raises(InvalidInput):
            s.tasks.enqueue(kept.id, "x", {"bad": float("nan")})
        with pytest.raises(NotFound):
            s.shots.add_generation(uuid.uuid4(), world.generation.id)
        assert snapshot_in(s) == after_first, "the failed calls left nothing behind"
        also = s.shots.create(kept.id, "After the errors")
    assert db.projects.get(kept.id) == kept and db.shots.get(also.id) == also
    assert db.generations.find(dup) is None
    after = snapshot(db)
    assert len(after["projects"]) == len(before["projects"]) + 1
    assert len(after["shots"]) == len(before["shots"]) + 1
    assert after["generations"] == before["generations"]


def snapshot_in(s: dualdb.Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row per table as the session itself sees them."""
    return {
        t.name: sorted(tuple(map(str, r)) for r in s.connection.execute(sa.select(t)).all())
        for t in TABLES
    }


# --- connecting ---------------------------------------------------------------------------------


def _migrate_hint(message: str) -> list[str]:
    """The command quoted in a SchemaOutOfDate message, as argv for the venv's console script."""
    assert "`" in message, message
    command = shlex.split(message.split("`")[1])
    assert command[:2] == ["dualdb", "migrate"], message
    return [DUALDB, *command[1:]]


def _run_hint(message: str, cwd: Path) -> None:
    """Run the command the error message recommends, from an unrelated working directory."""
    result = subprocess.run(
        _migrate_hint(message), cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_connect_refuses_an_empty_database_with_the_fix(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).touch()  # exists, but empty
    with pytest.raises(SchemaOutOfDate, match="dualdb migrate") as err:
        dualdb.connect(db_url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run_hint(str(err.value), elsewhere)
    with dualdb.connect(db_url) as ok:
        assert ok.users.count() == 0
    assert not (elsewhere / "local.db").exists(), "the hint must target the same database"


def test_connect_refuses_a_database_behind_head(db_url: str, tmp_path: Path) -> None:
    first = migrations.revisions()[0]
    migrations.upgrade(resolve(db_url), first)
    with pytest.raises(SchemaOutOfDate, match=f"revision {first}") as err:
        dualdb.connect(db_url)
    assert migrations.head_revision() in str(err.value)
    _run_hint(str(err.value), tmp_path)
    dualdb.connect(db_url).close()


def test_missing_sqlite_file_hint_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with pytest.raises(SchemaOutOfDate, match="dualdb migrate") as err:
        dualdb.connect(f"sqlite:///{path}")
    assert not path.exists(), "connect must not create the file"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _run_hint(str(err.value), cwd)
    dualdb.connect(str(path)).close()


def test_unreachable_databases_are_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(DatabaseUnavailable):
        dualdb.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    missing = tmp_path / "no" / "such" / "folder" / "x.db"
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        dualdb.connect(f"sqlite:///{missing}")
    assert not (tmp_path / "no").exists()


def test_database_lifecycle(migrated_url: str, backend: str) -> None:
    db = dualdb.connect(migrated_url)
    assert db.backend == backend
    assert "Database(" in repr(db)
    db.close()
    with dualdb.connect(migrated_url) as again:
        assert again.users.count() == 0
