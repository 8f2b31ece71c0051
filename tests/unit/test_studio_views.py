"""The studio's views take their columns, order and formatters from dualdb.schema (no database)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from dualdb import schema
from dualdb.studio import columns
from dualdb.studio.views import VIEWS, ShotGenerationsView, TaskDependenciesView, TasksView


class _Request:
    """Just enough of a Starlette request for the UUID links."""

    def url_for(self, name: str, **params: Any) -> str:
        return f"/studio/{params['identity']}/details/{params['pk']}"


def _shown(view: Any, column: str, value: Any, *, detail: bool) -> str:
    row = SimpleNamespace(**{column: value})
    pick = view.column_formatters_detail if detail else view.column_formatters
    return str(pick[column](row, column, _Request()))


def test_every_view_is_named_and_shaped_by_its_table() -> None:
    for view in VIEWS:
        table = view.table
        assert view.model.__table__ is table
        assert view.identity == view.name_plural == table.name
        assert view.column_sortable_list == columns.sortable(table)
        every = set(table.c.keys())
        assert set(view.column_formatters) == set(view.column_formatters_detail) == every, (
            f"{view.__name__}: every column of {table.name} needs a formatter"
        )


def test_the_defaults_come_from_the_table() -> None:
    assert TaskDependenciesView.name == "task dependency"
    assert TaskDependenciesView.column_list == ("task_id", "dependency_id")
    assert TaskDependenciesView.column_default_sort == [
        ("task_id", False),
        ("dependency_id", False),
    ]
    assert "params" not in columns.sortable(schema.tasks)
    assert "dependant_on" not in columns.sortable(schema.tasks)


def test_what_a_view_states_wins() -> None:
    assert TasksView.column_list[:3] == ("id", "task_type", "status")
    assert len(TasksView.column_list) < len(schema.tasks.c)
    assert ShotGenerationsView.column_default_sort == [("shot_id", False), ("position", False)]
    assert 'data-status="Queued"' in _shown(TasksView, "status", "Queued", detail=False)
    assert 'data-status="Queued"' in _shown(TasksView, "status", "Queued", detail=True)


def test_each_type_is_shown_its_way() -> None:
    ref = uuid.UUID("6f1c0000-0000-7000-8000-000000000001")
    cell = _shown(TasksView, "project_id", ref, detail=False)
    assert "/studio/projects/details/" in cell and ">6f1c0000…<" in cell
    assert f">{ref}<" in _shown(TasksView, "project_id", ref, detail=True)
    assert "/studio/tasks/details/" in _shown(TasksView, "dependant_on", [ref], detail=False)
    assert _shown(TasksView, "params", {"a": 1}, detail=False).startswith("<code")
    assert _shown(TasksView, "params", {"a": 1}, detail=True).startswith("<pre")
    at = datetime(2025, 1, 31, 12, 34, 56, 123456, tzinfo=UTC)
    assert ">2025-01-31 12:34:56 UTC<" in _shown(TasksView, "created_at", at, detail=False)
    assert ">2025-01-31 12:34:56.123456 UTC<" in _shown(TasksView, "created_at", at, detail=True)
    assert _shown(TasksView, "error", "<b>", detail=False) == "&lt;b&gt;"
    assert "NULL" in _shown(TasksView, "error", None, detail=True)
