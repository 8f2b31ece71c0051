"""Hooks that make Alembic's autogenerate and drift comparison correct for dualdb.

Alembic's generated migrations have known traps, fixed here:

* custom types are rendered without an import → :func:`render_item` renders
  ``dualdb.types.X()`` and the migration template always imports ``dualdb.types``;
* server defaults such as ``utcnow()`` are compiled to one dialect's SQL (``now()``), which then
  fails on the other → :func:`render_item` renders the portable construct instead;
* type comparison of ``TypeDecorator`` columns compares the wrong thing →
  :func:`compare_type` compares the DDL each dialect would emit;
* dialect-only objects (``Index.ddl_if(dialect=…)``) → :func:`include_object` hides them from
  the other dialect's comparison.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Dialect

from dualdb import types as dtypes

_PORTABLE_TYPES = (dtypes.UUID, dtypes.UUIDArray, dtypes.JSONB, dtypes.Timestamp)
_PORTABLE_DEFAULTS = (dtypes.utcnow, dtypes.new_uuid, dtypes.empty_uuid_array)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render dualdb's portable types and server defaults as importable Python."""
    # The migration template always imports dualdb.types.
    if type_ == "type" and isinstance(obj, _PORTABLE_TYPES):
        return f"dualdb.types.{type(obj).__name__}()"
    if type_ == "server_default" and isinstance(obj, sa.DefaultClause):
        arg = obj.arg
        if isinstance(arg, _PORTABLE_DEFAULTS):
            return f"dualdb.types.{type(arg).__name__}()"
    return False


def _ddl_if_dialect(obj: Any) -> str | None:
    ddl_if = getattr(obj, "_ddl_if", None)
    return getattr(ddl_if, "dialect", None) if ddl_if is not None else None


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Skip Alembic's own version table."""
    return not (type_ == "table" and name == "alembic_version")


def include_object_for(dialect_name: str) -> Any:
    """An ``include_object`` hook that also hides objects created only on other dialects."""

    def hook(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if not include_object(obj, name, type_, reflected, compare_to):
            return False
        for candidate in (obj, compare_to):
            only = _ddl_if_dialect(candidate)
            if only is not None and only != dialect_name:
                return False
        return True

    return hook


def _ddl(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> str:
    impl = type_.load_dialect_impl(dialect) if isinstance(type_, sa.types.TypeDecorator) else type_
    text = dialect.type_compiler_instance.process(impl)
    return " ".join(text.upper().split()).replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE")


def compare_type(
    context: MigrationContext,
    inspected_column: Any,
    metadata_column: Any,
    inspected_type: sa.types.TypeEngine[Any],
    metadata_type: sa.types.TypeEngine[Any],
) -> bool | None:
    """Compare dualdb types by the DDL the live dialect would emit (True means "changed")."""
    if not isinstance(metadata_type, _PORTABLE_TYPES):
        return None  # Alembic's own comparison
    dialect = context.dialect
    return _ddl(inspected_type, dialect) != _ddl(metadata_type, dialect)
