"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Runs on SQLite and Postgres: schema changes go through ``op.batch_alter_table`` (SQLite's
copy-and-move), and Postgres-only DDL sits behind ``op.get_context().dialect.name``.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dualdb.types  # noqa: F401 - generated columns use dualdb's portable types
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
