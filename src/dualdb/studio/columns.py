"""What a studio view shows of its table's columns, derived from :mod:`dualdb.schema`.

Every view lists every column, sorts by every scalar one, orders rows as the DAL's lists do
and shows each column by its type (:mod:`dualdb.types`): a UUID links to the row it names, a
``uuid[]`` links each of its elements, ``jsonb`` is one line in lists and pretty-printed on
detail pages, a timestamp is UTC; anything else is escaped text.  A view states only where it
differs (:class:`~dualdb.studio.views.TableView`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from markupsafe import Markup
from sqlalchemy.orm import InstrumentedAttribute
from starlette.requests import Request

from dualdb.studio import formatting as fmt
from dualdb.types import JSONB, UUID, Timestamp, UUIDArray

#: The table each ``uuid[]`` column holds ids of: unlike a foreign key, an array's elements
#: name no table in the schema (both arrays of the schema list tasks).
ARRAY_TARGETS: dict[tuple[str, str], str] = {
    ("tasks", "dependant_on"): "tasks",
    ("generations", "tasks"): "tasks",
}

#: How one value is shown whatever the page (e.g. :func:`~dualdb.studio.formatting.status_badge`).
ValueFormatter = Callable[[Any], Markup]

#: sqladmin's type of ``column_formatters``: column → ``(row, name[, request]) -> html``.
ColumnFormatters = dict[
    str | InstrumentedAttribute[Any],
    Callable[[Any, Any], Any] | Callable[[Any, Any, Request], Any],
]


def listed(table: sa.Table) -> tuple[str, ...]:
    """The columns a list page shows: all of them, in the table's order."""
    return tuple(c.name for c in table.c)


def sortable(table: sa.Table) -> list[str]:
    """Columns one can sort by: every scalar one (not JSON documents or UUID lists)."""
    return [c.name for c in table.c if not isinstance(c.type, JSONB | UUIDArray)]


def default_sort(table: sa.Table) -> list[tuple[str, bool]]:
    """The order of a list page before any click: creation order, as the DAL lists rows;
    by primary key for a table without ``created_at``.  (The view breaks ties by primary key.)
    """
    if "created_at" in table.c:
        return [("created_at", False)]
    return [(c.name, False) for c in table.primary_key.columns]


def formatters(
    table: sa.Table, *, detail: bool, special: Mapping[str, ValueFormatter] | None = None
) -> ColumnFormatters:
    """A formatter for every column of ``table``, for list cells or for the detail page.

    ``special`` overrides the type's formatter for the columns it names, on both pages.
    """
    special = special or {}
    return {
        c.name: _shown_as(special[c.name]) if c.name in special else _by_type(table, c, detail)
        for c in table.c
    }


def _shown_as(show: ValueFormatter) -> fmt.Formatter:
    return lambda row, name, request: show(getattr(row, name))


def _target(table: sa.Table, column: sa.Column[Any]) -> str:
    """The table (= view identity) a UUID column points at."""
    if column.foreign_keys:
        return next(iter(column.foreign_keys)).column.table.name
    return table.name


def _by_type(table: sa.Table, column: sa.Column[Any], detail: bool) -> fmt.Formatter:
    kind = column.type
    if isinstance(kind, UUID):
        target = _target(table, column)
        # A list shows a row's own id in full; references to other rows shortened.
        short = not detail and bool(column.foreign_keys) and not column.primary_key
        return lambda row, name, request: fmt.uuid_link(
            request, target, getattr(row, name), short=short
        )
    if isinstance(kind, UUIDArray):
        target = ARRAY_TARGETS[(table.name, column.name)]
        return lambda row, name, request: fmt.uuid_list(
            request, target, getattr(row, name), short=not detail
        )
    if isinstance(kind, JSONB):
        return _shown_as(fmt.json_block if detail else fmt.json_cell)
    if isinstance(kind, Timestamp):
        return lambda row, name, request: fmt.timestamp(getattr(row, name), seconds=not detail)
    return _shown_as(fmt.text)
