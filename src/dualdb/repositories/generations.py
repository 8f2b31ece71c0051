"""Generations: outputs (images, videos) made by tasks, placed on shots."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.backends.constructs import array_contains
from dualdb.errors import InvalidInput
from dualdb.records import Generation, Page
from dualdb.repositories.base import DEFAULT_BATCH, DEFAULT_LIMIT, Repository, key_or_new, utcnow
from dualdb.repositories.placements import Placements
from dualdb.schema import generations, shot_generations, tasks
from dualdb.unset import UNSET, Unset

MAX_TYPE = 100


class GenerationsRepository(Repository[Generation]):
    """Create, read, update and delete ``generations``."""

    table = generations
    record = Generation
    entity = "generation"
    filterable = frozenset({"project_id", "type"})
    fields = frozenset({"id", "project_id", "location", "type", "tasks"})
    parent = ("project_id", "project")

    def _parent_left_to_database(self, values: builtins.list[dict[str, Any]]) -> bool:
        # The task check below needs the project to exist (its verdict would come first).
        return not any(x["tasks"] for x in values) and super()._parent_left_to_database(values)

    def _visible(self) -> sa.ColumnElement[bool] | None:
        owned = self._owned_projects()
        return None if owned is None else generations.c.project_id.in_(owned)

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": key_or_new(row.get("id")),
            "project_id": v.uuid_("project_id", row.get("project_id")),
            "tasks": v.uuid_list("tasks", row.get("tasks", ())),
            "location": v.optional_text("location", row.get("location"), max_len=v.MAX_LOCATION),
            "type": v.optional_text("type", row.get("type"), max_len=MAX_TYPE),
            "created_at": utcnow(),
            "updated_at": None,
        }

    def _require_tasks(
        self, conn: sa.Connection, project_id: uuid.UUID, task_ids: list[uuid.UUID]
    ) -> None:
        if not task_ids:
            return
        found = set(
            conn.execute(
                sa.select(tasks.c.id).where(
                    tasks.c.id.in_(task_ids), tasks.c.project_id == project_id
                )
            ).scalars()
        )
        missing = [t for t in task_ids if t not in found]
        if missing:
            raise InvalidInput("tasks", f"task {missing[0]} does not exist in this project")

    def create(
        self,
        project_id: uuid.UUID | str,
        *,
        location: str | None = None,
        type: str | None = None,
        tasks: Sequence[uuid.UUID | str] = (),
        id: uuid.UUID | str | None = None,
    ) -> Generation:
        """Add a generation to a project; ``tasks`` must be tasks of the same project."""
        row = {"id": id, "project_id": project_id, "location": location, "type": type}
        return self.create_many([{**row, "tasks": tasks}])[0]

    def _check_new(self, conn: sa.Connection, values: builtins.list[dict[str, Any]]) -> None:
        super()._check_new(conn, values)
        for x in values:
            self._require_tasks(conn, x["project_id"], x["tasks"])

    def list(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        type: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[Generation]:
        """Generations in creation order, one page at a time."""
        return self._list({"project_id": project_id, "type": type, **unknown}, limit, cursor)

    def iter(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        type: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        **unknown: Never,
    ) -> Iterator[Generation]:
        """Every matching generation, streamed in batches."""
        return self._iter({"project_id": project_id, "type": type, **unknown}, batch_size)

    def for_task(self, task_id: uuid.UUID | str) -> builtins.list[Generation]:
        """The generations a task contributed to (``task_id`` in their ``tasks``), oldest first."""
        tid = v.uuid_("task_id", task_id)
        stmt = (
            sa.select(generations)
            .where(*self._where(array_contains(generations.c.tasks, tid)))
            .order_by(generations.c.created_at, generations.c.id)
        )
        rows = self._scope.fetch(lambda conn: conn.execute(stmt).all())
        return [Generation.from_row(r) for r in rows]

    def update(
        self,
        id: uuid.UUID | str,
        *,
        location: str | Unset | None = UNSET,
        type: str | Unset | None = UNSET,
        tasks: Sequence[uuid.UUID | str] | Unset = UNSET,
    ) -> Generation:
        """Change location, type or the contributing tasks."""
        key = v.uuid_("id", id)
        values: dict[str, Any] = {}
        if not isinstance(location, Unset):
            values["location"] = v.optional_text("location", location, max_len=v.MAX_LOCATION)
        if not isinstance(type, Unset):
            values["type"] = v.optional_text("type", type, max_len=MAX_TYPE)
        if not isinstance(tasks, Unset):
            values["tasks"] = v.uuid_list("tasks", tasks)
        if not values:
            return self.get(key)
        with self._scope.write() as conn:
            if "tasks" in values:
                self._check_writable(conn, key)
                current = self.get(key)
                self._require_tasks(conn, current.project_id, values["tasks"])
            return self._update(key, values)

    def delete(self, id: uuid.UUID | str) -> None:
        """Delete the generation; it leaves every shot it was on, whose positions close up."""
        key = v.uuid_("id", id)
        placements = Placements(self._scope)
        with self._scope.write() as conn:
            self._check_writable(conn, key)
            on = conn.execute(
                sa.select(shot_generations.c.shot_id).where(shot_generations.c.generation_id == key)
            ).scalars()
            shot_ids = placements.lock_all(conn, on)
            super().delete(key)
            placements.close_up(conn, shot_ids)
