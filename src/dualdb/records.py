"""Typed, immutable records returned by the repositories (one per table)."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, Self, TypeVar

from dualdb.errors import UnreadableRow
from dualdb.types import Unreadable

R = TypeVar("R", bound="Record")


def _stored_by_slot(cls: type[R]) -> type[R]:
    """``cls`` with an ``__init__`` that stores each field through its slot's descriptor.

    A frozen dataclass's own ``__init__`` stores each field with ``object.__setattr__`` (its
    ``__setattr__`` refuses): a lookup and a call per field, half the cost of building a
    record, and the hot path builds one or two per call.  This one takes the same parameters
    (same names, same order, no defaults) and stores the same values; after it the record is
    as frozen as before.  Made as ``dataclasses`` makes its own: the text run in the record's
    module (so its annotations resolve there), the setters handed in by a factory.
    """
    found = fields(cls)
    if "__post_init__" in dir(cls) or any(
        f.default is not MISSING or f.default_factory is not MISSING or not f.init or f.kw_only
        for f in found
    ):
        raise TypeError(f"{cls.__name__}: only records of plain positional fields")
    names = [f.name for f in found]
    setters = [f"_set_{name}" for name in names]
    lines = "".join(f"        _set_{name}(self, {name})\n" for name in names)
    # The text is ours (field names of a dataclass): nothing of a caller's is evaluated.
    text = (
        f"def __create_init__({', '.join(setters)}):\n"
        f"    def __init__(self, {', '.join(names)}):\n{lines}"
        "    return __init__\n"
    )
    made: dict[str, Any] = {}
    exec(text, sys.modules[cls.__module__].__dict__, made)
    init = made["__create_init__"](*(getattr(cls, name).__set__ for name in names))
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = cls.__init__.__annotations__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@dataclass(frozen=True, slots=True)
class Record:
    """Base of every record: built from a result row, compared by value."""

    @classmethod
    def from_row(cls, row: Any) -> Self:
        """Build the record from a SQLAlchemy row (extra columns are ignored).

        :class:`~dualdb.errors.UnreadableRow` if a stored value could not be decoded.
        """
        mapping = row._mapping
        return cls.from_values([mapping[name] for name in cls.field_names()])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The record's fields, in order: the columns :meth:`from_values` takes."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Self:
        """Build the record from its fields' values, in :meth:`field_names` order.

        :class:`~dualdb.errors.UnreadableRow` if a stored value could not be decoded.
        """
        if Unreadable in map(type, values):
            cls._unreadable(values)
        return cls(*values)

    @classmethod
    def _unreadable(cls, values: Sequence[Any]) -> None:
        named = dict(zip(cls.field_names(), values, strict=True))
        for name, value in named.items():
            if isinstance(value, Unreadable):
                entity = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
                key = named.get("id")
                shown = key.raw if isinstance(key, Unreadable) else key
                raise UnreadableRow(entity, shown, name, value.reason)

    def as_dict(self) -> dict[str, Any]:
        """The record's fields as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class User(Record):
    """A row of ``users``."""

    id: uuid.UUID
    email: str | None
    created_at: datetime


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class Project(Record):
    """A row of ``projects``."""

    id: uuid.UUID
    name: str
    user_id: uuid.UUID
    created_at: datetime
    updated_at: datetime | None


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class Shot(Record):
    """A row of ``shots``."""

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime | None


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class Generation(Record):
    """A row of ``generations``: an output (image, video) made by one or more tasks."""

    id: uuid.UUID
    project_id: uuid.UUID
    tasks: list[uuid.UUID]
    location: str | None
    type: str | None
    created_at: datetime
    updated_at: datetime | None


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class ShotGeneration(Record):
    """A row of ``shot_generations``: a generation placed at ``position`` in a shot."""

    id: uuid.UUID
    shot_id: uuid.UUID
    generation_id: uuid.UUID
    position: int


@_stored_by_slot
@dataclass(frozen=True, slots=True)
class Task(Record):
    """A row of ``tasks``: a unit of GPU work in the queue."""

    id: uuid.UUID
    project_id: uuid.UUID
    task_type: str
    params: dict[str, Any]
    status: str
    dependant_on: list[uuid.UUID]
    output_location: str | None
    created_at: datetime
    updated_at: datetime | None
    worker_id: str | None
    attempts: int
    error: str | None
    generation_started_at: datetime | None
    heartbeat_at: datetime | None
    generation_processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    """One page of a list: the items, and the cursor of the next page (None on the last)."""

    items: list[R]
    next_cursor: str | None
    #: Rows of this page that could not be decoded (written by another tool): reported here,
    #: left out of ``items``, never a reason for the whole list to fail.
    unreadable: list[UnreadableRow] = field(default_factory=list)
