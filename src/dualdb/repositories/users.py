"""Users: the minimal ``users`` table (an id that matches Supabase's ``auth.users.id``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Never

import sqlalchemy as sa

from dualdb import validation as v
from dualdb.errors import PermissionDenied
from dualdb.records import Page, User
from dualdb.repositories.base import DEFAULT_BATCH, DEFAULT_LIMIT, Repository, new_id, utcnow
from dualdb.schema import users
from dualdb.unset import UNSET, Unset

MAX_EMAIL = 320


class UsersRepository(Repository[User]):
    """Create, read, update and delete ``users``."""

    table = users
    record = User
    entity = "user"
    filterable = frozenset({"email"})
    fields = frozenset({"id", "email"})
    plain_create = True

    def _visible(self) -> sa.ColumnElement[bool] | None:
        uid = self._scope.user_id
        return None if uid is None else users.c.id == uid

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        id, email = row.get("id"), row.get("email")
        key = new_id() if id is None else v.uuid_("id", id)
        if self._scope.user_id is not None and key != self._scope.user_id:
            raise PermissionDenied("id: you can only create your own user row")
        return {
            "id": key,
            "email": v.optional_text("email", email, max_len=MAX_EMAIL),
            "created_at": utcnow(),
        }

    def create(self, id: uuid.UUID | str | None = None, email: str | None = None) -> User:
        """Add a user (``id`` defaults to a new UUIDv7); :class:`Conflict` if the id exists."""
        return self._create({"id": id, "email": email})

    def ensure(self, id: uuid.UUID | str, email: str | None = None) -> User:
        """The user with this id, created first if missing (idempotent)."""
        key = v.uuid_("id", id)
        with self._scope.write():
            found = self.find(key)
            return found if found is not None else self.create(key, email)

    def list(
        self,
        *,
        email: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        **unknown: Never,
    ) -> Page[User]:
        """Users in creation order, one page at a time."""
        return self._list({"email": email, **unknown}, limit, cursor)

    def iter(
        self, *, email: str | None = None, batch_size: int = DEFAULT_BATCH, **unknown: Never
    ) -> Iterator[User]:
        """Every matching user, streamed in batches (bounded memory)."""
        return self._iter({"email": email, **unknown}, batch_size)

    def update(self, id: uuid.UUID | str, *, email: str | Unset | None = UNSET) -> User:
        """Change the email (``None`` clears it)."""
        key = v.uuid_("id", id)
        values: dict[str, Any] = {}
        if not isinstance(email, Unset):
            values["email"] = v.optional_text("email", email, max_len=MAX_EMAIL)
        return self._update(key, values) if values else self.get(key)
