"""Smoke tests of the PostgREST fixture: Supabase's API, over HTTP, on dualdb's schema.

Users A and B each own rows in every table (written by the owner with psycopg).  Through a real
PostgREST 12: ``anon`` reads nothing and writes nothing, A sees exactly A's rows, cannot read or
change B's, ``service_role`` sees everything, and ``alembic_version`` stays out of the API
roles' reach.  The statuses asserted are the ones PostgREST 12.0.2 answers.
"""

from __future__ import annotations

import time

import jwt
import psycopg
import pytest

from dualdb import migrations
from tests.integration.api.conftest import Api, Owners

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]

#: Per table, PostgREST's ``select`` of its primary key.
KEYS = {
    "users": "id",
    "projects": "id",
    "tasks": "id",
    "task_dependencies": "task_id,dependency_id",
    "generations": "id",
    "shots": "id",
    "shot_generations": "id",
}


def visible(api: Api, token: str | None) -> dict[str, set[str]]:
    """Per table, the keys a GET with ``token`` returns (composite keys joined by a comma)."""
    seen: dict[str, set[str]] = {}
    for table, key in KEYS.items():
        reply = api.get(table, token=token, params={"select": key})
        assert reply.status == 200, (table, reply)
        seen[table] = {",".join(str(row[c]) for c in key.split(",")) for row in reply.body}
    return seen


def owner_sees(api: Api, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(api.db_url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def test_the_fixture_serves_postgrest_12(postgrest: Api) -> None:
    root = postgrest.get("/")
    assert root.status == 200
    assert root.headers["Server"] == "postgrest/12.0.2"
    assert {"/projects", "/tasks"} <= set(root.body["paths"])


@pytest.mark.parametrize("with_key", [False, True], ids=["no-token", "anon-key"])
def test_anon_reads_nothing(postgrest: Api, owners: Owners, with_key: bool) -> None:
    token = postgrest.anon_token() if with_key else None
    assert visible(postgrest, token) == {table: set() for table in KEYS}


@pytest.mark.parametrize("with_key", [False, True], ids=["no-token", "anon-key"])
def test_anon_cannot_write(postgrest: Api, owners: Owners, with_key: bool) -> None:
    token = postgrest.anon_token() if with_key else None
    a = owners.a
    created = postgrest.post("projects", {"name": "anon's", "user_id": str(a.user)}, token=token)
    # PostgREST answers 401 (not 403) to insufficient privilege without a signed-in user.
    assert (created.status, created.code) == (401, "42501"), created
    assert "row-level security" in created.body["message"]
    # Updates and deletes reach no row: 200 with an empty representation.
    renamed = postgrest.patch(
        "projects", {"name": "pwned"}, token=token, params={"id": f"eq.{a.project}"}
    )
    assert (renamed.status, renamed.body) == (200, [])
    deleted = postgrest.delete("tasks", token=token, params={"id": f"eq.{a.task}"})
    assert (deleted.status, deleted.body) == (200, [])
    assert owner_sees(postgrest, "SELECT count(*) FROM projects") == [(2,)]
    assert owner_sees(postgrest, "SELECT name FROM projects WHERE id = %s", a.project) == [
        ("a@example.com's",)
    ]
    assert owner_sees(postgrest, "SELECT count(*) FROM tasks") == [(4,)]


def test_a_user_sees_exactly_their_own_rows_in_every_table(postgrest: Api, owners: Owners) -> None:
    assert visible(postgrest, postgrest.user_token(owners.a.user)) == owners.a.rows()
    assert visible(postgrest, postgrest.user_token(owners.b.user)) == owners.b.rows()


def test_a_user_cannot_read_someone_elses_rows_by_id(postgrest: Api, owners: Owners) -> None:
    token, b = postgrest.user_token(owners.a.user), owners.b
    for table, key in [
        ("users", b.user),
        ("projects", b.project),
        ("tasks", b.task),
        ("generations", b.generation),
        ("shots", b.shot),
        ("shot_generations", b.shot_generation),
    ]:
        reply = postgrest.get(table, token=token, params={"id": f"eq.{key}"})
        assert (reply.status, reply.body) == (200, []), table
    embedded = postgrest.get(
        "projects", token=token, params={"select": "id,tasks(id)", "id": f"eq.{b.project}"}
    )
    assert (embedded.status, embedded.body) == (200, [])


def test_a_user_cannot_write_into_someone_elses_project(postgrest: Api, owners: Owners) -> None:
    token, a, b = postgrest.user_token(owners.a.user), owners.a, owners.b
    queued = postgrest.post(
        "tasks", {"project_id": str(b.project), "task_type": "t", "params": {}}, token=token
    )
    assert (queued.status, queued.code) == (403, "42501"), queued
    assert "row-level security" in queued.body["message"]
    moved = postgrest.patch(
        "shots", {"project_id": str(b.project)}, token=token, params={"id": f"eq.{a.shot}"}
    )
    assert (moved.status, moved.code) == (403, "42501"), moved
    renamed = postgrest.patch(
        "projects", {"name": "pwned"}, token=token, params={"id": f"eq.{b.project}"}
    )
    assert (renamed.status, renamed.body) == (200, [])
    deleted = postgrest.delete("tasks", token=token, params={"id": f"eq.{b.task}"})
    assert (deleted.status, deleted.body) == (200, [])
    # Control: A's own project takes writes, so the refusals above are the policies at work.
    own = postgrest.post(
        "tasks", {"project_id": str(a.project), "task_type": "t", "params": {}}, token=token
    )
    assert own.status == 201, own
    assert owner_sees(postgrest, "SELECT name FROM projects WHERE id = %s", b.project) == [
        ("b@example.com's",)
    ]
    assert owner_sees(postgrest, "SELECT count(*) FROM tasks WHERE project_id = %s", b.project) == [
        (2,)
    ]
    assert owner_sees(postgrest, "SELECT project_id FROM shots WHERE id = %s", a.shot) == [
        (a.project,)
    ]


def test_service_role_sees_everything(postgrest: Api, owners: Owners) -> None:
    everything = {t: owners.a.rows()[t] | owners.b.rows()[t] for t in KEYS}
    assert visible(postgrest, postgrest.service_token()) == everything


@pytest.mark.parametrize(
    ("who", "status"),
    [("no-token", 401), ("anon", 401), ("user", 403)],
)
def test_the_api_roles_cannot_reach_the_version_table(
    postgrest: Api, owners: Owners, who: str, status: int
) -> None:
    token = {
        "no-token": None,
        "anon": postgrest.anon_token(),
        "user": postgrest.user_token(owners.a.user),
    }[who]
    for method in ("GET", "POST", "PATCH", "DELETE"):
        body = {"version_num": "0001"} if method in ("POST", "PATCH") else None
        reply = postgrest.request(method, "alembic_version", token=token, body=body)
        assert (reply.status, reply.code) == (status, "42501"), (method, reply)
        assert reply.body["message"] == "permission denied for table alembic_version"
    # Not even listed: PostgREST's OpenAPI follows the role's privileges.
    assert "/alembic_version" not in postgrest.get("/", token=token).body["paths"]
    assert owner_sees(postgrest, "SELECT version_num FROM alembic_version") == [
        (migrations.head_revision(),)
    ]


def test_service_role_neither_reads_nor_moves_the_version_table(postgrest: Api) -> None:
    """Only the migrating role reads the ledger (migration 0007 revoked service_role's SELECT)."""
    token = postgrest.service_token()
    for method in ("GET", "POST", "PATCH", "DELETE"):
        body = {"version_num": "0001"} if method != "DELETE" else None
        reply = postgrest.request(method, "alembic_version", token=token, body=body)
        assert (reply.status, reply.code) == (403, "42501"), (method, reply)
    assert owner_sees(postgrest, "SELECT version_num FROM alembic_version") == [
        (migrations.head_revision(),)
    ]


def test_forged_and_expired_tokens_are_refused(postgrest: Api, owners: Owners) -> None:
    claims = {"sub": str(owners.a.user), "role": "authenticated", "aud": "authenticated"}
    forged = jwt.encode({**claims, "exp": int(time.time()) + 60}, "not-the-secret" * 3, "HS256")
    for token in (forged, postgrest.token(claims, expires_in=-60)):
        reply = postgrest.get("tasks", token=token)
        assert (reply.status, reply.code) == (401, "PGRST301"), reply


def test_rpc_reaches_postgrest_function_lookup(postgrest: Api, owners: Owners) -> None:
    """No queue function is in ``public`` yet: the helper gets PostgREST's 'no such function'."""
    reply = postgrest.rpc("no_such_function", {"x": 1}, token=postgrest.user_token(owners.a.user))
    assert (reply.status, reply.code) == (404, "PGRST202"), reply
