"""Who a call acts for: the verified claims of a Supabase access token, and the roles.

:class:`Claims` is what :class:`dualdb.auth.TokenVerifier` returns and what the Postgres
backend hands to the database as ``request.jwt.claims`` (:func:`dualdb.auth.act_as_user`).
It lives apart from the verifier so that the backends can name it without importing the
token machinery (and the settings behind it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

__all__ = ["AUDIENCE", "AUTHENTICATED_ROLE", "SERVICE_ROLE", "Claims"]

#: The audience Supabase Auth puts in user access tokens.
AUDIENCE = "authenticated"
#: The Postgres role a verified user acts as (PostgREST's, and the RLS policies').
AUTHENTICATED_ROLE = "authenticated"
#: The Postgres role trusted server code (workers) acts as; it bypasses RLS.
SERVICE_ROLE = "service_role"


@dataclass(frozen=True)
class Claims:
    """The verified claims of an access token.

    ``user_id`` is ``sub`` as a UUID; ``raw`` is every claim, read-only, as Supabase issued it
    (what :func:`act_as_user` hands to Postgres as ``request.jwt.claims``).
    """

    user_id: uuid.UUID
    role: str
    email: str | None
    expires_at: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def for_user_id(cls, user_id: uuid.UUID | str, *, email: str | None = None) -> Claims:
        """Claims for trusted server code acting for ``user_id`` without a token.

        They carry what the RLS policies read (``sub``, ``role``, ``aud``); nothing is verified,
        so never build them from client input.
        """
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
        raw: dict[str, Any] = {"sub": str(uid), "role": AUTHENTICATED_ROLE, "aud": AUDIENCE}
        if email is not None:
            raw["email"] = email
        return cls(
            user_id=uid,
            role=AUTHENTICATED_ROLE,
            email=email,
            expires_at=None,
            raw=MappingProxyType(raw),
        )

    def to_json(self) -> str:
        """The claims as the JSON text PostgREST puts in ``request.jwt.claims``."""
        return json.dumps(dict(self.raw), sort_keys=True, separators=(",", ":"), default=str)
