"""Task-queue columns on tasks: worker, attempts, error, claim/heartbeat/processed times.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Runs on SQLite (batch mode) and Postgres.  Existing rows keep their data; ``attempts`` starts
at 0.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dualdb.types

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_COLUMNS = (
    "worker_id",
    "attempts",
    "error",
    "generation_started_at",
    "heartbeat_at",
    "generation_processed_at",
)


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("worker_id", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("generation_started_at", dualdb.types.Timestamp(), nullable=True)
        )
        batch.add_column(sa.Column("heartbeat_at", dualdb.types.Timestamp(), nullable=True))
        batch.add_column(
            sa.Column("generation_processed_at", dualdb.types.Timestamp(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for name in reversed(NEW_COLUMNS):
            batch.drop_column(name)
