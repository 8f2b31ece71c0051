"""Helpers for the copy/dump/load tests (not a test module itself)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import dualdb
from dualdb import schema
from dualdb.schema import DUMMY_USER_ID
from dualdb.seed import seed, seed_id
from dualdb.types import JSON_NULL
from tests.conftest import PgServer, _create_database, _drop_database, _require_pg
from tests.integration.dal_support import TableRows, snapshot

#: Every direction a copy can go; a run that touches Postgres is marked so the summary
#: counts it (and it can never be skipped green: conftest fails it under CI).
DIRECTIONS = [
    pytest.param(("sqlite", "sqlite"), id="sqlite-to-sqlite"),
    pytest.param(("sqlite", "postgresql"), id="sqlite-to-postgres", marks=pytest.mark.postgres),
    pytest.param(("postgresql", "sqlite"), id="postgres-to-sqlite", marks=pytest.mark.postgres),
    pytest.param(
        ("postgresql", "postgresql"), id="postgres-to-postgres", marks=pytest.mark.postgres
    ),
]
#: Writing into each backend (from SQLite).
TARGETS = [
    pytest.param("sqlite", id="into-sqlite"),
    pytest.param("postgresql", id="into-postgres", marks=pytest.mark.postgres),
]

MakeDb = Callable[[str], str]


@pytest.fixture
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeDb]:
    """``fresh(kind)``: the URL of a new database at the migration head on ``kind``."""
    made: list[str] = []
    server: PgServer | None = None

    def make(kind: str) -> str:
        nonlocal server
        if kind == "sqlite":
            path = tmp_path / f"{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
            return f"sqlite:///{path}"
        server = request.getfixturevalue("pg_server")
        assert server is not None
        _require_pg(server)
        template = request.getfixturevalue("pg_template")
        name = _create_database(server, template=template)
        made.append(name)
        return server.url_for(name)

    yield make
    for name in made:
        assert server is not None
        _drop_database(server, name)


def ordered(value: Any) -> Any:
    """``value`` with every dict as its list of items, so key order is compared too."""
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [ordered(v) for v in value]
    if value is JSON_NULL:
        return "<JSON null>"
    return value


def content(db: dualdb.Database) -> dict[str, TableRows]:
    """Every row of every table, decoded by the schema's types, JSON key order included."""
    return {t: [tuple(ordered(list(r))) for r in rows] for t, rows in snapshot(db).items()}


PARAMS_EXOTIC: dict[str, Any] = {
    "zeta": 1,
    "alpha": [1.5, 2**70, -0.0, 1e-7, 123456789.125, None, True, {"nested": None}],
    "unicode": 'héllo ✓ \u2028 "quoted" \\ back',
    "empty": {},
    "list": [],
    "big_float": 1.5e300,
}


def populate(db: dualdb.Database) -> uuid.UUID:
    """The seed, plus a second user's project whose tasks have every status and exotic
    values; returns the second project's id."""
    seed(db, allow_remote=True)
    with db.session() as s:
        owner = s.users.create(email=None)
        project = s.projects.create("Exotic ☃", owner.id)
        shot = s.shots.create(project.id, "Only")
        a = s.tasks.enqueue(project.id, "exotic_a", {**PARAMS_EXOTIC, "shot_id": str(shot.id)})
        b = s.tasks.enqueue(project.id, "exotic_b", {"n": 2}, depends_on=[a.id])
        s.tasks.enqueue(project.id, "stitch", {"n": 3}, depends_on=[a.id, b.id])
        s.tasks.enqueue(project.id, "held", {"n": 4}, status="Pending")
        doomed = s.tasks.enqueue(project.id, "doomed", {"n": 5})
        s.tasks.enqueue(project.id, "after_doomed", {"n": 6}, depends_on=[doomed.id])
        s.generations.create(project.id, location=None, type=None, tasks=[])
    queue = db.tasks
    # a completes (the database makes its generation and places it), doomed fails (which
    # cancels after_doomed), b is left running; the seed's first task completes too.
    for worker, kind, then in (
        ("w1", "exotic_a", "complete"),
        ("w1", "doomed", "fail"),
        ("w3", "single_image", "complete"),
        ("w2", "exotic_b", "run"),
    ):
        task = queue.claim(worker, [kind])
        assert task is not None, kind
        if then == "complete":
            queue.complete(task.id, worker, f"files/{kind}.png")
        elif then == "fail":
            queue.fail(task.id, worker, "boom")
    assert b.id == task.id
    return project.id


SEED_PROJECT = seed_id("project")
SEED_USER = uuid.UUID(DUMMY_USER_ID)


def rename_project(db: dualdb.Database, project: uuid.UUID, name: str) -> None:
    """Rename ``project`` straight in the database (as another writer would)."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(schema.projects).where(schema.projects.c.id == project).values(name=name)
        )
