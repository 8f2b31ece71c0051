"""How the studio shows values: UTC timestamps, linked UUIDs, readable JSON, status badges.

Every function returns escaped HTML (:class:`markupsafe.Markup`): values come from the
database, so none is trusted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape
from starlette.requests import Request

from dualdb.types import JSON_NULL, TaskStatus, Unreadable

#: Longest JSON shown in a list cell before it is cut (the detail page shows all of it).
LIST_JSON_CHARS = 40

#: Status → Tabler badge colour.
_STATUS_COLOURS: dict[str, str] = {
    TaskStatus.PENDING.value: "bg-secondary",
    TaskStatus.QUEUED.value: "bg-blue",
    TaskStatus.IN_PROGRESS.value: "bg-yellow",
    TaskStatus.COMPLETE.value: "bg-green",
    TaskStatus.FAILED.value: "bg-red",
    TaskStatus.CANCELLED.value: "bg-dark",
}

#: A formatter as sqladmin calls it: ``(row, column_name, request) -> html``.
Formatter = Callable[[Any, str, Request], Any]


def utc(value: datetime | None, *, seconds: bool = False) -> str:
    """``2025-01-31 12:34:56.123456 UTC``: always UTC, microseconds unless ``seconds``."""
    if value is None:
        return ""
    if value.tzinfo is None:  # pragma: no cover - the Timestamp type always returns aware values
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M:%S.%f UTC"
    )


def null() -> Markup:
    """How SQL NULL is shown (distinct from an empty string)."""
    return Markup('<span class="text-muted fst-italic">NULL</span>')


def unreadable(value: Unreadable) -> Markup:
    """A stored value dualdb could not decode: shown as such, with why and what is stored."""
    return Markup('<span class="text-danger" data-unreadable="1" title="{}">⚠ unreadable</span>'
                  ' <code>{}</code>').format(value.reason, value.raw)  # fmt: skip


def timestamp(value: datetime | None, *, seconds: bool = False) -> Markup:
    """A timestamp in UTC, or NULL; to the second in lists (the tooltip has it all)."""
    if value is None:
        return null()
    if isinstance(value, Unreadable):
        return unreadable(value)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        value.isoformat(), utc(value), utc(value, seconds=seconds)
    )


def uuid_link(
    request: Request, identity: str, value: uuid.UUID | str | None, *, short: bool = False
) -> Markup:
    """A UUID in monospace, linked to the detail page of the row it names in ``identity``.

    ``short`` shows its first 8 digits (the whole UUID is the link's tooltip): list pages
    use it for references to other rows, so a wide table still fits on a screen.
    """
    if value is None:
        return null()
    if isinstance(value, Unreadable):
        return unreadable(value)
    text = str(value)
    url = request.url_for("admin:details", identity=identity, pk=text)
    shown = f"{text[:8]}…" if short else text
    return Markup('<a href="{}" class="font-monospace" title="{}">{}</a>').format(url, text, shown)


def uuid_list(
    request: Request, identity: str, values: Sequence[uuid.UUID] | None, *, short: bool = False
) -> Markup:
    """A ``uuid[]`` value: each UUID linked, one per line, or ``[]`` when empty."""
    if values is None:
        return null()
    if isinstance(values, Unreadable):
        return unreadable(values)
    if not values:
        return Markup('<span class="text-muted font-monospace">[]</span>')
    return Markup("<br>").join(uuid_link(request, identity, v, short=short) for v in values)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON text of a stored document (``JSON_NULL`` is ``null``)."""
    if value is JSON_NULL:
        return "null"
    separators = (",", ": ") if indent else (", ", ": ")
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)


def json_cell(value: Any) -> Markup:
    """A JSON document on one line, cut to :data:`LIST_JSON_CHARS` (list pages)."""
    if value is None:
        return null()
    if isinstance(value, Unreadable):
        return unreadable(value)
    text = json_text(value)
    short = text if len(text) <= LIST_JSON_CHARS else text[: LIST_JSON_CHARS - 1] + "…"
    return Markup('<code title="{}">{}</code>').format(text, short)


def json_block(value: Any) -> Markup:
    """A JSON document pretty-printed (detail pages)."""
    if value is None:
        return null()
    if isinstance(value, Unreadable):
        return unreadable(value)
    return Markup('<pre class="mb-0">{}</pre>').format(json_text(value, indent=2))


def status_badge(value: str | None) -> Markup:
    """A task status as a coloured badge."""
    if value is None:
        return null()
    colour = _STATUS_COLOURS.get(value, "bg-secondary")
    return Markup('<span class="badge {} text-white" data-status="{}">{}</span>').format(
        colour, value, value
    )


def text(value: Any) -> Markup:
    """Any other value, escaped; NULL shown as such."""
    return null() if value is None else escape(value)
