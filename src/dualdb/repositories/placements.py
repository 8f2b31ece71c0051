"""Shot positions: the one owner of ``shot_generations`` writes in Python.

Positions on a shot are always dense: ``0 … n-1``, each used once.  Every change first locks
the shot (``SELECT … FOR UPDATE`` where the backend has row locks; SQLite's ``BEGIN
IMMEDIATE`` write lock does the same), so concurrent edits of one shot serialise instead of
interleaving.  Shots, generations and the join table's repository all change positions through
:class:`Placements`, which acts as their scope's user.  (The database itself places the
generation a completed shot task makes, last on the shot: migration 0006.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from dualdb.access import owned_projects, require_shot
from dualdb.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from dualdb.records import ShotGeneration
from dualdb.repositories.base import new_id
from dualdb.schema import generations, shot_generations, shots
from dualdb.scope import Scope

#: Rewrites a shot's positions, one row per parameter set.
_SET_POSITION = (
    shot_generations.update()
    .where(shot_generations.c.id == sa.bindparam("pid"))
    .values(position=sa.bindparam("pos"))
)


class Placements:
    """The ordered generations on shots, as the acting user of ``scope``."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    # --- inside a caller's transaction ------------------------------------------------------

    def lock(self, conn: sa.Connection, shot_id: uuid.UUID) -> uuid.UUID:
        """Check the shot is writable, lock it, and return its project id."""
        project_id = require_shot(conn, self._scope, "shot_id", shot_id)
        if self._scope.backend.row_locks:
            conn.execute(sa.select(shots.c.id).where(shots.c.id == shot_id).with_for_update())
        return project_id

    def current(self, conn: sa.Connection, shot_id: uuid.UUID) -> list[ShotGeneration]:
        """The shot's placements in position order."""
        rows = conn.execute(
            sa.select(shot_generations)
            .where(shot_generations.c.shot_id == shot_id)
            .order_by(shot_generations.c.position, shot_generations.c.id)
        ).all()
        return [ShotGeneration.from_row(r) for r in rows]

    def close_up(self, conn: sa.Connection, shot_ids: Iterable[uuid.UUID]) -> None:
        """Make the positions of ``shot_ids`` dense again (after placements went away).

        The shots must be locked already (:meth:`lock`, in one order: see
        :meth:`lock_all`).
        """
        for shot_id in shot_ids:
            self._write(conn, self.current(conn, shot_id))

    def lock_all(self, conn: sa.Connection, shot_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Lock several shots in one order (so concurrent edits cannot deadlock)."""
        ordered = sorted(set(shot_ids), key=str)
        for shot_id in ordered:
            self.lock(conn, shot_id)
        return ordered

    def _write(
        self, conn: sa.Connection, ordered: Sequence[ShotGeneration]
    ) -> list[ShotGeneration]:
        out: list[ShotGeneration] = []
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
            conn.execute(_SET_POSITION, [{"pid": c["pid"], "pos": -1 - c["pos"]} for c in changed])
            conn.execute(_SET_POSITION, changed)
        return out

    # --- whole operations (validated input; one transaction each) ----------------------------

    def add(
        self, shot_id: uuid.UUID, generation_id: uuid.UUID, position: int | None
    ) -> ShotGeneration:
        """Place a generation of the shot's project on it at ``position`` (None appends)."""
        with self._scope.write() as conn:
            project_id = self.lock(conn, shot_id)
            owned = owned_projects(self._scope)
            gen_project = conn.execute(
                sa.select(generations.c.project_id).where(
                    generations.c.id == generation_id,
                    *([] if owned is None else [generations.c.project_id.in_(owned)]),
                )
            ).scalar()
            if gen_project is None and owned is not None:
                raise PermissionDenied(f"generation_id: generation {generation_id} is not yours")
            if gen_project is None:
                raise NotFound(f"generation {generation_id} not found")
            if gen_project != project_id:
                raise InvalidInput("generation_id", "belongs to another project than the shot")
            current = self.current(conn, shot_id)
            if any(p.generation_id == generation_id for p in current):
                raise Conflict(f"generation {generation_id} is already on shot {shot_id}")
            placement = ShotGeneration(new_id(), shot_id, generation_id, len(current))
            conn.execute(shot_generations.insert().values(**placement.as_dict()))
            at = len(current) if position is None else min(position, len(current))
            return self._write(conn, [*current[:at], placement, *current[at:]])[at]

    def move(
        self, shot_id: uuid.UUID, generation_id: uuid.UUID, position: int
    ) -> list[ShotGeneration]:
        """Move a placed generation to ``position`` (clamped to the end)."""
        with self._scope.write() as conn:
            self.lock(conn, shot_id)
            current = self.current(conn, shot_id)
            moving = next((p for p in current if p.generation_id == generation_id), None)
            if moving is None:
                raise NotFound(f"generation {generation_id} is not on shot {shot_id}")
            rest = [p for p in current if p.id != moving.id]
            at = min(position, len(rest))
            return self._write(conn, [*rest[:at], moving, *rest[at:]])

    def remove(self, shot_id: uuid.UUID, generation_id: uuid.UUID) -> list[ShotGeneration]:
        """Take a generation off the shot (the generation itself stays)."""
        with self._scope.write() as conn:
            self.lock(conn, shot_id)
            current = self.current(conn, shot_id)
            gone = [p for p in current if p.generation_id == generation_id]
            if not gone:
                raise NotFound(f"generation {generation_id} is not on shot {shot_id}")
            conn.execute(shot_generations.delete().where(shot_generations.c.id == gone[0].id))
            return self._write(conn, [p for p in current if p.id != gone[0].id])

    def reorder(self, shot_id: uuid.UUID, wanted: Sequence[uuid.UUID]) -> list[ShotGeneration]:
        """Set the whole order: ``wanted`` must list exactly the placed generations."""
        with self._scope.write() as conn:
            self.lock(conn, shot_id)
            by_gen = {p.generation_id: p for p in self.current(conn, shot_id)}
            if len(wanted) != len(set(wanted)) or set(wanted) != set(by_gen):
                raise InvalidInput(
                    "generation_ids", "must list each generation on the shot exactly once"
                )
            return self._write(conn, [by_gen[g] for g in wanted])
