"""Projects: owned by a user; parent of shots, generations and tasks."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator, Mapping
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
    fields = frozenset({"id", "name", "user_id"})
    plain_create = True

    def _visible(self) -> sa.ColumnElement[bool] | None:
        uid = self._scope.user_id
        return None if uid is None else projects.c.user_id == uid

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        owner = v.uuid_("user_id", row.get("user_id"))
        if self._scope.user_id is not None and owner != self._scope.user_id:
            raise PermissionDenied("user_id: you can only create projects you own")
        return {
            "id": key_or_new(row.get("id")),
            "name": v.name("name", row.get("name")),
            "user_id": owner,
            "created_at": utcnow(),
            "updated_at": None,
        }

    parent = ("user_id", "user")

    def _check_new(self, conn: sa.Connection, values: builtins.list[dict[str, Any]]) -> None:
        if self._parent_left_to_database(values):
            return
        owners = {x["user_id"] for x in values}
        found = set(conn.execute(sa.select(users.c.id).where(users.c.id.in_(owners))).scalars())
        missing = sorted(owners - found, key=str)
        if missing:
            raise NotFound(f"user {missing[0]} not found")

    def create(
        self, name: str, user_id: uuid.UUID | str, *, id: uuid.UUID | str | None = None
    ) -> Project:
        """Add a project owned by ``user_id`` (who must exist); ``id`` defaults to a UUIDv7."""
        return self._create({"id": id, "name": name, "user_id": user_id})

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
