"""Shots, and the ordered generations placed on them (``shot_generations``).

The positions themselves are kept by :class:`~dualdb.repositories.placements.Placements`
(dense ``0 … n-1``, every change under the shot's lock); these repositories validate input and
read.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.records import Generation, Page, Shot, ShotGeneration
from dualdb.repositories.base import (
    DEFAULT_BATCH,
    DEFAULT_LIMIT,
    Repository,
    key_or_new,
    utcnow,
)
from dualdb.repositories.placements import Placements
from dualdb.schema import generations, shot_generations, shots
from dualdb.scope import Scope
from dualdb.unset import UNSET, Unset


class ShotsRepository(Repository[Shot]):
    """Create, read, update and delete ``shots``; place generations on them in order."""

    table = shots
    record = Shot
    entity = "shot"
    filterable = frozenset({"project_id"})
    fields = frozenset({"id", "project_id", "name"})
    plain_create = True
    parent = ("project_id", "project")

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope)
        self._placements = Placements(scope)

    def _visible(self) -> sa.ColumnElement[bool] | None:
        owned = self._owned_projects()
        return None if owned is None else shots.c.project_id.in_(owned)

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": key_or_new(row.get("id")),
            "project_id": v.uuid_("project_id", row.get("project_id")),
            "name": v.name("name", row.get("name")),
            "created_at": utcnow(),
            "updated_at": None,
        }

    def create(
        self, project_id: uuid.UUID | str, name: str, *, id: uuid.UUID | str | None = None
    ) -> Shot:
        """Add a shot to a project; ``id`` defaults to a UUIDv7."""
        return self._create({"id": id, "project_id": project_id, "name": name})

    def list(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[Shot]:
        """Shots in creation order, one page at a time."""
        return self._list({"project_id": project_id, **unknown}, limit, cursor)

    def iter(
        self,
        *,
        project_id: uuid.UUID | str | None = None,
        batch_size: int = DEFAULT_BATCH,
        **unknown: Never,
    ) -> Iterator[Shot]:
        """Every matching shot, streamed in batches."""
        return self._iter({"project_id": project_id, **unknown}, batch_size)

    def update(self, id: uuid.UUID | str, *, name: str | Unset = UNSET) -> Shot:
        """Rename the shot."""
        key = v.uuid_("id", id)
        values: dict[str, Any] = {}
        if not isinstance(name, Unset):
            values["name"] = v.name("name", name)
        return self._update(key, values) if values else self.get(key)

    # --- placements (dualdb.repositories.placements owns the positions) -------------------

    def add_generation(
        self,
        shot_id: uuid.UUID | str,
        generation_id: uuid.UUID | str,
        position: int | None = None,
    ) -> ShotGeneration:
        """Place a generation on the shot at ``position`` (None appends; later ones shift).

        The generation must belong to the shot's project and not already be on the shot.
        """
        sid = v.uuid_("shot_id", shot_id)
        gid = v.uuid_("generation_id", generation_id)
        pos = None if position is None else v.non_negative_int("position", position)
        return self._placements.add(sid, gid, pos)

    def move_generation(
        self, shot_id: uuid.UUID | str, generation_id: uuid.UUID | str, position: int
    ) -> builtins.list[ShotGeneration]:
        """Move a placed generation to ``position`` (clamped to the end); returns the new order."""
        sid = v.uuid_("shot_id", shot_id)
        gid = v.uuid_("generation_id", generation_id)
        return self._placements.move(sid, gid, v.non_negative_int("position", position))

    def remove_generation(
        self, shot_id: uuid.UUID | str, generation_id: uuid.UUID | str
    ) -> builtins.list[ShotGeneration]:
        """Take a generation off the shot (the generation itself stays); returns the new order."""
        sid = v.uuid_("shot_id", shot_id)
        return self._placements.remove(sid, v.uuid_("generation_id", generation_id))

    def reorder(
        self, shot_id: uuid.UUID | str, generation_ids: Sequence[uuid.UUID | str]
    ) -> builtins.list[ShotGeneration]:
        """Set the whole order at once: ``generation_ids`` must be exactly the placed ones."""
        sid = v.uuid_("shot_id", shot_id)
        wanted = [v.uuid_(f"generation_ids[{i}]", g) for i, g in enumerate(generation_ids)]
        return self._placements.reorder(sid, wanted)

    def placements(self, shot_id: uuid.UUID | str) -> builtins.list[ShotGeneration]:
        """The shot's placements in position order."""
        sid = v.uuid_("shot_id", shot_id)
        self.get(sid)
        return self._scope.fetch(lambda conn: self._placements.current(conn, sid))

    def generations(self, shot_id: uuid.UUID | str) -> builtins.list[Generation]:
        """The generations on the shot, in position order."""
        sid = v.uuid_("shot_id", shot_id)
        self.get(sid)
        stmt = (
            sa.select(generations)
            .join(shot_generations, shot_generations.c.generation_id == generations.c.id)
            .where(shot_generations.c.shot_id == sid)
            .order_by(shot_generations.c.position, shot_generations.c.id)
        )
        rows = self._scope.fetch(lambda conn: conn.execute(stmt).all())
        return [Generation.from_row(r) for r in rows]


class ShotGenerationsRepository(Repository[ShotGeneration]):
    """Read the ``shot_generations`` join table; change it through :class:`ShotsRepository`."""

    table = shot_generations
    record = ShotGeneration
    entity = "shot generation"
    filterable = frozenset({"shot_id", "generation_id"})
    order_by = ("shot_id", "position", "id")

    def _visible(self) -> sa.ColumnElement[bool] | None:
        owned = self._owned_projects()
        if owned is None:
            return None
        mine = sa.select(shots.c.id).where(shots.c.project_id.in_(owned))
        return shot_generations.c.shot_id.in_(mine)

    def list(
        self,
        *,
        shot_id: uuid.UUID | str | None = None,
        generation_id: uuid.UUID | str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[ShotGeneration]:
        """Placements ordered by shot, then position."""
        return self._list(
            {"shot_id": shot_id, "generation_id": generation_id, **unknown}, limit, cursor
        )

    def iter(
        self,
        *,
        shot_id: uuid.UUID | str | None = None,
        generation_id: uuid.UUID | str | None = None,
        batch_size: int = DEFAULT_BATCH,
        **unknown: Never,
    ) -> Iterator[ShotGeneration]:
        """Every matching placement, streamed in batches."""
        return self._iter(
            {"shot_id": shot_id, "generation_id": generation_id, **unknown}, batch_size
        )

    def delete(self, id: uuid.UUID | str) -> None:
        """Remove a placement; the shot's remaining positions close up."""
        with self._scope.write():
            placement = self.get(id)
            Placements(self._scope).remove(placement.shot_id, placement.generation_id)
