"""Projects: owned by a user; parent of shots, generations and tasks."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.errors import NotFound, PermissionDenied
from dualdb.records import Page, Project
from dualdb.repositories.base import DEFAULT_BATCH, DEFAULT_LIMIT, Repository, key_or_new, utcnow
from dualdb.schema import projects, users
from dualdb.unset import UNSET, Unset


class ProjectsRepository(Repository[Project]):
    """Create, read, update and delete ``projects``."""

    table = projects
    record = Project
    entity = "project"
    filterable = frozenset({"user_id"})

    def _visible(self) -> sa.ColumnElement[bool] | None:
        uid = self._scope.user_id
        return None if uid is None else projects.c.user_id == uid

    def _values(self, name: object, user_id: object, id: object = None) -> dict[str, Any]:
        owner = v.uuid_("user_id", user_id)
        if self._scope.user_id is not None and owner != self._scope.user_id:
            raise PermissionDenied("user_id: you can only create projects you own")
        return {
            "id": key_or_new(id),
            "name": v.name("name", name),
            "user_id": owner,
            "created_at": utcnow(),
            "updated_at": None,
        }

    def _require_users(self, conn: sa.Connection, owners: set[uuid.UUID]) -> None:
        found = set(conn.execute(sa.select(users.c.id).where(users.c.id.in_(owners))).scalars())
        missing = sorted(owners - found, key=str)
        if missing:
            raise NotFound(f"user {missing[0]} not found")

    def create(
        self, name: str, user_id: uuid.UUID | str, *, id: uuid.UUID | str | None = None
    ) -> Project:
        """Add a project owned by ``user_id`` (who must exist); ``id`` defaults to a UUIDv7."""
        values = self._values(name, user_id, id)
        with self._scope.write() as conn:
            self._require_users(conn, {values["user_id"]})
            return self._insert(conn, [values])[0]

    def create_many(self, rows: Sequence[Mapping[str, Any]]) -> builtins.list[Project]:
        """Add many projects in one statement batch (all or none)."""
        checked = self._rows(rows, frozenset({"id", "name", "user_id"}))
        values = [self._values(r.get("name"), r.get("user_id"), r.get("id")) for r in checked]
        if not values:
            return []
        with self._scope.write() as conn:
            self._require_users(conn, {x["user_id"] for x in values})
            return self._insert(conn, values)

    def list(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[Project]:
        """Projects in creation order, one page at a time."""
        return self._list({"user_id": user_id, **unknown}, limit, cursor)

    def iter(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        batch_size: int = DEFAULT_BATCH,
        **unknown: Never,
    ) -> Iterator[Project]:
        """Every matching project, streamed in batches."""
        return self._iter({"user_id": user_id, **unknown}, batch_size)

    def for_user(self, user_id: uuid.UUID | str) -> builtins.list[Project]:
        """All projects of ``user_id``, oldest first."""
        return list(self.iter(user_id=user_id))

    def update(self, id: uuid.UUID | str, *, name: str | Unset = UNSET) -> Project:
        """Rename the project."""
        key = v.uuid_("id", id)
        values: dict[str, Any] = {}
        if not isinstance(name, Unset):
            values["name"] = v.name("name", name)
        return self._update(key, values) if values else self.get(key)
