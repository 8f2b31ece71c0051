"""Inside their own rows, through a real PostgREST 12: what a signed-in user may and may not do.

Row Level Security keeps users out of each other's rows; migrations 0006 and 0007 decide what a
user may write in their own: tasks are created Queued or Pending with the queue's columns left
to workers and ``created_at`` set by the server, only tasks that have not started change, and
the rules of the queue hold whoever writes.  Every attack below is refused, leaves the row as it
was, and the queue goes on for everyone else.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest

import dualdb
from tests.integration.api.conftest import Api, Owners

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]


def patch_waiting_task(api: Api, owners: Owners, body: dict[str, Any]) -> Any:
    """User A's PATCH of A's task that waits on another."""
    a = owners.a
    return api.patch(
        "tasks", body, token=api.user_token(a.user), params={"id": f"eq.{a.waiting_task}"}
    )


def row(api: Api, table: str, key: object) -> dict[str, Any]:
    """The row as the owner sees it (not through the API)."""
    with psycopg.connect(api.db_url, autocommit=True) as conn:
        cur = conn.execute(f"SELECT * FROM {table} WHERE id = %s", (key,))
        names = [c.name for c in cur.description or ()]
        found = cur.fetchone()
        assert found is not None
        return dict(zip(names, found, strict=True))


ATTACKS: dict[str, dict[str, Any]] = {
    "mark it Complete": {"status": "Complete", "output_location": "files/fake.mp4"},
    "mark it Failed": {"status": "Failed", "error": "nope"},
    "run it": {"status": "In Progress", "worker_id": "me"},
    "take over the worker column": {"worker_id": "me"},
    "claim attempts": {"attempts": 99},
    "fake a heartbeat": {"heartbeat_at": "2030-01-01T00:00:00Z"},
    "point it at someone's file": {"output_location": "https://evil.example/x.png"},
    "mark its generation made": {"generation_processed_at": "2030-01-01T00:00:00Z"},
    "write a negative counter": {"attempts": -1},
    "move its dependencies": {"dependant_on": []},
}


#: Sent back in a whole row a front end read: kept as stored, not refused (a rounded timestamp,
#: a counter that moved since the read) — and so no way to jump the queue either.
IGNORED: dict[str, dict[str, Any]] = {
    "say it is ready": {"unmet_dependencies": 0},
    "backdate it to jump the queue": {"created_at": "2000-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("attack", list(IGNORED))
def test_server_managed_values_sent_back_are_kept(
    postgrest: Api, owners: Owners, attack: str
) -> None:
    a = owners.a
    before = row(postgrest, "tasks", a.waiting_task)
    reply = patch_waiting_task(postgrest, owners, {**IGNORED[attack], "params": {"edited": True}})
    assert reply.status == 200, reply
    after = row(postgrest, "tasks", a.waiting_task)
    assert after["params"] == {"edited": True}
    assert (after["created_at"], after["unmet_dependencies"]) == (
        before["created_at"],
        before["unmet_dependencies"],
    )
    assert after["unmet_dependencies"] == 1


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_user_cannot_rewrite_the_queue_columns_of_their_own_task(
    postgrest: Api, owners: Owners, attack: str
) -> None:
    a = owners.a
    before = row(postgrest, "tasks", a.waiting_task)
    reply = patch_waiting_task(postgrest, owners, ATTACKS[attack])
    assert reply.status == 403 and reply.code == "42501", reply
    assert row(postgrest, "tasks", a.waiting_task) == before


def test_a_user_cannot_put_a_running_task_back(postgrest: Api, owners: Owners) -> None:
    """A task a worker holds is the worker's: requeueing it would run it twice."""
    a = owners.a
    started = postgrest.patch(
        "tasks",
        {"status": "In Progress", "worker_id": "gpu-1", "attempts": 1},
        token=postgrest.service_token(),
        params={"id": f"eq.{a.task}"},
    )
    assert started.status == 200, started
    token = postgrest.user_token(a.user)
    for change in ({"status": "Queued"}, {"status": "Cancelled"}, {"params": {"x": 1}}):
        reply = postgrest.patch("tasks", change, token=token, params={"id": f"eq.{a.task}"})
        assert reply.status == 403 and reply.code == "42501", (change, reply)
    deleted = postgrest.delete("tasks", token=token, params={"id": f"eq.{a.task}"})
    assert deleted.status == 403, deleted
    assert row(postgrest, "tasks", a.task)["worker_id"] == "gpu-1"


@pytest.mark.parametrize(
    "task",
    [
        {"status": "Complete"},
        {"status": "In Progress"},
        {"worker_id": "me"},
        {"attempts": 3},
        {"error": "x"},
        {"heartbeat_at": "2030-01-01T00:00:00Z"},
        {"output_location": "https://evil.example/x.png"},
    ],
    ids=["complete", "running", "worker", "attempts", "error", "heartbeat", "output"],
)
def test_a_user_creates_tasks_only_queued_or_pending_with_the_queue_columns_empty(
    postgrest: Api, owners: Owners, task: dict[str, Any]
) -> None:
    body = {"project_id": str(owners.a.project), "task_type": "t", "params": {}, **task}
    reply = postgrest.post("tasks", body, token=postgrest.user_token(owners.a.user))
    assert reply.status == 403 and reply.code == "42501", reply


def test_created_at_is_the_servers(postgrest: Api, owners: Owners) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    reply = postgrest.post(
        "tasks",
        {"project_id": str(owners.a.project), "task_type": "t", "params": {},
         "created_at": "2000-01-01T00:00:00Z", "unmet_dependencies": 5},
        token=postgrest.user_token(owners.a.user),
    )  # fmt: skip
    assert reply.status == 201, reply
    [made] = reply.body
    assert dt.datetime.fromisoformat(made["created_at"]) > before
    assert made["unmet_dependencies"] == 0
    project = postgrest.patch(
        "projects",
        {"created_at": "2000-01-01T00:00:00Z", "name": "Renamed"},
        token=postgrest.user_token(owners.a.user),
        params={"id": f"eq.{owners.a.project}"},
    )
    assert project.status == 200, project
    stored = row(postgrest, "projects", owners.a.project)
    assert stored["name"] == "Renamed" and stored["created_at"].year > 2000
    assert stored["updated_at"] is not None


#: Bodies no JSON serialiser here would write, sent as raw text.
POISON_PARAMS = {
    "params not an object": ("[1, 2]", "invalid params: must be a JSON object"),
    "JSON 3,000 levels deep": (
        '{"a": ' * 2999 + "{}" + "}" * 2999,
        "invalid params: nested deeper than 64 levels",
    ),
    "a 5,000-digit number": (
        '{"n": ' + "9" * 5000 + "}",
        "invalid params: nested deeper than 64 levels, or a number outside",
    ),
}


@pytest.mark.parametrize("label", list(POISON_PARAMS))
def test_a_poison_task_is_refused_and_the_queue_goes_on(
    postgrest: Api, owners: Owners, label: str
) -> None:
    token = postgrest.user_token(owners.a.user)
    params, expected = POISON_PARAMS[label]
    raw = f'{{"project_id": "{owners.a.project}", "task_type": "t", "params": {params}}}'
    reply = postgrest.request("POST", "tasks", token=token, raw=raw)
    assert reply.status == 400 and reply.code == "22023", reply
    assert reply.body["message"].startswith(expected), reply
    dep = postgrest.post(
        "tasks",
        {"project_id": str(owners.a.project), "task_type": "t", "params": {},
         "dependant_on": [None]},
        token=token,
    )  # fmt: skip
    assert dep.status == 400 and dep.code == "22023", dep
    # Every other user's work still runs: a worker drains the queue.
    with dualdb.connect(postgrest.db_url) as db:
        done = []
        while (task := db.tasks.claim("gpu-1")) is not None:
            done.append(db.tasks.complete(task.id, "gpu-1", f"files/{task.id}.png").id)
    assert set(done) == {owners.a.task, owners.a.waiting_task, owners.b.task, owners.b.waiting_task}


def test_a_task_others_wait_for_cannot_be_deleted(postgrest: Api, owners: Owners) -> None:
    reply = postgrest.delete(
        "tasks", token=postgrest.user_token(owners.a.user), params={"id": f"eq.{owners.a.task}"}
    )
    # PostgREST answers 400 for SQLSTATE 23000 (it keeps 409 for 23503/23505).
    assert reply.status == 400 and reply.code == "23000", reply
    assert reply.body["message"].startswith("conflict: unfinished tasks depend on this task")
    assert row(postgrest, "tasks", owners.a.task)["status"] == "Queued"


def test_what_a_user_may_do_with_their_own_tasks(postgrest: Api, owners: Owners) -> None:
    """Release, hold, cancel (cascading), edit params and type; and anon may do nothing."""
    a, token = owners.a, postgrest.user_token(owners.a.user)
    made = postgrest.post(
        "tasks",
        {"project_id": str(a.project), "task_type": "t", "params": {}, "status": "Pending"},
        token=token,
    )
    assert made.status == 201, made
    key = made.body[0]["id"]
    for change in ({"status": "Queued"}, {"status": "Pending"}, {"params": {"p": 1},
                   "task_type": "upscale"}):  # fmt: skip
        reply = postgrest.patch("tasks", change, token=token, params={"id": f"eq.{key}"})
        assert reply.status == 200 and reply.body[0]["updated_at"] is not None, (change, reply)
    cancelled = postgrest.patch(
        "tasks",
        {"status": "Cancelled", "error": "changed my mind"},
        token=token,
        params={"id": f"eq.{a.task}"},
    )
    assert cancelled.status == 200, cancelled
    waiting = row(postgrest, "tasks", a.waiting_task)
    assert (waiting["status"], waiting["error"]) == (
        "Cancelled",
        f"cancelled: dependency {a.task} changed my mind",
    )
    anon = postgrest.post(
        "tasks", {"project_id": str(a.project), "task_type": "t", "params": {}},
        token=postgrest.anon_token(),
    )  # fmt: skip
    assert anon.status == 401 and anon.code == "42501", anon


def test_a_worker_with_the_service_key_runs_tasks(postgrest: Api, owners: Owners) -> None:
    """service_role (edge functions, workers in other languages) does what workers need."""
    token, key = postgrest.service_token(), owners.b.task
    for change in (
        {"status": "In Progress", "worker_id": "edge-1", "attempts": 1},
        {"status": "Complete", "output_location": "files/b.png"},
    ):
        reply = postgrest.patch("tasks", change, token=token, params={"id": f"eq.{key}"})
        assert reply.status == 200, (change, reply)
    assert row(postgrest, "tasks", owners.b.waiting_task)["unmet_dependencies"] == 0


def test_the_front_end_verbs_over_rpc(postgrest: Api, owners: Owners) -> None:
    """enqueue_task / release_task / cancel_task: one round trip each, the same rules."""
    a, token = owners.a, postgrest.user_token(owners.a.user)
    made = postgrest.rpc(
        "enqueue_task",
        {"project_id": str(a.project), "task_type": "t", "depends_on": [str(a.task)] * 2},
        token=token,
    )
    assert made.status == 200, made
    assert (made.body["status"], made.body["dependant_on"]) == ("Queued", [str(a.task)])
    refused = {
        "a finished status": postgrest.rpc(
            "enqueue_task",
            {"project_id": str(a.project), "task_type": "t", "status": "Complete"},
            token=token,
        ),
        "B's project": postgrest.rpc(
            "enqueue_task", {"project_id": str(owners.b.project), "task_type": "t"}, token=token
        ),
        "B's task": postgrest.rpc("cancel_task", {"task_id": str(owners.b.task)}, token=token),
        "anon": postgrest.rpc(
            "enqueue_task",
            {"project_id": str(a.project), "task_type": "t"},
            token=postgrest.anon_token(),
        ),
    }
    assert {k: (r.status, r.code) for k, r in refused.items()} == {
        "a finished status": (400, "22023"),
        "B's project": (403, "42501"),
        "B's task": (404, "PT404"),  # someone else's task does not exist for this user
        "anon": (401, "42501"),
    }
    # The service key (edge functions) may call them too.
    service = postgrest.rpc(
        "cancel_task", {"task_id": str(owners.b.task)}, token=postgrest.service_token()
    )
    assert service.status == 200 and [r["id"] for r in service.body] == [
        str(owners.b.task),
        str(owners.b.waiting_task),
    ]


def test_a_shot_task_completed_over_the_api_gets_one_generation(
    postgrest: Api, owners: Owners
) -> None:
    """Completed by the service key (an edge function, a worker in another language): the
    database makes its generation, last on the shot, once — even when told again."""
    a, service = owners.a, postgrest.service_token()
    made = postgrest.rpc(
        "enqueue_task",
        {"project_id": str(a.project), "task_type": "keyframe", "params": {"shot_id": str(a.shot)}},
        token=postgrest.user_token(a.user),
    )
    assert made.status == 200, made
    key = made.body["id"]
    for change in (
        {"status": "In Progress", "worker_id": "edge-1", "attempts": 1},
        {"status": "Complete", "output_location": "files/k.png"},
    ):
        reply = postgrest.patch("tasks", change, token=service, params={"id": f"eq.{key}"})
        assert reply.status == 200, (change, reply)
    again = postgrest.patch(
        "tasks", {"status": "Complete"}, token=service, params={"id": f"eq.{key}"}
    )
    assert again.status == 200  # Complete → Complete changes nothing
    with psycopg.connect(postgrest.db_url, autocommit=True) as conn:
        made_gens = conn.execute(
            "SELECT g.id, g.location, sg.position FROM generations g "
            "JOIN shot_generations sg ON sg.generation_id = g.id WHERE %s = ANY (g.tasks)",
            (key,),
        ).fetchall()
    assert [(loc, pos) for _, loc, pos in made_gens] == [("files/k.png", 1)]
    assert row(postgrest, "tasks", key)["generation_processed_at"] is not None


def test_a_custom_role_granted_authenticated_gets_the_same_rules(
    postgrest: Api, owners: Owners
) -> None:
    """The rules follow Row Level Security, not a role's name (Supabase custom roles)."""
    role = f"dualdb_custom_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgrest.db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            conn.execute(f"GRANT authenticated TO {role}")
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('request.jwt.claims', %s, true)",
                    (f'{{"sub": "{owners.a.user}", "role": "{role}"}}',),
                )
                conn.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Queued or Pending"):
                    conn.execute(
                        "INSERT INTO tasks (project_id, task_type, params, status) "
                        "VALUES (%s, 't', '{}', 'Complete')",
                        (owners.a.project,),
                    )
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
