"""Vacuum the tasks table often on Postgres (queue churn).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Every claim moves a row out of the partial index ``ix_tasks_ready`` and leaves a dead entry at
its front until the next VACUUM; with Postgres' default (20% of the table changed) a busy queue
on a large table reads ever more dead entries per claim (measured in docs/benchmarks.md).  A
fixed threshold keeps the hot index small whatever the table size.  SQLite needs nothing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_analyze_scale_factor": "0.02",
}


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        params = ", ".join(f"{k} = {v}" for k, v in SETTINGS.items())
        op.execute(f"ALTER TABLE tasks SET ({params})")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tasks RESET ({', '.join(SETTINGS)})")
