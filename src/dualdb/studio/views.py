"""The studio's sqladmin views: one per table.

Reads go through the ORM mapping of :mod:`dualdb.studio.models` on a read-only connection;
every write (create, edit, delete) calls the DAL repository of the table, so the studio
accepts exactly what the DAL accepts and refuses what it refuses — with the same checks
(ownership of parents, same-project dependencies, only ``Queued``/``Pending`` tasks change,
dense shot positions, …) and the same messages.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import anyio.to_thread
import sqlalchemy as sa
from sqladmin import ModelView, action
from sqladmin.filters import AllUniqueStringValuesFilter, StaticValuesFilter
from sqladmin.models import ModelViewMeta
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from wtforms import Field, Form

from dualdb import schema
from dualdb import validation as v
from dualdb.database import Database
from dualdb.errors import InvalidInput, NotFound, PermissionDenied
from dualdb.repositories.generations import MAX_TYPE
from dualdb.repositories.users import MAX_EMAIL
from dualdb.studio import columns
from dualdb.studio import formatting as fmt
from dualdb.studio.fields import (
    ChoiceField,
    DalCheck,
    JSONField,
    OptionalIntegerField,
    TextField,
    UUIDField,
    UUIDListField,
)
from dualdb.studio.graphs import shot_timeline, task_graph
from dualdb.studio.models import MODELS
from dualdb.types import INITIAL_STATUSES, TASK_STATUSES, to_uuid

#: A form field definition: an unbound field at run time (bound to each form built from it);
#: the WTForms stubs type the constructor call as the field class itself.
FieldDef = Field

#: sqladmin hands ``scaffold_form`` the view's create or edit "rules"; the studio uses these
#: two markers to tell which form to build (it builds both itself, see ``scaffold_form``).
_CREATE, _EDIT = "create", "edit"


@dataclass(frozen=True)
class StudioContext:
    """What every view of one studio app shares."""

    db: Database
    #: The same database, for sqladmin's ORM session, which only reads (every write goes
    #: through the DAL): a deferred ``BEGIN`` on SQLite, so browsing takes no write lock, and
    #: ``READ ONLY`` transactions on Postgres, so the database itself refuses a stray write.
    read_engine: Engine
    read_only: bool


def _id_field() -> FieldDef:
    return UUIDField(
        "id",
        validators=[DalCheck(v.uuid_, optional=True)],
        description="Leave blank for a new time-ordered id (UUIDv7).",
    )


def _uuid_field(label: str, **kwargs: Any) -> FieldDef:
    return UUIDField(label, validators=[DalCheck(v.uuid_)], **kwargs)


def _name_field() -> FieldDef:
    return TextField("name", validators=[DalCheck(v.name)])


def _optional_text(label: str, max_len: int) -> FieldDef:
    def check(field: str, value: object) -> object:
        return v.optional_text(field, value, max_len=max_len)

    return TextField(
        label,
        blank_is_null=True,
        validators=[DalCheck(check, optional=True)],
        description="Blank is NULL.",
    )


class _TableViewMeta(ModelViewMeta):
    """sqladmin's view metaclass, given the view's table (``table=``) instead of a model.

    What sqladmin wants spelled out per view and the table already says is derived here: the
    ORM class mapped onto the table, the names (the URL's and the plural are the table's, the
    singular is the class's: ``TaskDependency`` → "task dependency"), and the columns listed,
    sortable and shown by type (:mod:`dualdb.studio.columns`).  What the class body states
    itself wins.

    A metaclass, not ``__init_subclass__``: sqladmin reads ``model=`` in its own metaclass
    (primary key, URL identity, names), so the model must be known at that point.
    """

    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        attrs: dict[str, Any],
        *,
        table: sa.Table | None = None,
        **kwargs: Any,
    ) -> _TableViewMeta:
        if table is None:
            # TableView itself, and the per-app subclasses create_app makes of each view.
            plain: _TableViewMeta = super().__new__(mcs, name, bases, attrs, **kwargs)
            return plain
        model = MODELS[table.name]
        special = attrs.get("formatted_as", {})
        derived: dict[str, Any] = {
            "table": table,
            "name": _words(model.__name__),
            "name_plural": table.name,
            "column_list": columns.listed(table),
            "column_sortable_list": columns.sortable(table),
            "column_default_sort": columns.default_sort(table),
            "column_formatters": columns.formatters(table, detail=False, special=special),
            "column_formatters_detail": columns.formatters(table, detail=True, special=special),
        }
        view: _TableViewMeta = super().__new__(
            mcs, name, bases, {**derived, **attrs}, model=model, **kwargs
        )
        # sqladmin names URLs after the model class; the studio's name the table
        # (/studio/tasks/list, /studio/tasks/details/<id>).
        cast("type[ModelView]", view).identity = table.name
        return view


def _words(class_name: str) -> str:
    """``TaskDependency`` → ``task dependency``."""
    return re.sub(r"(?<=.)(?=[A-Z])", " ", class_name).lower()


class TableView(ModelView, metaclass=_TableViewMeta):
    """Shared behaviour of the studio's views; each table's view subclasses it.

    A view names its table — ``class ShotsView(TableView, table=schema.shots)`` — and states
    only what is special about it (icon, search, filters, forms, the DAL calls, extra
    actions); the rest comes from the table (see :class:`_TableViewMeta`).
    """

    #: Set on the per-app subclasses :func:`dualdb.studio.app.create_app` makes.
    studio: ClassVar[StudioContext]
    #: The view's table (from ``table=``).
    table: ClassVar[sa.Table]
    #: Columns shown otherwise than their type says, on list and detail pages alike.
    formatted_as: ClassVar[dict[str, columns.ValueFormatter]] = {}
    #: Fields of the create and the edit form (names are the DAL's argument names).
    create_form: ClassVar[dict[str, FieldDef]] = {}
    edit_form: ClassVar[dict[str, FieldDef]] = {}

    form_create_rules: ClassVar[list[str]] = [_CREATE]
    form_edit_rules: ClassVar[list[str]] = [_EDIT]
    page_size: ClassVar[int] = 25
    page_size_options: ClassVar[list[int]] = [10, 25, 50, 100]
    can_export: ClassVar[bool] = False
    column_details_list: ClassVar[str] = "__all__"

    # --- reading -----------------------------------------------------------------------

    def _stmt_by_identifier(self, identifier: str) -> sa.Select[Any]:
        # sqladmin would coerce the id with the column's python_type, which the portable
        # UUID type does not declare; every primary key here is one or two UUIDs.
        parts = identifier.split(";")
        if len(parts) != len(self.pk_columns):
            raise HTTPException(status_code=404, detail=f"not a {self.name} id: {identifier!r}")
        try:
            keys = [to_uuid(p) for p in parts]
        except ValueError:
            raise HTTPException(status_code=404, detail=f"not a valid id: {identifier!r}") from None
        return sa.select(self.model).where(
            *(col == key for col, key in zip(self.pk_columns, keys, strict=True))
        )

    def sort_query(self, stmt: sa.Select[Any], request: Request) -> sa.Select[Any]:
        """Sort as asked, then by primary key so pages never overlap or skip tied rows."""
        sorted_stmt: sa.Select[Any] = super().sort_query(stmt, request)
        return sorted_stmt.order_by(*self.pk_columns)

    async def scaffold_form(self, rules: list[str] | None = None) -> type[Form]:
        """The create or the edit form of this table (sqladmin asks with the rules above)."""
        fields = self.create_form if rules == [_CREATE] else self.edit_form
        return type(f"{type(self).__name__}Form", (Form,), dict(fields))

    # --- writing: through the DAL ------------------------------------------------------

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """Create the row with the DAL; returns its id."""
        raise PermissionDenied(f"{self.name_plural} cannot be created in the studio")

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """Update the row with the DAL."""
        raise PermissionDenied(f"{self.name_plural} cannot be edited in the studio")

    def dal_delete(self, key: uuid.UUID) -> None:
        """Delete the row with the DAL."""
        raise PermissionDenied(f"{self.name_plural} cannot be deleted in the studio")

    def _writable(self) -> None:
        # The routes are already switched off in read-only mode; this is the second lock.
        if self.studio.read_only:
            raise PermissionDenied("the studio is read-only (start it with --read-write)")

    async def _reload(self, identifier: str) -> Any:
        row = await self._get_object_by_pk(self._stmt_by_identifier(identifier))
        if row is None:  # pragma: no cover - deleted by someone else in between
            raise NotFound(f"{self.name} {identifier} not found")
        return row

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        """Create through the DAL, then load the new row for sqladmin's redirect."""
        self._writable()
        key = await anyio.to_thread.run_sync(self.dal_create, data)
        return await self._reload(str(key))

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Any:
        """Update through the DAL, then load the row again."""
        self._writable()
        key = v.uuid_("id", pk)
        await anyio.to_thread.run_sync(self.dal_update, key, data)
        return await self._reload(str(key))

    async def delete_model(self, request: Request, pk: Any) -> None:
        """Delete through the DAL (which refuses what it must, e.g. a task others wait for)."""
        self._writable()
        await anyio.to_thread.run_sync(self.dal_delete, v.uuid_("id", pk))


# --- one view per table ------------------------------------------------------------------


class UsersView(TableView, table=schema.users):
    """``users``."""

    icon = "fa-solid fa-user"
    column_searchable_list = ("id", "email")
    create_form: ClassVar[dict[str, FieldDef]] = {
        "id": _id_field(),
        "email": _optional_text("email", MAX_EMAIL),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {"email": _optional_text("email", MAX_EMAIL)}

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`UsersRepository.create`."""
        return self.studio.db.users.create(data["id"], data["email"]).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`UsersRepository.update`."""
        self.studio.db.users.update(key, email=data["email"])

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`UsersRepository.delete`."""
        self.studio.db.users.delete(key)


class ProjectsView(TableView, table=schema.projects):
    """``projects``."""

    icon = "fa-solid fa-folder"
    column_searchable_list = ("id", "name", "user_id")
    create_form: ClassVar[dict[str, FieldDef]] = {
        "name": _name_field(),
        "user_id": _uuid_field("user_id", default=schema.DUMMY_USER_ID),
        "id": _id_field(),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {"name": _name_field()}

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`ProjectsRepository.create`."""
        return self.studio.db.projects.create(data["name"], data["user_id"], id=data["id"]).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`ProjectsRepository.update`."""
        self.studio.db.projects.update(key, name=data["name"])

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`ProjectsRepository.delete` (its shots, generations and tasks go with it)."""
        self.studio.db.projects.delete(key)


class TasksView(TableView, table=schema.tasks):
    """``tasks``: the queue's rows, with a dependency-graph view."""

    icon = "fa-solid fa-list-check"
    # The queue's view of a task; the detail page shows every column.
    column_list = (
        "id",
        "task_type",
        "status",
        "dependant_on",
        "params",
        "worker_id",
        "attempts",
        "created_at",
    )
    column_searchable_list = ("id", "task_type", "status", "worker_id", "params", "error")
    formatted_as: ClassVar[dict[str, columns.ValueFormatter]] = {"status": fmt.status_badge}
    column_filters = (
        StaticValuesFilter("status", values=[(s, s) for s in TASK_STATUSES]),
        AllUniqueStringValuesFilter("task_type"),
    )
    create_form: ClassVar[dict[str, FieldDef]] = {
        "project_id": _uuid_field("project_id"),
        "task_type": TextField(
            "task_type",
            validators=[DalCheck(v.task_type)],
            description="e.g. single_image, travel_stitch",
        ),
        "params": JSONField(
            "params", validators=[DalCheck(v.params)], default=dict, description="A JSON object."
        ),
        "depends_on": UUIDListField(
            "depends_on", validators=[DalCheck(v.uuid_list, required=False)]
        ),
        "status": ChoiceField(
            "status",
            choices=INITIAL_STATUSES,
            validators=[DalCheck(v.status)],
            description="Queued: claimable once every dependency is Complete. Pending: held.",
        ),
        "id": _id_field(),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {
        "task_type": create_form["task_type"],
        "params": create_form["params"],
    }

    async def check_can_edit(self, request: Request, model: Any) -> bool:
        """Only tasks no worker has started can change (the DAL's rule)."""
        allowed: bool = await super().check_can_edit(request, model)
        return allowed and model.status in INITIAL_STATUSES

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`TasksRepository.create` (= ``enqueue``)."""
        return self.studio.db.tasks.create(
            data["project_id"],
            data["task_type"],
            data["params"],
            depends_on=data["depends_on"] or (),
            status=data["status"],
            id=data["id"],
        ).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`TasksRepository.update` (refused once a worker started the task)."""
        self.studio.db.tasks.update(key, params=data["params"], task_type=data["task_type"])

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`TasksRepository.delete` (refused while unfinished tasks depend on it)."""
        self.studio.db.tasks.delete(key)

    @action(name="dependency-graph", label="Dependency graph", add_in_list=False)
    async def dependency_graph(self, request: Request) -> Response:
        """The task's dependencies and dependents (transitively), with their statuses."""
        pk = request.query_params.get("pks", "")
        graph = await _found(task_graph, self.studio.db, pk)
        return await self.templates.TemplateResponse(
            request,
            "dualdb_studio/task_graph.html",
            {"model_view": self, "graph": graph, "title": f"Task {graph.task.id}"},
        )


class TaskDependenciesView(TableView, table=schema.task_dependencies):
    """``task_dependencies``: edges derived from ``tasks.dependant_on``; read-only.

    The DAL writes them together with the task (and keeps ``unmet_dependencies`` in step);
    writing one by hand would desynchronise the queue, so the studio never does.
    """

    icon = "fa-solid fa-diagram-project"
    can_create = False
    can_edit = False
    can_delete = False
    column_searchable_list = ("task_id", "dependency_id")


class GenerationsView(TableView, table=schema.generations):
    """``generations``."""

    icon = "fa-solid fa-image"
    column_searchable_list = ("id", "type", "location", "project_id")
    column_filters = (AllUniqueStringValuesFilter("type"),)
    create_form: ClassVar[dict[str, FieldDef]] = {
        "project_id": _uuid_field("project_id"),
        "type": _optional_text("type", MAX_TYPE),
        "location": _optional_text("location", v.MAX_LOCATION),
        "tasks": UUIDListField("tasks", validators=[DalCheck(v.uuid_list, required=False)]),
        "id": _id_field(),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {
        "type": create_form["type"],
        "location": create_form["location"],
        "tasks": create_form["tasks"],
    }

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`GenerationsRepository.create`."""
        return self.studio.db.generations.create(
            data["project_id"],
            location=data["location"],
            type=data["type"],
            tasks=data["tasks"] or (),
            id=data["id"],
        ).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`GenerationsRepository.update`."""
        self.studio.db.generations.update(
            key, location=data["location"], type=data["type"], tasks=data["tasks"] or ()
        )

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`GenerationsRepository.delete` (its placements on shots go with it)."""
        self.studio.db.generations.delete(key)


class ShotsView(TableView, table=schema.shots):
    """``shots``, with a view of their generations in position order."""

    icon = "fa-solid fa-film"
    column_searchable_list = ("id", "name", "project_id")
    create_form: ClassVar[dict[str, FieldDef]] = {
        "project_id": _uuid_field("project_id"),
        "name": _name_field(),
        "id": _id_field(),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {"name": _name_field()}

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`ShotsRepository.create`."""
        return self.studio.db.shots.create(data["project_id"], data["name"], id=data["id"]).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`ShotsRepository.update`."""
        self.studio.db.shots.update(key, name=data["name"])

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`ShotsRepository.delete`."""
        self.studio.db.shots.delete(key)

    @action(name="generations", label="Generations in order", add_in_list=False)
    async def generations(self, request: Request) -> Response:
        """The shot's generations in position order."""
        pk = request.query_params.get("pks", "")
        timeline = await _found(shot_timeline, self.studio.db, pk)
        return await self.templates.TemplateResponse(
            request,
            "dualdb_studio/shot_generations.html",
            {"model_view": self, "timeline": timeline, "title": f"Shot {timeline.shot.name}"},
        )


class ShotGenerationsView(TableView, table=schema.shot_generations):
    """``shot_generations``: a generation placed at a position on a shot.

    Created with :meth:`ShotsRepository.add_generation`, moved with
    :meth:`~ShotsRepository.move_generation`, removed with
    :meth:`ShotGenerationsRepository.delete` — so positions stay dense (0…n-1).
    """

    icon = "fa-solid fa-layer-group"
    column_searchable_list = ("shot_id", "generation_id")
    # The DAL's order of placements: each shot's generations in position order.
    column_default_sort: ClassVar[list[tuple[str, bool]]] = [
        ("shot_id", False),
        ("position", False),
    ]
    create_form: ClassVar[dict[str, FieldDef]] = {
        "shot_id": _uuid_field("shot_id"),
        "generation_id": _uuid_field("generation_id"),
        "position": OptionalIntegerField(
            "position",
            validators=[DalCheck(v.non_negative_int, optional=True)],
            description="Blank appends; later generations shift up.",
        ),
    }
    edit_form: ClassVar[dict[str, FieldDef]] = {
        "position": OptionalIntegerField(
            "position",
            validators=[DalCheck(v.non_negative_int)],
            description="The new position (0 = first); the others close up.",
        )
    }

    def dal_create(self, data: Mapping[str, Any]) -> uuid.UUID:
        """:meth:`ShotsRepository.add_generation`."""
        return self.studio.db.shots.add_generation(
            data["shot_id"], data["generation_id"], data["position"]
        ).id

    def dal_update(self, key: uuid.UUID, data: Mapping[str, Any]) -> None:
        """:meth:`ShotsRepository.move_generation`."""
        with self.studio.db.session() as s:
            placement = s.shot_generations.get(key)
            s.shots.move_generation(placement.shot_id, placement.generation_id, data["position"])

    def dal_delete(self, key: uuid.UUID) -> None:
        """:meth:`ShotGenerationsRepository.delete` (the shot's positions close up)."""
        self.studio.db.shot_generations.delete(key)


#: Every view, in schema order (parents first).
VIEWS: tuple[type[TableView], ...] = (
    UsersView,
    ProjectsView,
    TasksView,
    TaskDependenciesView,
    GenerationsView,
    ShotsView,
    ShotGenerationsView,
)

assert [view.table.name for view in VIEWS] == [t.name for t in schema.TABLES], (
    "every table of dualdb.schema.TABLES needs a view in dualdb.studio.views.VIEWS"
)


async def _found(fn: Callable[[Database, str], Any], db: Database, pk: str) -> Any:
    """Run a DAL read in a worker thread; an unknown or malformed id is a 404 page."""
    try:
        return await anyio.to_thread.run_sync(fn, db, pk)
    except (NotFound, InvalidInput) as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
