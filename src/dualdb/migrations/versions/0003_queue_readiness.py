"""Queue readiness: unmet-dependency count, dependency edges, partial ready/running indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Runs on SQLite (batch mode) and Postgres.  ``tasks.dependant_on`` stays the canonical record;
``task_dependencies`` and ``tasks.unmet_dependencies`` are derived from it here (for existing
rows) and kept in step by the queue.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dualdb.types

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READY_SQL = "status = 'Queued' AND unmet_dependencies = 0"
RUNNING_SQL = "status = 'In Progress'"


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column(
                "unmet_dependencies", sa.Integer(), server_default=sa.text("0"), nullable=False
            )
        )
    op.create_table(
        "task_dependencies",
        sa.Column("task_id", dualdb.types.UUID(), nullable=False),
        sa.Column("dependency_id", dualdb.types.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["dependency_id"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_dependency_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "dependency_id", name=op.f("pk_task_dependencies")),
    )
    op.create_index(
        op.f("ix_task_dependencies_dependency_id"), "task_dependencies", ["dependency_id"]
    )
    # Backfill edges and counts from the canonical dependant_on arrays.
    if dialect == "postgresql":
        op.execute(
            "INSERT INTO task_dependencies (task_id, dependency_id) "
            "SELECT DISTINCT t.id, d.dep FROM tasks t, unnest(t.dependant_on) AS d(dep) "
            "JOIN tasks x ON x.id = d.dep"
        )
    else:
        op.execute(
            "INSERT OR IGNORE INTO task_dependencies (task_id, dependency_id) "
            "SELECT t.id, j.value FROM tasks t, json_each(t.dependant_on) j "
            "JOIN tasks x ON x.id = j.value"
        )
    op.execute(
        "UPDATE tasks SET unmet_dependencies = ("
        "SELECT count(*) FROM task_dependencies e JOIN tasks d ON d.id = e.dependency_id "
        "WHERE e.task_id = tasks.id AND d.status <> 'Complete')"
    )
    for name, columns, where in (
        ("ix_tasks_ready", ["created_at", "id"], READY_SQL),
        ("ix_tasks_ready_by_type", ["task_type", "created_at", "id"], READY_SQL),
        ("ix_tasks_running_heartbeat", ["heartbeat_at"], RUNNING_SQL),
    ):
        op.create_index(
            name,
            "tasks",
            columns,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    for name in ("ix_tasks_running_heartbeat", "ix_tasks_ready_by_type", "ix_tasks_ready"):
        op.drop_index(name, table_name="tasks")
    op.drop_index(op.f("ix_task_dependencies_dependency_id"), table_name="task_dependencies")
    op.drop_table("task_dependencies")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("unmet_dependencies")
