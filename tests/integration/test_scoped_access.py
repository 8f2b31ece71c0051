"""Acting as a user: the same rules, and the same errors, on SQLite (DAL) and Postgres (RLS).

Out-of-scope reads are NotFound (or simply absent from lists); out-of-scope writes are
PermissionDenied; nothing is written by a refused call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
import pytest

import dualdb
from dualdb import InvalidInput, NotFound, PermissionDenied
from dualdb.auth import TokenVerifier
from dualdb.database import Database, ScopedDatabase
from dualdb.schema import DUMMY_USER_ID

SECRET = "test-jwt-secret-with-enough-length-for-hs256"


@dataclass
class Side:
    user: uuid.UUID
    project: uuid.UUID
    shot: uuid.UUID
    generation: uuid.UUID
    task: uuid.UUID


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    with dualdb.connect(migrated_url, verifier=TokenVerifier(jwt_secret=SECRET)) as database:
        yield database


def _side(db: Database, name: str) -> Side:
    user = db.users.create(email=f"{name}@example.com")
    project = db.projects.create(name, user.id)
    shot = db.shots.create(project.id, f"{name}-shot")
    task = db.tasks.enqueue(project.id, "single_image", {"who": name})
    generation = db.generations.create(project.id, location=f"{name}.png", tasks=[task.id])
    db.shots.add_generation(shot.id, generation.id)
    return Side(user.id, project.id, shot.id, generation.id, task.id)


@pytest.fixture
def sides(db: Database) -> tuple[Side, Side]:
    return _side(db, "alice"), _side(db, "bob")


def snapshot(db: Database) -> dict[str, Any]:
    svc = db.as_service()
    return {
        "users": list(svc.users.iter()),
        "projects": list(svc.projects.iter()),
        "shots": list(svc.shots.iter()),
        "generations": list(svc.generations.iter()),
        "placements": list(svc.shot_generations.iter()),
        "tasks": list(svc.tasks.iter()),
    }


def test_a_user_sees_only_their_own_rows(db: Database, sides: tuple[Side, Side]) -> None:
    alice, bob = sides
    me = db.as_user(alice.user)
    assert [u.id for u in me.users.list().items] == [alice.user]
    assert [p.id for p in me.projects.list().items] == [alice.project]
    assert [s.id for s in me.shots.list().items] == [alice.shot]
    assert [g.id for g in me.generations.list().items] == [alice.generation]
    assert [t.id for t in me.tasks.list().items] == [alice.task]
    assert [p.shot_id for p in me.shot_generations.list().items] == [alice.shot]
    assert me.tasks.counts()["Queued"] == 1
    assert me.generations.for_task(bob.task) == []
    for repo, key in (
        (me.users, bob.user),
        (me.projects, bob.project),
        (me.shots, bob.shot),
        (me.generations, bob.generation),
        (me.tasks, bob.task),
    ):
        assert repo.find(key) is None
        with pytest.raises(NotFound):
            repo.get(key)
    with pytest.raises(NotFound):
        me.shots.generations(bob.shot)


WRITES: list[tuple[str, Callable[[ScopedDatabase, Side, Side], object]]] = [
    ("rename their project", lambda me, a, b: me.projects.update(b.project, name="mine")),
    ("delete their project", lambda me, a, b: me.projects.delete(b.project)),
    ("create a project for them", lambda me, a, b: me.projects.create("x", b.user)),
    ("create their user row", lambda me, a, b: me.users.create(uuid.uuid4())),
    ("change their email", lambda me, a, b: me.users.update(b.user, email="x@y.z")),
    ("add a shot to their project", lambda me, a, b: me.shots.create(b.project, "x")),
    ("rename their shot", lambda me, a, b: me.shots.update(b.shot, name="x")),
    ("delete their shot", lambda me, a, b: me.shots.delete(b.shot)),
    ("add a generation to their project", lambda me, a, b: me.generations.create(b.project)),
    ("edit their generation", lambda me, a, b: me.generations.update(b.generation, type="x")),
    ("enqueue in their project", lambda me, a, b: me.tasks.enqueue(b.project, "x", {})),
    ("edit their task", lambda me, a, b: me.tasks.update(b.task, params={"x": 1})),
    ("cancel their task", lambda me, a, b: me.tasks.cancel(b.task)),
    ("delete their task", lambda me, a, b: me.tasks.delete(b.task)),
    ("place on their shot", lambda me, a, b: me.shots.add_generation(b.shot, a.generation)),
    ("place their generation", lambda me, a, b: me.shots.add_generation(a.shot, b.generation)),
    ("reorder their shot", lambda me, a, b: me.shots.reorder(b.shot, [b.generation])),
]


@pytest.mark.parametrize("name", [name for name, _ in WRITES])
def test_writes_to_another_users_rows_are_refused(
    db: Database, sides: tuple[Side, Side], name: str
) -> None:
    alice, bob = sides
    write = dict(WRITES)[name]
    before = snapshot(db)
    with pytest.raises(PermissionDenied):
        write(db.as_user(alice.user), alice, bob)
    assert snapshot(db) == before


def test_depending_on_another_users_task_is_refused(db: Database, sides: tuple[Side, Side]) -> None:
    alice, bob = sides
    me = db.as_user(alice.user)
    with pytest.raises(InvalidInput, match="does not exist") as info:
        me.tasks.enqueue(alice.project, "x", {}, depends_on=[bob.task])
    assert info.value.field == "depends_on"


@pytest.mark.parametrize("verb", ["claim", "heartbeat", "complete", "fail", "release_claim"])
def test_a_signed_in_user_does_not_run_tasks(
    db: Database, sides: tuple[Side, Side], verb: str
) -> None:
    """Workers act as the service; a user may not claim or finish even their own task (on
    Postgres the database refuses it too, for PostgREST's users)."""
    alice, _ = sides
    db.as_service().tasks.claim("gpu-1")
    args: dict[str, tuple[object, ...]] = {
        "claim": ("alice-gpu",),
        "heartbeat": (alice.task, "gpu-1"),
        "complete": (alice.task, "gpu-1", "out.mp4"),
        "fail": (alice.task, "gpu-1", "boom"),
        "release_claim": (alice.task, "gpu-1"),
    }
    before = snapshot(db)
    with pytest.raises(PermissionDenied, match="a signed-in user does not run tasks"):
        getattr(db.as_user(alice.user).tasks, verb)(*args[verb])
    with pytest.raises(PermissionDenied):
        db.as_user(alice.user).tasks.requeue_stale(timedelta(0))
    assert snapshot(db) == before


def test_a_user_cancels_only_tasks_that_have_not_started(
    db: Database, sides: tuple[Side, Side]
) -> None:
    alice, _ = sides
    me = db.as_user(alice.user)
    waiting = me.tasks.enqueue(alice.project, "later", {}, status="Pending")
    assert [t.id for t in me.tasks.cancel(waiting.id)] == [waiting.id]
    running = db.as_service().tasks.claim("gpu-1")
    assert running is not None and running.id == alice.task
    before = snapshot(db)
    with pytest.raises(PermissionDenied, match="it is running"):
        me.tasks.cancel(alice.task)
    with pytest.raises(PermissionDenied, match="it is running"):
        me.tasks.delete(alice.task)
    with pytest.raises(PermissionDenied, match="only tasks that have not started"):
        me.tasks.update(alice.task, params={"x": 1})
    assert snapshot(db) == before


def test_own_writes_work_and_a_refused_call_keeps_the_session_scoped(
    db: Database, sides: tuple[Side, Side]
) -> None:
    alice, bob = sides
    with db.as_user(alice.user).session() as s:
        shot = s.shots.create(alice.project, "second")
        with pytest.raises(PermissionDenied):
            s.shots.create(bob.project, "theirs")
        # The failed call's savepoint rolled back; the user's scope did not.
        assert [x.id for x in s.shots.list().items] == [alice.shot, shot.id]
    assert db.shots.get(shot.id).name == "second"


def test_service_sees_everything(db: Database, sides: tuple[Side, Side]) -> None:
    svc = db.as_service()
    assert svc.projects.count() == 2
    assert svc.user_id is None
    assert len(svc.tasks.list().items) == 2


def _token(sub: uuid.UUID, **claims: Any) -> str:
    payload = {
        "sub": str(sub),
        "aud": "authenticated",
        "role": "authenticated",
        "exp": int(time.time()) + 600,
        **claims,
    }
    return jwt.encode(payload, SECRET, algorithm="HS256")


def test_for_user_verifies_the_token_then_scopes(db: Database, sides: tuple[Side, Side]) -> None:
    alice, _ = sides
    me = db.for_user(_token(alice.user))
    assert me.user_id == alice.user
    assert [p.id for p in me.projects.list().items] == [alice.project]
    for bad in (
        _token(alice.user, exp=int(time.time()) - 3600),
        _token(alice.user, aud="anon"),
        jwt.encode({"sub": str(alice.user), "aud": "authenticated"}, "wrong-secret-x" * 3),
        "not-a-token",
    ):
        with pytest.raises(PermissionDenied):
            db.for_user(bad)


def test_no_token_means_the_dummy_user_locally_only(
    db: Database, monkeypatch: pytest.MonkeyPatch, migrated_url: str, backend: str
) -> None:
    assert db.target.app_env == "local"
    if backend == "sqlite":
        assert db.for_user(None).user_id == uuid.UUID(DUMMY_USER_ID)
    else:  # a Postgres URL is a real database even with APP_ENV unset
        with pytest.raises(PermissionDenied, match="no access"):
            db.for_user(None)
    monkeypatch.setenv("APP_ENV", "web")
    with dualdb.connect(migrated_url) as web, pytest.raises(PermissionDenied, match="no access"):
        web.for_user(None)


def test_tokens_cannot_be_verified_without_configuration(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SUPABASE_URL", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with dualdb.connect(migrated_url) as db, pytest.raises(PermissionDenied, match="SUPABASE"):
        db.for_user(_token(uuid.uuid4()))


def test_writing_an_id_that_does_not_exist_is_denied_like_someone_elses(
    db: Database, sides: tuple[Side, Side]
) -> None:
    """Under RLS a missing row and another user's row look the same: both writes are denied."""
    alice, _ = sides
    me = db.as_user(alice.user)
    before = snapshot(db)
    for write in (
        lambda: me.projects.update(uuid.uuid4(), name="x"),
        lambda: me.shots.delete(uuid.uuid4()),
        lambda: me.tasks.update(uuid.uuid4(), params={}),
        lambda: me.shots.create(uuid.uuid4(), "orphan"),
    ):
        with pytest.raises(PermissionDenied, match="not yours"):
            write()
    assert snapshot(db) == before
    with pytest.raises(NotFound):  # reads still say NotFound
        me.projects.get(uuid.uuid4())


@pytest.mark.parametrize("verb", ["heartbeat", "fail", "complete", "release_claim"])
def test_a_user_cannot_act_on_another_users_claimed_task(
    db: Database, sides: tuple[Side, Side], verb: str
) -> None:
    alice, bob = sides
    claimed = db.as_service().tasks.claim("gpu-1")
    assert claimed is not None
    args: dict[str, tuple[object, ...]] = {
        "heartbeat": (bob.task, "gpu-1"),
        "fail": (bob.task, "gpu-1", "pwned"),
        "complete": (bob.task, "gpu-1", "evil.mp4"),
        "release_claim": (bob.task, "gpu-1"),
    }
    before = snapshot(db)
    with pytest.raises(PermissionDenied):
        getattr(db.as_user(alice.user).tasks, verb)(*args[verb])
    assert snapshot(db) == before
