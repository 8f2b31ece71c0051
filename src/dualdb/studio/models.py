"""ORM classes for the studio, mapped imperatively onto the canonical Core tables.

sqladmin needs ORM-mapped classes; the rest of dualdb works on Core tables
(:mod:`dualdb.schema` stays the single source of truth).  So the classes here carry no columns
of their own: each is mapped onto its existing :class:`~sqlalchemy.Table`, and the mapping
lives in this private registry, used by nothing but the studio.  The studio only *reads*
through these classes; every write goes through the DAL repositories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import registry

from dualdb import schema

_registry = registry()


class StudioRow:
    """Base of the studio's ORM classes: attribute access to a row's columns."""

    __table__: sa.Table

    if TYPE_CHECKING:
        # The columns are instrumented onto each class at mapping time, out of mypy's sight.
        def __getattr__(self, name: str) -> Any: ...

    def __str__(self) -> str:
        # Shown by sqladmin wherever a row is named (breadcrumbs, delete dialogs).
        keys = [str(getattr(self, c.name)) for c in self.__table__.primary_key.columns]
        return f"{self.__table__.name} {';'.join(keys)}"


class User(StudioRow):
    """A row of ``users``."""


class Project(StudioRow):
    """A row of ``projects``."""


class Task(StudioRow):
    """A row of ``tasks``."""


class TaskDependency(StudioRow):
    """A row of ``task_dependencies`` (an edge derived from ``tasks.dependant_on``)."""


class Generation(StudioRow):
    """A row of ``generations``."""


class Shot(StudioRow):
    """A row of ``shots``."""


class ShotGeneration(StudioRow):
    """A row of ``shot_generations``."""


#: Table name → ORM class, in schema order (parents first).
MODELS: dict[str, type[StudioRow]] = {}

for _cls, _table in (
    (User, schema.users),
    (Project, schema.projects),
    (Task, schema.tasks),
    (TaskDependency, schema.task_dependencies),
    (Generation, schema.generations),
    (Shot, schema.shots),
    (ShotGeneration, schema.shot_generations),
):
    _registry.map_imperatively(_cls, _table)
    MODELS[_table.name] = _cls

assert list(MODELS) == [t.name for t in schema.TABLES], (
    "every table of dualdb.schema.TABLES needs an ORM class in dualdb.studio.models"
)
