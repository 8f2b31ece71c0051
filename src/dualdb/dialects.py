"""Backend differences, in one place: a capabilities object keyed by dialect name.

Code elsewhere asks ``capabilities(dialect_name)`` what the backend can do instead of
scattering ``if sqlite:`` checks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports and how dualdb drives it."""

    name: str
    #: ``SELECT … FOR UPDATE SKIP LOCKED`` (row locks that concurrent claimers skip).
    skip_locked: bool
    #: Queue timestamps come from the server's clock (one clock for every worker machine).
    server_clock: bool
    #: The workers' queue verbs are SQL functions in the database (migration 0008), which
    #: the DAL calls; otherwise the DAL runs the same statements itself.
    queue_functions: bool


SQLITE = Capabilities(
    name="sqlite",
    skip_locked=False,
    server_clock=False,
    queue_functions=False,
)

POSTGRESQL = Capabilities(
    name="postgresql",
    skip_locked=True,
    server_clock=True,
    queue_functions=True,
)

_BY_NAME = {c.name: c for c in (SQLITE, POSTGRESQL)}


def capabilities(dialect_name: str) -> Capabilities:
    """The :class:`Capabilities` of ``dialect_name`` (``"sqlite"`` or ``"postgresql"``)."""
    try:
        return _BY_NAME[dialect_name]
    except KeyError:
        raise ValueError(f"unsupported dialect {dialect_name!r}") from None


class array_contains(sa.sql.expression.ColumnElement[bool]):
    """``column`` (a :class:`~dualdb.types.UUIDArray`) contains ``value``.

    Postgres: ``column @> ARRAY[value]`` (GIN-indexable).  SQLite: an ``EXISTS`` over
    ``json_each``.
    """

    inherit_cache = True
    type = sa.Boolean()

    def __init__(self, column: sa.ColumnElement[Any], value: uuid.UUID) -> None:
        self.column = column
        self.value = value


@compiles(array_contains, "postgresql")
def _contains_pg(element: array_contains, compiler: SQLCompiler, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    val = compiler.process(sa.bindparam(None, element.value, type_=PG_UUID(as_uuid=True)), **kw)
    return f"({col} @> ARRAY[{val}]::uuid[])"


@compiles(array_contains)
def _contains_sqlite(element: array_contains, compiler: SQLCompiler, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    val = compiler.process(sa.bindparam(None, str(element.value), type_=sa.Text()), **kw)
    return f"EXISTS (SELECT 1 FROM json_each({col}) WHERE json_each.value = {val})"
