"""Backend differences, in one place: a capabilities object keyed by dialect name.

Code elsewhere asks ``capabilities(dialect_name)`` what the backend can do instead of
scattering ``if sqlite:`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports and how dualdb drives it."""

    name: str
    #: ``SELECT … FOR UPDATE SKIP LOCKED`` (row locks that concurrent claimers skip).
    skip_locked: bool
    #: Row Level Security and roles (``SET LOCAL ROLE``); otherwise the DAL enforces ownership.
    row_level_security: bool
    #: Native array and jsonb operators (GIN indexes, ``= ANY``).
    native_arrays: bool
    #: Writers are serialised by a database-wide lock (``BEGIN IMMEDIATE``).
    single_writer: bool
    #: ALTER TABLE needs Alembic's batch mode (copy-and-move) for most changes.
    batch_migrations: bool


SQLITE = Capabilities(
    name="sqlite",
    skip_locked=False,
    row_level_security=False,
    native_arrays=False,
    single_writer=True,
    batch_migrations=True,
)

POSTGRESQL = Capabilities(
    name="postgresql",
    skip_locked=True,
    row_level_security=True,
    native_arrays=True,
    single_writer=False,
    batch_migrations=False,
)

_BY_NAME = {c.name: c for c in (SQLITE, POSTGRESQL)}


def capabilities(dialect_name: str) -> Capabilities:
    """The :class:`Capabilities` of ``dialect_name`` (``"sqlite"`` or ``"postgresql"``)."""
    try:
        return _BY_NAME[dialect_name]
    except KeyError:
        raise ValueError(f"unsupported dialect {dialect_name!r}") from None
