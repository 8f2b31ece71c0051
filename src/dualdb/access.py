"""Who may write under which project or shot: the ownership checks every repository shares.

Unscoped (``scope.user_id`` is None) everything exists or does not; scoped, a project or shot
of another user is refused exactly like one that does not exist (``PermissionDenied``): under
Row Level Security the two look the same, and saying which would leak it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import sqlalchemy as sa

from dualdb.errors import NotFound, PermissionDenied
from dualdb.schema import projects, shots
from dualdb.scope import Scope

#: Ids looked up per statement (Postgres binds at most 65,535 parameters per statement).
LOOKUP_CHUNK = 10_000


def owned_projects(scope: Scope) -> sa.Select[tuple[uuid.UUID]] | None:
    """The acting user's project ids, as a subquery (None when unscoped)."""
    if scope.user_id is None:
        return None
    return sa.select(projects.c.id).where(projects.c.user_id == scope.user_id)


def require_projects(
    conn: sa.Connection, scope: Scope, field: str, project_ids: Iterable[uuid.UUID]
) -> None:
    """Refuse a write under any of ``project_ids`` unless each exists (and is the user's).

    One query per :data:`LOOKUP_CHUNK` ids; the first offender in id order is named.
    """
    wanted = sorted(set(project_ids), key=str)
    owner: dict[uuid.UUID, uuid.UUID | None] = {}
    query = sa.select(projects.c.id, projects.c.user_id).where(
        projects.c.id.in_(sa.bindparam("ids", expanding=True))
    )
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        owner.update((row.id, row.user_id) for row in conn.execute(query, {"ids": chunk}))
    for project_id in wanted:
        if scope.user_id is not None and owner.get(project_id) != scope.user_id:
            raise PermissionDenied(f"{field}: project {project_id} is not yours")
        if project_id not in owner:
            raise NotFound(f"project {project_id} not found")


def require_shot(conn: sa.Connection, scope: Scope, field: str, shot_id: uuid.UUID) -> uuid.UUID:
    """The project of ``shot_id``; refuses an unknown (or someone else's) shot."""
    row = conn.execute(
        sa.select(shots.c.project_id, projects.c.user_id)
        .join(projects, projects.c.id == shots.c.project_id)
        .where(shots.c.id == shot_id)
    ).first()
    if scope.user_id is not None and (row is None or row.user_id != scope.user_id):
        raise PermissionDenied(f"{field}: shot {shot_id} is not yours")
    if row is None:
        raise NotFound(f"shot {shot_id} not found")
    project_id: uuid.UUID = row.project_id
    return project_id
