"""Shots, and the ordered generations placed on them (``shot_generations``).

Positions on a shot are always dense: ``0 … n-1``, each used once.  Every placement change
first locks the shot (``SELECT … FOR UPDATE`` on Postgres; SQLite's ``BEGIN IMMEDIATE`` write
lock does the same), so concurrent edits of one shot serialise instead of interleaving.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from dualdb.records import Generation, Page, Shot, ShotGeneration
from dualdb.repositories.base import (
    DEFAULT_BATCH,
    DEFAULT_LIMIT,
    Repository,
    key_or_new,
    new_id,
    utcnow,
)
from dualdb.schema import generations, shot_generations, shots
from dualdb.unset import UNSET, Unset


class ShotsRepository(Repository[Shot]):
    """Create, read, update and delete ``shots``; place generations on them in order."""

    table = shots
    record = Shot
    entity = "shot"
    filterable = frozenset({"project_id"})

    def _visible(self) -> sa.ColumnElement[bool] | None:
        owned = self._owned_projects()
        return None if owned is None else shots.c.project_id.in_(owned)

    def _values(self, project_id: object, name: object, id: object = None) -> dict[str, Any]:
        return {
            "id": key_or_new(id),
            "project_id": v.uuid_("project_id", project_id),
            "name": v.name("name", name),
            "created_at": utcnow(),
            "updated_at": None,
        }

    def create(
        self, project_id: uuid.UUID | str, name: str, *, id: uuid.UUID | str | None = None
    ) -> Shot:
        """Add a shot to a project; ``id`` defaults to a UUIDv7."""
        values = self._values(project_id, name, id)
        with self._scope.write() as conn:
            self._require_project(conn, "project_id", values["project_id"])
            return self._insert(conn, [values])[0]

    def create_many(self, rows: Sequence[Mapping[str, Any]]) -> builtins.list[Shot]:
        """Add many shots in one statement batch (all or none)."""
        checked = self._rows(rows, frozenset({"id", "project_id", "name"}))
        values = [self._values(r.get("project_id"), r.get("name"), r.get("id")) for r in checked]
        if not values:
            return []
        with self._scope.write() as conn:
            for project_id in sorted({x["project_id"] for x in values}, key=str):
                self._require_project(conn, "project_id", project_id)
            return self._insert(conn, values)

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

    # --- placements ------------------------------------------------------------------------

    def _lock(self, conn: sa.Connection, shot_id: uuid.UUID) -> uuid.UUID:
        """Check the shot is writable, lock it, and return its project id."""
        project_id = self._require_shot(conn, "shot_id", shot_id)
        if self._scope.backend.row_locks:
            conn.execute(sa.select(shots.c.id).where(shots.c.id == shot_id).with_for_update())
        return project_id

    def _placements(self, conn: sa.Connection, shot_id: uuid.UUID) -> builtins.list[ShotGeneration]:
        rows = conn.execute(
            sa.select(shot_generations)
            .where(shot_generations.c.shot_id == shot_id)
            .order_by(shot_generations.c.position, shot_generations.c.id)
        ).all()
        return [ShotGeneration.from_row(r) for r in rows]

    def _write_positions(
        self, conn: sa.Connection, ordered: Sequence[ShotGeneration]
    ) -> builtins.list[ShotGeneration]:
        out: builtins.list[ShotGeneration] = []
        changed: list[dict[str, Any]] = []
        for position, placement in enumerate(ordered):
            if placement.position != position:
                changed.append({"pid": placement.id, "pos": position})
            out.append(
                ShotGeneration(placement.id, placement.shot_id, placement.generation_id, position)
            )
        if changed:
            # Two passes so no intermediate state reuses a position (keeps any future
            # UNIQUE(shot_id, position) constraint satisfiable).
            stmt = (
                shot_generations.update()
                .where(shot_generations.c.id == sa.bindparam("pid"))
                .values(position=sa.bindparam("pos"))
            )
            conn.execute(stmt, [{"pid": c["pid"], "pos": -1 - c["pos"]} for c in changed])
            conn.execute(stmt, changed)
        return out

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
        with self._scope.write() as conn:
            project_id = self._lock(conn, sid)
            owned = self._owned_projects()
            gen_project = conn.execute(
                sa.select(generations.c.project_id).where(
                    generations.c.id == gid,
                    *([] if owned is None else [generations.c.project_id.in_(owned)]),
                )
            ).scalar()
            if gen_project is None and owned is not None:
                raise PermissionDenied(f"generation_id: generation {gid} is not yours")
            if gen_project is None:
                raise NotFound(f"generation {gid} not found")
            if gen_project != project_id:
                raise InvalidInput("generation_id", "belongs to another project than the shot")
            current = self._placements(conn, sid)
            if any(p.generation_id == gid for p in current):
                raise Conflict(f"generation {gid} is already on shot {sid}")
            placement = ShotGeneration(new_id(), sid, gid, len(current))
            conn.execute(shot_generations.insert().values(**placement.as_dict()))
            at = len(current) if pos is None else min(pos, len(current))
            ordered = [*current[:at], placement, *current[at:]]
            result = self._write_positions(conn, ordered)
        return result[at]

    def move_generation(
        self, shot_id: uuid.UUID | str, generation_id: uuid.UUID | str, position: int
    ) -> builtins.list[ShotGeneration]:
        """Move a placed generation to ``position`` (clamped to the end); returns the new order."""
        sid = v.uuid_("shot_id", shot_id)
        gid = v.uuid_("generation_id", generation_id)
        pos = v.non_negative_int("position", position)
        with self._scope.write() as conn:
            self._lock(conn, sid)
            current = self._placements(conn, sid)
            moving = next((p for p in current if p.generation_id == gid), None)
            if moving is None:
                raise NotFound(f"generation {gid} is not on shot {sid}")
            rest = [p for p in current if p.id != moving.id]
            at = min(pos, len(rest))
            return self._write_positions(conn, [*rest[:at], moving, *rest[at:]])

    def remove_generation(
        self, shot_id: uuid.UUID | str, generation_id: uuid.UUID | str
    ) -> builtins.list[ShotGeneration]:
        """Take a generation off the shot (the generation itself stays); returns the new order."""
        sid = v.uuid_("shot_id", shot_id)
        gid = v.uuid_("generation_id", generation_id)
        with self._scope.write() as conn:
            self._lock(conn, sid)
            current = self._placements(conn, sid)
            gone = [p for p in current if p.generation_id == gid]
            if not gone:
                raise NotFound(f"generation {gid} is not on shot {sid}")
            conn.execute(shot_generations.delete().where(shot_generations.c.id == gone[0].id))
            return self._write_positions(conn, [p for p in current if p.id != gone[0].id])

    def reorder(
        self, shot_id: uuid.UUID | str, generation_ids: Sequence[uuid.UUID | str]
    ) -> builtins.list[ShotGeneration]:
        """Set the whole order at once: ``generation_ids`` must be exactly the placed ones."""
        sid = v.uuid_("shot_id", shot_id)
        wanted = [v.uuid_(f"generation_ids[{i}]", g) for i, g in enumerate(generation_ids)]
        with self._scope.write() as conn:
            self._lock(conn, sid)
            current = self._placements(conn, sid)
            by_gen = {p.generation_id: p for p in current}
            if len(wanted) != len(set(wanted)) or set(wanted) != set(by_gen):
                raise InvalidInput(
                    "generation_ids", "must list each generation on the shot exactly once"
                )
            return self._write_positions(conn, [by_gen[g] for g in wanted])

    def placements(self, shot_id: uuid.UUID | str) -> builtins.list[ShotGeneration]:
        """The shot's placements in position order."""
        sid = v.uuid_("shot_id", shot_id)
        self.get(sid)
        with self._scope.read(single_statement=True) as conn:
            return self._placements(conn, sid)

    def generations(self, shot_id: uuid.UUID | str) -> builtins.list[Generation]:
        """The generations on the shot, in position order."""
        sid = v.uuid_("shot_id", shot_id)
        self.get(sid)
        with self._scope.read(single_statement=True) as conn:
            rows = conn.execute(
                sa.select(generations)
                .join(shot_generations, shot_generations.c.generation_id == generations.c.id)
                .where(shot_generations.c.shot_id == sid)
                .order_by(shot_generations.c.position, shot_generations.c.id)
            ).all()
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
            ShotsRepository(self._scope).remove_generation(
                placement.shot_id, placement.generation_id
            )
