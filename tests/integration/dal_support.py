"""Helpers shared by the data-access-layer tests (not a test module itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

import dualdb
from dualdb.records import Generation, Project, Shot, Task, User
from dualdb.schema import TABLES

#: One table's rows, each a tuple of column values, sorted by primary key.
TableRows = list[tuple[Any, ...]]


def snapshot(db: dualdb.Database) -> dict[str, TableRows]:
    """Every row of every table, read straight from the database (not through the DAL)."""
    out: dict[str, TableRows] = {}
    with db.engine.connect() as conn:
        for table in TABLES:
            rows = conn.execute(sa.select(table)).all()
            key = [c.name for c in table.primary_key]
            out[table.name] = sorted(
                (tuple(r) for r in rows),
                key=lambda r, t=table, k=key: tuple(str(r[t.c.keys().index(c)]) for c in k),
            )
    return out


def assert_unchanged(
    db: dualdb.Database, action: Callable[[], object], error: type[Exception], field: str | None
) -> Exception:
    """Run ``action``; it must raise ``error`` (naming ``field``) and change no row at all."""
    before = snapshot(db)
    try:
        action()
    except error as exc:
        caught: Exception = exc
    else:
        raise AssertionError(f"expected {error.__name__}, but the call succeeded")
    if field is not None:
        assert getattr(caught, "field", None) == field, f"{caught!r} should name {field!r}"
        assert field in str(caught), f"the message of {caught!r} should name {field!r}"
    assert snapshot(db) == before, f"{caught!r} left a partial write behind"
    return caught


@dataclass
class World:
    """A small, realistic data set: two users, each with a project holding a shot and a task."""

    user: User
    other_user: User
    project: Project
    other_project: Project
    shot: Shot
    task: Task
    other_task: Task
    generation: Generation


def build_world(db: dualdb.Database) -> World:
    """Create a :class:`World` in ``db``."""
    with db.session() as s:
        user = s.users.create(email="owner@example.com")
        other_user = s.users.create(email="other@example.com")
        project = s.projects.create("Main", user.id)
        other_project = s.projects.create("Elsewhere", other_user.id)
        shot = s.shots.create(project.id, "Opening")
        task = s.tasks.enqueue(project.id, "single_image", {"prompt": "a cat"})
        other_task = s.tasks.enqueue(other_project.id, "single_image", {"prompt": "a dog"})
        generation = s.generations.create(project.id, location="files/a.png", tasks=[task.id])
    return World(user, other_user, project, other_project, shot, task, other_task, generation)
