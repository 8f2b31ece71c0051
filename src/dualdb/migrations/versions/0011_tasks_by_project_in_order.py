"""A project's tasks in list order, read from an index (both backends).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

``db.tasks.list(project_id=…)`` and ``iter(project_id=…)`` read keyset pages
``WHERE project_id = ? AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT n``.  No
index served both the filter and the order (``ix_tasks_project_id_status`` only the filter),
so every page sorted all of the project's tasks and a full scan cost O(n²/page): 200,000 tasks
at 7,000 rows/s, for dualdb and a raw keyset scan alike (docs/benchmarks.md, E).  With
``(project_id, created_at, id)`` each page is an index range.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_tasks_project_id_created_at_id"


def upgrade() -> None:
    op.create_index(NAME, "tasks", ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="tasks")
