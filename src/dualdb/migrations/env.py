"""Alembic environment, shared by every dualdb migration command.

The configuration is built in code (:mod:`dualdb.migrations`), so there is no ``alembic.ini``.
Online commands get an open connection in ``config.attributes["connection"]``; offline
(``dualdb sql``) renders Postgres SQL with the version-table updates included.
"""

from __future__ import annotations

from alembic import context

from dualdb.migrations.autogen import compare_type, include_object_for, render_item
from dualdb.schema import metadata

config = context.config


def run_offline() -> None:
    dialect = config.get_main_option("dualdb.offline_dialect") or "postgresql"
    context.configure(
        dialect_name=dialect,
        target_metadata=metadata,
        literal_binds=True,
        transactional_ddl=True,
        render_item=render_item,
        include_object=include_object_for(dialect),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    dialect = connection.dialect.name
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        render_as_batch=True,
        render_item=render_item,
        compare_type=compare_type,
        include_object=include_object_for(dialect),
        process_revision_directives=config.attributes.get("process_revision_directives"),
        on_version_apply=config.attributes.get("on_version_apply", ()),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
