"""The workers' queue verbs as SQL functions (migration 0008), driven without dualdb.

A worker written in another language connects to Postgres as ``service_role`` and calls
``dualdb.claim_tasks``, ``heartbeat_task``, ``complete_task``, ``fail_task``,
``release_claim`` and ``requeue_stale`` — the functions dualdb's own queue calls.  They are not
in PostgREST's schema, and no API role but ``service_role`` may run them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integration.api.conftest import Api, Owners

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def service(postgrest: Api) -> Iterator[Conn]:
    """A plain psycopg connection acting as ``service_role`` (what a worker's key gets)."""
    with psycopg.connect(postgrest.db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("SET ROLE service_role")
        yield conn


def call(conn: Conn, sql: str, *args: Any) -> list[dict[str, Any]]:
    return conn.execute(sql, args).fetchall()


def refusal(conn: Conn, sql: str, *args: Any) -> tuple[str | None, str]:
    """The SQLSTATE and message a statement is refused with (the row stays as it was)."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql, args)
    return caught.value.sqlstate, str(caught.value.diag.message_primary)


def test_a_worker_written_only_in_sql_drains_the_queue(service: Conn, owners: Owners) -> None:
    a, b = owners.a, owners.b
    # The type filter and the limit: both users' ready single_image tasks, oldest first.
    claimed = call(service, "SELECT * FROM dualdb.claim_tasks('sql-1', ARRAY['single_image'], 5)")
    assert {t["id"] for t in claimed} == {a.task, b.task}
    assert claimed == sorted(claimed, key=lambda t: (t["created_at"], t["id"]))
    assert {(t["status"], t["worker_id"], t["attempts"]) for t in claimed} == {
        ("In Progress", "sql-1", 1)
    }
    assert claimed[0]["heartbeat_at"] == claimed[0]["generation_started_at"] is not None
    # Nothing else is ready: the waiting tasks wait on these.
    assert call(service, "SELECT * FROM dualdb.claim_tasks('sql-2')") == []

    (beat,) = call(service, "SELECT * FROM dualdb.heartbeat_task(%s, 'sql-1')", a.task)
    assert beat["heartbeat_at"] > claimed[0]["heartbeat_at"]
    done = {}
    for key in (a.task, b.task):
        (done[key],) = call(
            service, "SELECT * FROM dualdb.complete_task(%s, 'sql-1', %s)", key, f"out/{key}"
        )
        assert (done[key]["status"], done[key]["output_location"]) == ("Complete", f"out/{key}")
    # A lost reply, the same call again: the task unchanged.
    (again,) = call(
        service, "SELECT * FROM dualdb.complete_task(%s, 'sql-1', %s)", a.task, f"out/{a.task}"
    )
    assert again == done[a.task]

    # The database released the dependents; a worker of another type takes them.
    waiting = call(service, "SELECT * FROM dualdb.claim_tasks('sql-2', ARRAY['travel_stitch'], 5)")
    assert {t["id"] for t in waiting} == {a.waiting_task, b.waiting_task}
    # A retry puts it back Queued (attempts left); without one, it is Failed.
    (retried,) = call(
        service,
        "SELECT * FROM dualdb.fail_task(%s, 'sql-2', 'GPU lost', retry => true)",
        a.waiting_task,
    )
    assert (retried["status"], retried["worker_id"], retried["error"]) == (
        "Queued",
        None,
        "GPU lost",
    )
    (failed,) = call(
        service, "SELECT * FROM dualdb.fail_task(%s, 'sql-2', 'bad input')", b.waiting_task
    )
    assert (failed["status"], failed["error"]) == ("Failed", "bad input")
    # Given back without using up an attempt.
    (again_claimed,) = call(service, "SELECT * FROM dualdb.claim_tasks('sql-3')")
    assert (again_claimed["id"], again_claimed["attempts"]) == (a.waiting_task, 2)
    (released,) = call(service, "SELECT * FROM dualdb.release_claim(%s, 'sql-3')", a.waiting_task)
    assert (released["status"], released["attempts"]) == ("Queued", 1)

    # A worker that stops heartbeating: its task is requeued, then Failed when out of attempts.
    call(service, "SELECT * FROM dualdb.claim_tasks('gone')")
    (requeued,) = call(service, "SELECT * FROM dualdb.requeue_stale(interval '0 seconds')")
    assert (requeued["id"], requeued["status"], requeued["error"]) == (
        a.waiting_task,
        "Queued",
        "requeued: worker gone stopped heartbeating",
    )
    call(service, "SELECT * FROM dualdb.claim_tasks('gone')")
    (gave_up,) = call(service, "SELECT * FROM dualdb.requeue_stale(interval '0 seconds', 1)")
    assert (gave_up["status"], gave_up["error"]) == (
        "Failed",
        "failed after 3 attempts: worker gone stopped heartbeating",
    )


def test_a_failure_found_stale_returns_the_dependents_it_cancelled(
    service: Conn, owners: Owners
) -> None:
    waits_on = {owners.a.task: owners.a.waiting_task, owners.b.task: owners.b.waiting_task}
    call(service, "SELECT * FROM dualdb.claim_tasks('gone', ARRAY['single_image'], 2)")
    changed = call(service, "SELECT * FROM dualdb.requeue_stale(interval '0 seconds', 1)")
    first, second = changed[0]["id"], changed[2]["id"]
    assert {first, second} == set(waits_on)
    # Each task found stale, then the dependents its failure cancelled.
    assert [(t["id"], t["status"]) for t in changed] == [
        (first, "Failed"),
        (waits_on[first], "Cancelled"),
        (second, "Failed"),
        (waits_on[second], "Cancelled"),
    ]


def test_refusals_carry_a_stable_sqlstate_and_message(service: Conn, owners: Owners) -> None:
    a = owners.a
    ghost = uuid.uuid4()
    assert refusal(service, "SELECT dualdb.complete_task(%s, 'w', 'x')", ghost) == (
        "PT404",
        f"task {ghost} not found",
    )
    assert refusal(service, "SELECT dualdb.heartbeat_task(%s, 'w')", a.task) == (
        "23000",
        f"conflict: cannot heartbeat task {a.task}: it is Queued, not In Progress",
    )
    call(service, "SELECT * FROM dualdb.claim_tasks('w1', ARRAY['single_image'], 2)")
    assert refusal(service, "SELECT dualdb.fail_task(%s, 'w2', 'no')", a.task) == (
        "23000",
        f"conflict: cannot fail task {a.task}: it is claimed by another worker",
    )
    assert refusal(service, "SELECT dualdb.complete_task(%s, 'w1', '  ')", a.task) == (
        "22023",
        "invalid output_location: must not be empty",
    )
    for sql, message in {
        "SELECT dualdb.claim_tasks(' ')": "invalid worker_id: must not be empty",
        "SELECT dualdb.claim_tasks('w', '{}')": "invalid task_types: must name at least one type",
        "SELECT dualdb.claim_tasks('w', NULL, 0)": "invalid max_tasks: must be at least 1",
        "SELECT dualdb.claim_tasks('w', NULL, 1001)": "invalid max_tasks: must be at most 1000",
        "SELECT dualdb.requeue_stale(interval '-1 second')": "invalid older_than: must be a non-",
        "SELECT dualdb.requeue_stale(interval '36501 days')": "invalid older_than: must be at most",
        "SELECT dualdb.claim_tasks(repeat('w', 201))": "invalid worker_id: must be at most 200",
    }.items():
        code, said = refusal(service, sql)
        assert (code, said[: len(message)]) == ("22023", message), sql
    (task,) = call(service, "SELECT status, worker_id FROM tasks WHERE id = %s", a.task)
    assert task == {"status": "In Progress", "worker_id": "w1"}  # nothing refused changed it


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_no_other_api_role_may_run_the_workers_verbs(
    postgrest: Api, owners: Owners, role: str
) -> None:
    with psycopg.connect(postgrest.db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, false)",
            (json.dumps({"sub": str(owners.a.user), "role": role}),),
        )
        conn.execute(f"SET ROLE {role}")
        code, _ = refusal(conn, "SELECT * FROM dualdb.claim_tasks('me')")
        assert code == "42501"
        conn.execute("RESET ROLE")
        (task,) = call(conn, "SELECT status FROM tasks WHERE id = %s", owners.a.task)
        assert task == {"status": "Queued"}


def test_the_workers_verbs_are_not_in_the_api(postgrest: Api, owners: Owners) -> None:
    """PostgREST exposes the front end's verbs only; the workers' stay out of its schema."""
    for token in (postgrest.service_token(), postgrest.user_token(owners.a.user)):
        reply = postgrest.rpc("claim_tasks", {"worker_id": "edge"}, token=token)
        assert reply.status == 404 and reply.code == "PGRST202", reply
    assert postgrest.get("tasks", token=postgrest.service_token(), params={
        "status": "eq.In Progress"}).body == []  # fmt: skip
