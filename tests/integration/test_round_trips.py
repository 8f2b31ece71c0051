"""The statements a single-row call sends, and the verdicts left to the database's keys.

A get is one ``SELECT``; an update is one ``UPDATE … RETURNING`` and a create one ``INSERT …
RETURNING``, each its own transaction (no ``BEGIN``/``COMMIT``) — no ping, no pre-check, no
read-back.  A missing parent is then the foreign key's violation, reported as the same
``NotFound`` (same words) the pre-check gave, on both backends.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

import dualdb
from dualdb.errors import NotFound
from tests.integration.driver_trace import driver_statements, pg_round_trips


def test_single_row_calls_are_one_statement(db: dualdb.Database) -> None:
    """Not even BEGIN or COMMIT: one statement is a transaction of its own."""
    user = db.users.create(email="rt@example.invalid")
    project = db.projects.create("one", user.id)
    gone = db.projects.create("gone", user.id)
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: db.projects.get(project.id), "SELECT"),
        (lambda: db.projects.update(project.id, name="two"), "UPDATE projects"),
        (lambda: db.projects.create("three", user.id), "INSERT INTO projects"),
        (lambda: db.shots.create(project.id, "s"), "INSERT INTO shots"),
        (lambda: db.projects.delete(gone.id), "DELETE FROM projects"),
    ]
    for call, start in calls:
        with driver_statements(db) as seen:
            call()
        # SQLite's trace callback repeats a statement for each trigger program it runs
        # (a project's delete cascades): still the one statement, and nothing else.
        assert seen and all(s.startswith(start) for s in seen), seen
        assert len(set(seen)) == 1, seen
    assert db.projects.get(project.id).name == "two"
    assert db.projects.find(gone.id) is None


@pytest.mark.postgres_only
def test_single_row_writes_and_queue_verbs_are_one_round_trip(db: dualdb.Database) -> None:
    """On Postgres every worker verb is one function call, sent as one statement."""
    user = db.users.create()
    project = db.projects.create("p", user.id)
    first = db.tasks.create(project.id, "render", {})
    db.tasks.create(project.id, "render", {}, depends_on=[first.id], status="Pending")
    calls: list[Callable[[], object]] = [
        lambda: db.projects.update(project.id, name="q"),
        lambda: db.tasks.claim("w1"),
        lambda: db.tasks.heartbeat(first.id, "w1"),
        lambda: db.tasks.complete(first.id, "w1", "files/a.mp4"),
    ]
    for call in calls:
        with pg_round_trips(db) as trips:
            call()
        assert trips == [1]
    assert db.tasks.get(first.id).status == "Complete"


def test_a_missing_parent_reads_as_before(db: dualdb.Database) -> None:
    user = db.users.create()
    project = db.projects.create("p", user.id)
    nobody, nothing = uuid.uuid4(), uuid.uuid4()
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: db.projects.create("p", nobody), f"user {nobody} not found"),
        (lambda: db.shots.create(nothing, "s"), f"project {nothing} not found"),
        (lambda: db.generations.create(nothing), f"project {nothing} not found"),
    ]
    # Several parents: still checked in one query, the first missing one (in id order) named.
    a, b = sorted([uuid.uuid4(), uuid.uuid4()], key=str)
    rows = [{"project_id": b, "name": "x"}, {"project_id": a, "name": "y"}]
    cases.append((lambda: db.shots.create_many(rows), f"project {a} not found"))
    for call, message in cases:
        with pytest.raises(NotFound) as err:
            call()
        assert str(err.value) == message
    assert db.shots.count() == 0 and db.projects.count() == 1

    # In a session the failed call leaves nothing and the session goes on.
    with db.session() as s:
        with pytest.raises(NotFound, match=f"project {nothing} not found"):
            s.shots.create(nothing, "s")
        s.shots.create(project.id, "kept")
    assert [x.name for x in db.shots.list().items] == ["kept"]


@pytest.mark.postgres_only
def test_a_users_call_sets_its_actor_in_one_round_trip(db: dualdb.Database) -> None:
    """Under RLS a call sets the claims, the role and the role's timeouts after ``BEGIN``:
    three statements, sent together (psycopg's pipeline mode)."""
    user = db.users.create()
    project = db.projects.create("mine", user.id)
    mine = db.as_user(user.id)
    with driver_statements(db) as seen:
        assert mine.projects.get(project.id).name == "mine"
    assert [s.split(" ", 1)[0] for s in seen] == [
        "BEGIN",
        "SELECT",
        "SET",
        "SELECT",
        "SELECT",
        "COMMIT",
    ], seen
    assert (
        "set_config('request.jwt.claims'" in seen[1] and seen[2] == "SET LOCAL ROLE authenticated"
    )
    with pg_round_trips(db) as trips:
        mine.projects.get(project.id)
    # BEGIN; claims + role + timeouts; the SELECT; COMMIT.
    assert trips == [4]
