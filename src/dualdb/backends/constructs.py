"""SQL constructs that compile differently per backend (SQLAlchemy ``@compiles`` hooks)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler


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
