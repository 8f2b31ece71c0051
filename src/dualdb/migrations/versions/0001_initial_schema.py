"""Initial schema: the seed's six tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Runs on SQLite and Postgres.  The GIN index on ``tasks.dependant_on`` is Postgres-only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dualdb.types

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'Pending', 'Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled'"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", dualdb.types.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            dualdb.types.Timestamp(),
            server_default=dualdb.types.utcnow(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "projects",
        sa.Column(
            "id", dualdb.types.UUID(), server_default=dualdb.types.new_uuid(), nullable=False
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("user_id", dualdb.types.UUID(), nullable=False),
        sa.Column(
            "created_at",
            dualdb.types.Timestamp(),
            server_default=dualdb.types.utcnow(),
            nullable=False,
        ),
        sa.Column("updated_at", dualdb.types.Timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_projects_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_index(op.f("ix_projects_user_id_created_at"), "projects", ["user_id", "created_at"])
    op.create_table(
        "tasks",
        sa.Column(
            "id", dualdb.types.UUID(), server_default=dualdb.types.new_uuid(), nullable=False
        ),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("params", dualdb.types.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), server_default="Queued", nullable=False),
        sa.Column(
            "dependant_on",
            dualdb.types.UUIDArray(),
            server_default=dualdb.types.empty_uuid_array(),
            nullable=False,
        ),
        sa.Column("output_location", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            dualdb.types.Timestamp(),
            server_default=dualdb.types.utcnow(),
            nullable=False,
        ),
        sa.Column("updated_at", dualdb.types.Timestamp(), nullable=True),
        sa.Column("project_id", dualdb.types.UUID(), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_tasks_status")),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_tasks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(op.f("ix_tasks_status_created_at"), "tasks", ["status", "created_at"])
    op.create_index(op.f("ix_tasks_project_id_status"), "tasks", ["project_id", "status"])
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            "ix_tasks_dependant_on_gin", "tasks", ["dependant_on"], postgresql_using="gin"
        )
    op.create_table(
        "generations",
        sa.Column(
            "id", dualdb.types.UUID(), server_default=dualdb.types.new_uuid(), nullable=False
        ),
        sa.Column(
            "tasks",
            dualdb.types.UUIDArray(),
            server_default=dualdb.types.empty_uuid_array(),
            nullable=False,
        ),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            dualdb.types.Timestamp(),
            server_default=dualdb.types.utcnow(),
            nullable=False,
        ),
        sa.Column("updated_at", dualdb.types.Timestamp(), nullable=True),
        sa.Column("project_id", dualdb.types.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_generations_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    op.create_index(
        op.f("ix_generations_project_id_created_at"), "generations", ["project_id", "created_at"]
    )
    op.create_table(
        "shots",
        sa.Column(
            "id", dualdb.types.UUID(), server_default=dualdb.types.new_uuid(), nullable=False
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            dualdb.types.Timestamp(),
            server_default=dualdb.types.utcnow(),
            nullable=False,
        ),
        sa.Column("updated_at", dualdb.types.Timestamp(), nullable=True),
        sa.Column("project_id", dualdb.types.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_shots_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shots")),
    )
    op.create_index(op.f("ix_shots_project_id_created_at"), "shots", ["project_id", "created_at"])
    op.create_table(
        "shot_generations",
        sa.Column(
            "id", dualdb.types.UUID(), server_default=dualdb.types.new_uuid(), nullable=False
        ),
        sa.Column("shot_id", dualdb.types.UUID(), nullable=False),
        sa.Column("generation_id", dualdb.types.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_shot_generations_generation_id_generations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["shot_id"],
            ["shots.id"],
            name=op.f("fk_shot_generations_shot_id_shots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shot_generations")),
    )
    op.create_index(
        op.f("ix_shot_generations_shot_id_position"), "shot_generations", ["shot_id", "position"]
    )
    op.create_index(
        op.f("ix_shot_generations_generation_id"), "shot_generations", ["generation_id"]
    )


def downgrade() -> None:
    for table in ("shot_generations", "shots", "generations", "tasks", "projects", "users"):
        op.drop_table(table)
