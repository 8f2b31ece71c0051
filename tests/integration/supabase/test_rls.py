"""Row Level Security on a Supabase stand-in, at the raw-SQL level.

Two users, A and B, each own a project with a shot, two tasks (one waiting on the other), a
generation and a shot_generation.  SQL run as ``authenticated`` with A's claims — exactly what
PostgREST does, and what :func:`dualdb.auth.act_as_user` does — must never see or touch B's
rows.  Postgres only: on SQLite the data-access layer enforces the same rules.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from dualdb import migrations
from dualdb.auth import Claims, act_as_service, act_as_user
from dualdb.config import resolve
from dualdb.engine import create_engine
from dualdb.schema import (
    TABLES,
    generations,
    projects,
    shot_generations,
    shots,
    task_dependencies,
    tasks,
    users,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Owned:
    """The ids of everything one user owns."""

    user: uuid.UUID
    project: uuid.UUID
    shot: uuid.UUID
    task: uuid.UUID
    waiting_task: uuid.UUID
    generation: uuid.UUID
    shot_generation: uuid.UUID

    def rows(self) -> dict[str, set[object]]:
        """Per table, the primary keys of this user's rows."""
        return {
            "users": {self.user},
            "projects": {self.project},
            "tasks": {self.task, self.waiting_task},
            "task_dependencies": {(self.waiting_task, self.task)},
            "generations": {self.generation},
            "shots": {self.shot},
            "shot_generations": {self.shot_generation},
        }


def _make_user(conn: sa.Connection, email: str) -> Owned:
    o = Owned(*(uuid.uuid4() for _ in range(7)))
    conn.execute(
        sa.text("INSERT INTO auth.users (id, email) VALUES (:id, :e)"), {"id": o.user, "e": email}
    )
    conn.execute(users.insert().values(id=o.user, email=email))
    conn.execute(projects.insert().values(id=o.project, name=f"{email}'s", user_id=o.user))
    conn.execute(shots.insert().values(id=o.shot, name="Opening", project_id=o.project))
    conn.execute(
        tasks.insert().values(id=o.task, project_id=o.project, task_type="single_image", params={})
    )
    # The edge in task_dependencies and the counter come from the database.  (One statement
    # per row: an executemany takes its columns from the first row only.)
    conn.execute(
        tasks.insert().values(
            id=o.waiting_task,
            project_id=o.project,
            task_type="travel_stitch",
            params={},
            dependant_on=[o.task],
        )
    )
    conn.execute(generations.insert().values(id=o.generation, project_id=o.project, tasks=[o.task]))
    conn.execute(
        shot_generations.insert().values(
            id=o.shot_generation, shot_id=o.shot, generation_id=o.generation, position=0
        )
    )
    return o


@dataclass
class World:
    url: str
    engine: sa.Engine
    a: Owned
    b: Owned


@pytest.fixture
def world(supabase_url: str) -> Iterator[World]:
    engine = create_engine(resolve(supabase_url))
    try:
        with engine.begin() as conn:
            a = _make_user(conn, "a@example.com")
            b = _make_user(conn, "b@example.com")
        yield World(supabase_url, engine, a, b)
    finally:
        engine.dispose()


def _pk(table: sa.Table) -> list[sa.Column[object]]:
    return list(table.primary_key.columns)


def visible(conn: sa.Connection) -> dict[str, set[object]]:
    """Per table, the primary keys the current role can see."""
    seen: dict[str, set[object]] = {}
    for table in TABLES:
        cols = _pk(table)
        result = conn.execute(sa.select(*cols))
        seen[table.name] = {r[0] if len(cols) == 1 else tuple(r) for r in result}
    return seen


def raw_as_user(conn: sa.Connection, user_id: uuid.UUID) -> None:
    """What PostgREST runs for a request with A's token, spelled out."""
    claims = {"sub": str(user_id), "role": "authenticated", "aud": "authenticated"}
    conn.execute(
        sa.text("SELECT set_config('request.jwt.claims', :c, true)"), {"c": json.dumps(claims)}
    )
    conn.exec_driver_sql("SET LOCAL ROLE authenticated")


def helper_as_user(conn: sa.Connection, user_id: uuid.UUID) -> None:
    """The library's version (what the data-access layer runs per transaction)."""
    act_as_user(conn, Claims.for_user_id(user_id))


SCOPES: dict[str, Callable[[sa.Connection, uuid.UUID], None]] = {
    "raw-sql": raw_as_user,
    "act_as_user": helper_as_user,
}


@pytest.fixture(params=list(SCOPES))
def as_user(request: pytest.FixtureRequest) -> Callable[[sa.Connection, uuid.UUID], None]:
    return SCOPES[str(request.param)]


def _denied(err: exc.DBAPIError) -> bool:
    return getattr(err.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE


def test_a_user_sees_exactly_their_own_rows_in_every_table(
    world: World, as_user: Callable[[sa.Connection, uuid.UUID], None]
) -> None:
    with world.engine.begin() as conn:
        as_user(conn, world.a.user)
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "authenticated"
        assert conn.execute(sa.text("SELECT auth.uid()")).scalar() == world.a.user
        assert visible(conn) == world.a.rows()
    with world.engine.begin() as conn:
        as_user(conn, world.b.user)
        assert visible(conn) == world.b.rows()


def test_a_user_cannot_update_or_delete_someone_elses_rows(world: World) -> None:
    b = world.b
    targets = [
        (users, users.c.id, b.user, {"email": "pwned"}),
        (projects, projects.c.id, b.project, {"name": "pwned"}),
        (tasks, tasks.c.id, b.task, {"status": "Cancelled"}),
        (generations, generations.c.id, b.generation, {"location": "pwned"}),
        (shots, shots.c.id, b.shot, {"name": "pwned"}),
        (shot_generations, shot_generations.c.id, b.shot_generation, {"position": 99}),
    ]
    with world.engine.begin() as conn:
        helper_as_user(conn, world.a.user)
        for table, key, value, change in targets:
            assert conn.execute(table.update().where(key == value).values(change)).rowcount == 0
            assert conn.execute(table.delete().where(key == value)).rowcount == 0
    # Edges are the database's alone (migration 0007): no API role writes them at all.
    edge = task_dependencies.c.task_id == b.waiting_task
    for statement in (
        task_dependencies.update().where(edge).values(dependency_id=b.waiting_task),
        task_dependencies.delete().where(edge),
    ):
        with world.engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught, conn.begin():
            helper_as_user(conn, world.a.user)
            conn.execute(statement)
        assert _denied(caught.value)
        assert "permission denied for table task_dependencies" in str(caught.value.orig)
    with world.engine.begin() as conn:
        helper_as_user(conn, world.a.user)
        # Unfiltered statements reach only A's own rows, never B's.
        assert conn.execute(shots.update().values(name="mine")).rowcount == 1
    with world.engine.connect() as conn:  # as the owner: B's rows are untouched
        assert visible(conn)["shots"] == {world.a.shot, b.shot}
        assert (
            conn.execute(sa.select(projects.c.name).where(projects.c.id == b.project)).scalar()
            == "b@example.com's"
        )
        assert (
            conn.execute(sa.select(shots.c.name).where(shots.c.id == b.shot)).scalar() == "Opening"
        )
        assert (
            conn.execute(sa.select(tasks.c.status).where(tasks.c.id == b.task)).scalar() == "Queued"
        )
        for table in TABLES:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                == len(world.a.rows()[table.name]) * 2
            )


def _attempts(world: World) -> list[tuple[str, sa.Executable]]:
    a, b = world.a, world.b
    return [
        ("project for B", projects.insert().values(id=uuid.uuid4(), name="x", user_id=b.user)),
        ("users row for B", users.insert().values(id=uuid.uuid4(), email="someone@else")),
        (
            "task in B's project",
            tasks.insert().values(id=uuid.uuid4(), project_id=b.project, task_type="t", params={}),
        ),
        (
            "shot in B's project",
            shots.insert().values(id=uuid.uuid4(), project_id=b.project, name="x"),
        ),
        (
            "generation in B's project",
            generations.insert().values(id=uuid.uuid4(), project_id=b.project),
        ),
        (
            "B's generation on A's shot",
            shot_generations.insert().values(
                id=uuid.uuid4(), shot_id=a.shot, generation_id=b.generation
            ),
        ),
        (
            "A's generation on B's shot",
            shot_generations.insert().values(
                id=uuid.uuid4(), shot_id=b.shot, generation_id=a.generation
            ),
        ),
        (
            "A's task waits on B's",
            task_dependencies.insert().values(task_id=a.task, dependency_id=b.task),
        ),
        (
            "B's task waits on A's",
            task_dependencies.insert().values(task_id=b.task, dependency_id=a.task),
        ),
        (
            "move A's task to B",
            tasks.update().where(tasks.c.id == a.task).values(project_id=b.project),
        ),
        (
            "give A's project to B",
            projects.update().where(projects.c.id == a.project).values(user_id=b.user),
        ),
        (
            "move A's shot to B",
            shots.update().where(shots.c.id == a.shot).values(project_id=b.project),
        ),
        (
            "repoint A's link at B's generation",
            shot_generations.update()
            .where(shot_generations.c.id == a.shot_generation)
            .values(generation_id=b.generation),
        ),
    ]


def test_a_user_cannot_insert_into_or_move_rows_into_someone_elses_project(world: World) -> None:
    refused: list[str] = []
    for what, statement in _attempts(world):
        with world.engine.connect() as conn:
            transaction = conn.begin()
            helper_as_user(conn, world.a.user)
            try:
                conn.execute(statement)
            except exc.DBAPIError as err:
                if "waits on" in what:
                    # Edges are written only by the database (migrations 0006 and 0007): the
                    # API roles hold no write privilege on them at all.
                    assert _denied(err), f"{what}: {err.orig}"
                    assert "permission denied for table task_dependencies" in str(err.orig)
                elif what == "move A's task to B":
                    # A signed-in user never moves a task (migration 0007), before RLS asks.
                    assert _denied(err), f"{what}: {err.orig}"
                    assert "cannot change the dependencies or the project" in str(err.orig)
                else:
                    assert _denied(err), f"{what}: {err.orig}"
                    assert "row-level security" in str(err.orig)
                refused.append(what)
            finally:
                transaction.rollback()
    assert refused == [what for what, _ in _attempts(world)]
    with world.engine.connect() as conn:
        assert visible(conn)["projects"] == {world.a.project, world.b.project}


def test_a_user_can_still_work_in_their_own_project(world: World) -> None:
    """Control: the policies scope access, they do not simply deny everything."""
    a = world.a
    new_shot, new_gen, new_task = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with world.engine.begin() as conn:
        helper_as_user(conn, a.user)
        conn.execute(shots.insert().values(id=new_shot, project_id=a.project, name="Second"))
        conn.execute(generations.insert().values(id=new_gen, project_id=a.project))
        conn.execute(shot_generations.insert().values(shot_id=new_shot, generation_id=new_gen))
        conn.execute(
            tasks.insert().values(
                id=new_task, project_id=a.project, task_type="t", params={}, dependant_on=[a.task]
            )
        )
        conn.execute(projects.insert().values(name="Another", user_id=a.user))
        assert conn.execute(projects.update().values(name="Renamed")).rowcount == 2
        assert conn.execute(tasks.delete().where(tasks.c.id == a.waiting_task)).rowcount == 1
    with world.engine.connect() as conn:
        seen = visible(conn)
    assert {new_shot, a.shot} <= seen["shots"] and new_task in seen["tasks"]
    assert a.waiting_task not in seen["tasks"] and world.b.waiting_task in seen["tasks"]


@pytest.mark.parametrize("claims", [None, "a"], ids=["no-claims", "with-A-claims"])
def test_anon_sees_nothing_and_writes_nothing(world: World, claims: str | None) -> None:
    with world.engine.begin() as conn:
        if claims:
            conn.execute(
                sa.text("SELECT set_config('request.jwt.claims', :c, true)"),
                {"c": json.dumps({"sub": str(world.a.user), "role": "anon"})},
            )
        conn.exec_driver_sql("SET LOCAL ROLE anon")
        assert visible(conn) == {t.name: set() for t in TABLES}
        assert conn.execute(shots.update().values(name="x")).rowcount == 0
        assert conn.execute(projects.delete()).rowcount == 0
    with world.engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught, conn.begin():
        conn.exec_driver_sql("SET LOCAL ROLE anon")
        conn.execute(projects.insert().values(name="x", user_id=world.a.user))
    assert _denied(caught.value)


def test_authenticated_without_claims_sees_nothing(world: World) -> None:
    with world.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE authenticated")
        assert conn.execute(sa.text("SELECT auth.uid()")).scalar() is None
        assert visible(conn) == {t.name: set() for t in TABLES}


def test_service_role_sees_and_writes_everything(world: World) -> None:
    everything = {name: world.a.rows()[name] | world.b.rows()[name] for name in world.a.rows()}
    with world.engine.begin() as conn:
        act_as_service(conn)
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "service_role"
        assert visible(conn) == everything
        assert conn.execute(shots.update().values(name="by the worker")).rowcount == 2


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT version_num FROM alembic_version",
        "UPDATE alembic_version SET version_num = '0001'",
        "DELETE FROM alembic_version",
        "INSERT INTO alembic_version (version_num) VALUES ('9999')",
        "TRUNCATE alembic_version",
    ],
)
def test_api_roles_cannot_read_or_write_the_version_table(
    world: World, role: str, statement: str
) -> None:
    with world.engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught, conn.begin():
        conn.execute(
            sa.text("SELECT set_config('request.jwt.claims', :c, true)"),
            {"c": json.dumps({"sub": str(world.a.user), "role": role})},
        )
        conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
        conn.exec_driver_sql(statement)
    assert _denied(caught.value), caught.value.orig
    assert migrations.status(resolve(world.url)).up_to_date


@pytest.mark.parametrize(
    "statement",
    ["SELECT version_num FROM alembic_version", "UPDATE alembic_version SET version_num = '0001'"],
)
def test_service_role_neither_reads_nor_rewrites_the_version_table(
    world: World, statement: str
) -> None:
    """Only the migrating role reads the ledger (migration 0007)."""
    with world.engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught, conn.begin():
        act_as_service(conn)
        conn.exec_driver_sql(statement)
    assert _denied(caught.value)
    with world.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            migrations.head_revision()
        )


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_truncate(world: World, role: str) -> None:
    """TRUNCATE ignores RLS, so the API roles must not hold it."""
    for table in TABLES:
        with world.engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught, conn.begin():
            conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
            conn.exec_driver_sql(f"TRUNCATE {table.name} CASCADE")
        assert _denied(caught.value), table.name


def test_the_scope_ends_with_the_transaction(world: World) -> None:
    """A pooled connection never carries one user's identity into the next transaction."""
    with world.engine.connect() as conn:
        with conn.begin():
            helper_as_user(conn, world.a.user)
            assert conn.execute(sa.text("SELECT auth.uid()")).scalar() == world.a.user
        with conn.begin():
            assert conn.execute(sa.text("SELECT current_user")).scalar() == "postgres"
            assert conn.execute(sa.text("SELECT auth.uid()")).scalar() is None
            assert visible(conn)["projects"] == {world.a.project, world.b.project}


def test_scoping_refuses_to_run_outside_a_transaction(world: World) -> None:
    with world.engine.connect() as conn:
        with pytest.raises(ValueError, match="open transaction"):
            act_as_user(conn, Claims.for_user_id(world.a.user))
        with pytest.raises(ValueError, match="open transaction"):
            act_as_service(conn)


def test_the_scope_survives_a_rolled_back_savepoint_taken_after_it(world: World) -> None:
    """Sessions run each call in a SAVEPOINT: a failed call must not drop the user's scope."""
    with world.engine.begin() as conn:
        helper_as_user(conn, world.a.user)
        savepoint = conn.begin_nested()
        with pytest.raises(exc.DBAPIError):
            conn.execute(shots.insert().values(project_id=world.b.project, name="x"))
        savepoint.rollback()
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "authenticated"
        assert visible(conn) == world.a.rows()


def test_a_scope_set_inside_a_savepoint_is_undone_by_its_rollback(world: World) -> None:
    """Why the scope must be set right after BEGIN, before any SAVEPOINT (Postgres semantics)."""
    with world.engine.begin() as conn:
        savepoint = conn.begin_nested()
        helper_as_user(conn, world.a.user)
        savepoint.rollback()
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "postgres"
