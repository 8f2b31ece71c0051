"""The shared repository machinery: get/find/list/iter/count/delete, keyset pagination.

Lists are ordered by ``(created_at, id)`` (``(position, id)`` for shot placements) on both
backends — the fixed-width SQLite timestamp text and lowercase UUID text sort exactly like
``timestamptz`` and ``uuid`` do on Postgres — and paginated by an opaque keyset cursor, so a
page costs the same wherever it is in the list and rows inserted meanwhile are never skipped.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import itertools
import json
import logging
import threading
import uuid
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar, overload

import sqlalchemy as sa
import uuid_utils.compat as uuid_utils

from dualdb import validation as v
from dualdb.access import owned_projects, require_projects
from dualdb.engine import foreign_key_violation
from dualdb.errors import InvalidInput, NotFound, PermissionDenied, UnreadableRow
from dualdb.hotpath import RowConverter, Statement
from dualdb.records import Page, Record
from dualdb.scope import Scope
from dualdb.types import Unreadable, format_timestamp, parse_timestamp

R = TypeVar("R", bound=Record)


class _InOrder(Sequence[list[Any]]):
    """Rows given as dicts, seen as lists of the values of ``names``, each made when read: a
    backend without a bulk path (or a batch too small for it) reads none."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], names: list[str]) -> None:
        self._rows = rows
        self._names = names

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> list[Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[list[Any]]: ...
    def __getitem__(self, i: int | slice) -> list[Any] | list[list[Any]]:
        if isinstance(i, slice):
            return [[row[n] for n in self._names] for row in self._rows[i]]
        row = self._rows[i]
        return [row[n] for n in self._names]

    def __iter__(self) -> Iterator[list[Any]]:
        names = self._names
        return ([row[n] for n in names] for row in self._rows)


class _Sized(Collection[list[Any]]):
    """Rows made as they are read, once, with their number known beforehand."""

    def __init__(self, rows: Iterator[list[Any]], count: int) -> None:
        self._rows = rows
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[list[Any]]:
        return self._rows

    def __contains__(self, row: object) -> bool:
        raise TypeError("rows made as they are read cannot be searched")


log = logging.getLogger("dualdb")

#: The classes of SQLSTATE by which the database refuses a row (data exceptions, integrity
#: violations, privileges, and the PL/pgSQL triggers' own codes): a streamed batch refused
#: so is written again the checked way (:meth:`Repository._create_streamed`).
_REFUSALS = ("22", "23", "42", "P0", "PT")


def _refusal(err: sa.exc.DBAPIError) -> bool:
    """Whether the database refused what was written (not: lost the connection, timed out,
    found a deadlock)."""
    state = getattr(err.orig, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_REFUSALS)


class _CollectorPause:
    """CPython's cyclic garbage collector off while any bulk write runs, in any thread, and
    on again after the last one if it was on before the first.

    A bulk write keeps several container objects per row alive until it returns (the
    validated values, the records); the collector runs a full pass over every object in the
    process each time the surviving ones grow by a quarter, so 100,000 rows cost seven full
    passes (1.2 s of a 6.9 s ``create_many`` on Postgres).  The rows make no reference
    cycles, and the objects are still collected afterwards, once.  The switch is
    process-wide: other threads' garbage waits too, for the length of the writes, and a
    ``gc.disable()`` another thread makes meanwhile is undone at the end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._writes == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._writes += 1
        try:
            yield
        finally:
            with self._lock:
                self._writes -= 1
                if self._writes == 0 and self._resume:
                    gc.enable()


_collector_paused = _CollectorPause()


@dataclass(frozen=True)
class _Stored:
    """A cursor's sort-key value as stored, for a row whose value could not be decoded."""

    text: str


def _as_stored(value: datetime | uuid.UUID) -> str:
    """How SQLite stores a sort-key value (the text dualdb's column types write)."""
    return format_timestamp(value) if isinstance(value, datetime) else str(value)


def _as_is(values: Sequence[Any]) -> Sequence[Any]:
    """Rows SQLAlchemy converted already."""
    return values


#: Encodes a cursor's values (one encoder: ``json.dumps`` with separators makes one per call).
_CURSOR_JSON = json.JSONEncoder(separators=(",", ":"))

#: Default page size of ``list``.
DEFAULT_LIMIT = 50
#: Rows fetched per round trip by ``iter``.
DEFAULT_BATCH = 500


def new_id() -> uuid.UUID:
    """A new time-ordered id (UUIDv7)."""
    return uuid_utils.uuid7()


def key_or_new(value: object) -> uuid.UUID:
    """The caller's ``id`` (validated), or a new UUIDv7 when it is None."""
    return new_id() if value is None else v.uuid_("id", value)


def utcnow() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(UTC)


class Repository(Generic[R]):
    """Operations shared by every table's repository."""

    table: ClassVar[sa.Table]
    record: ClassVar[type[Record]]
    #: Human name used in error messages ("project", "shot", …).
    entity: ClassVar[str]
    #: The list order; the last column must be unique.
    order_by: ClassVar[tuple[str, ...]] = ("created_at", "id")
    #: The keys a row of :meth:`create_many` may have.
    fields: ClassVar[frozenset[str]]

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    # --- scoping -----------------------------------------------------------------------

    def _visible(self) -> sa.ColumnElement[bool] | None:
        """A WHERE clause limiting rows to the acting user's (None when unscoped)."""
        return None

    def _where(self, *clauses: sa.ColumnElement[bool] | None) -> list[sa.ColumnElement[bool]]:
        out = [c for c in clauses if c is not None]
        visible = self._visible()
        if visible is not None:
            out.append(visible)
        return out

    def _owned_projects(self) -> sa.Select[tuple[uuid.UUID]] | None:
        return owned_projects(self._scope)

    # --- reads ---------------------------------------------------------------------------

    def find(self, id: uuid.UUID | str) -> R | None:
        """The row with this id, or None."""
        key = v.uuid_("id", id)
        rows = self._scope.rows(self._select_by_id, {"key": key})
        return self._from_values(rows[0]) if rows else None

    @functools.cached_property
    def _select_by_id(self) -> Statement:
        """Compiled once per repository (:mod:`dualdb.hotpath`): the record's columns, by id."""
        key = sa.bindparam("key", type_=self.table.c.id.type)
        stmt = sa.select(*self._record_columns).where(*self._where(self.table.c.id == key))
        return Statement(stmt, self._scope.engine.dialect)

    @functools.cached_property
    def _record_columns(self) -> list[sa.Column[Any]]:
        """The columns of :attr:`record`'s fields, in its order."""
        return [self.table.c[name] for name in self.record.field_names()]

    def get(self, id: uuid.UUID | str) -> R:
        """The row with this id; :class:`NotFound` if there is none (or it is not visible)."""
        found = self.find(id)
        if found is None:
            raise NotFound(f"{self.entity} {id} not found")
        return found

    def count(self, **filters: Any) -> int:
        """How many rows match ``filters`` (the same keywords as :meth:`list`)."""
        clauses = self._filters(filters)
        stmt = sa.select(sa.func.count()).select_from(self.table).where(*self._where(*clauses))
        return int(self._scope.fetch(lambda conn: conn.execute(stmt).scalar_one()))

    def _list(self, filters: Mapping[str, Any], limit: int, cursor: str | None) -> Page[R]:
        size = v.limit("limit", limit)
        given = self._given(filters)  # validates every filter first
        after = self._decode(cursor) if cursor is not None else None
        rows, build, convert = self._page(given, size + 1, after)
        unreadable: list[UnreadableRow] = []
        try:
            items = [build(row) for row in rows[:size]]
        except UnreadableRow:
            # Rare: row by row, to keep the others and say which did not decode.
            items = []
            for row in rows[:size]:
                try:
                    items.append(build(row))
                except UnreadableRow as err:
                    unreadable.append(err)
        more = len(rows) > size
        cursor = self._encode(self._sort_key(convert(rows[size - 1]))) if more else None
        return Page(items=items, next_cursor=cursor, unreadable=unreadable)

    def _page(
        self, given: Mapping[str, Any], limit: int, after: Sequence[Any] | None
    ) -> tuple[Sequence[Any], Callable[[Any], R], RowConverter]:
        """Up to ``limit`` rows in list order, after the sort key ``after`` (None: from the
        start): the rows as fetched, the function that builds a row's record
        (:class:`UnreadableRow` if a value does not decode), and the one that gives its values
        (a value that does not decode as its :class:`Unreadable` marker).

        The caller converts each row as it uses it, so a long scan never holds a page of
        converted rows (see :meth:`_batches`).
        """
        if after is not None and any(isinstance(k, _Stored) for k in after):
            # After an unreadable sort key (rare): compared as stored, on SQLAlchemy's path,
            # whose rows come converted.
            clauses = self._clauses(given)
            clauses.append(self._after(after))
            cols = [self.table.c[c] for c in self.order_by]
            stmt = sa.select(*self._record_columns).where(*self._where(*clauses))
            stmt = stmt.order_by(*cols).limit(limit)
            rows = self._scope.fetch(lambda conn: conn.execute(stmt).all())
            return rows, self._build, _as_is
        values: dict[str, Any] = {f"f_{k}": x for k, x in given.items()}
        if after is not None:
            values.update((f"k_{i}", k) for i, k in enumerate(after))
        values["limit"] = limit
        statement = self._page_statement(tuple(sorted(given)), after is not None)
        fetched = self._scope.rows(statement, values, converted=False)
        return fetched, statement.builder(self._make, self._build), statement.convert

    def _page_statement(self, filtered: tuple[str, ...], after: bool) -> Statement:
        """A page's statement, compiled once per shape: which filters, whether after a key."""

        def build() -> sa.ClauseElement:
            clauses = [
                self.table.c[k] == sa.bindparam(f"f_{k}", type_=self.table.c[k].type)
                for k in filtered
            ]
            cols = [self.table.c[c] for c in self.order_by]
            if after:
                keys = [sa.bindparam(f"k_{i}", type_=c.type) for i, c in enumerate(cols)]
                clauses.append(sa.tuple_(*cols) > sa.tuple_(*keys))
            stmt = sa.select(*self._record_columns).where(*self._where(*clauses))
            return stmt.order_by(*cols).limit(sa.bindparam("limit", type_=sa.Integer()))

        return self._compiled(("page", filtered, after), build)

    def _iter(self, filters: Mapping[str, Any], batch_size: int) -> Iterator[R]:
        # Validate now, so bad arguments fail at the call and not at the first next().
        size = v.limit("batch_size", batch_size)
        return self._batches(self._given(filters), size)

    def _batches(self, given: Mapping[str, Any], batch_size: int) -> Iterator[R]:
        """Every matching record, ``batch_size`` rows per query.

        Each row is converted and its record built only when it is yielded: a page's records
        (with their ``params`` dicts) never exist all at once, so a scan frees what it made as
        it goes, as a hand-written loop does, instead of giving the garbage collector work
        (holding each page converted cost a scan about a sixth of its time in collections).
        """
        after: list[Any] | None = None
        while True:
            rows, build, convert = self._page(given, batch_size, after)
            for row in rows:
                try:
                    record = build(row)
                except UnreadableRow as problem:
                    log.warning("skipped an unreadable row: %s", problem)
                    continue
                yield record
            if len(rows) < batch_size:
                return
            after = self._sort_key(convert(rows[-1]))

    def _given(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        """The filters given (not None), validated: each repository checks its own keywords'
        values in ``_filter_value``."""
        given: dict[str, Any] = {}
        for key, value in filters.items():
            if value is None:
                continue
            if key not in self.filterable:
                allowed = ", ".join(sorted(self.filterable)) or "none"
                raise InvalidInput(
                    key, f"cannot filter {self.entity}s by {key} (allowed: {allowed})"
                )
            given[key] = self._filter_value(key, value)
        return given

    def _filters(self, filters: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
        """Equality filters, validated (:meth:`_given`)."""
        return self._clauses(self._given(filters))

    def _clauses(self, given: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
        return [self.table.c[key] == value for key, value in given.items()]

    #: Columns ``list``/``count`` may filter on.
    filterable: ClassVar[frozenset[str]] = frozenset()

    def _filter_value(self, key: str, value: Any) -> Any:
        if key.endswith("_id") or key == "id":
            return v.uuid_(key, value)
        if key == "status":
            return v.status(key, value)
        return v.text(key, value, max_len=v.MAX_LOCATION)

    # --- cursors ---------------------------------------------------------------------------

    def _sort_key(self, values: Sequence[Any]) -> list[Any]:
        """The sort-key values of a row (a record's values): where a page after it starts.

        A sort key another tool wrote as garbage (SQLite text) is taken as stored, so the list
        goes on past it.
        """
        key = [values[i] for i in self._sort_positions]
        return [_Stored(k.stored) if isinstance(k, Unreadable) else k for k in key]

    @functools.cached_property
    def _sort_positions(self) -> list[int]:
        """Where the :attr:`order_by` columns are among the record's fields."""
        names = self.record.field_names()
        return [names.index(col) for col in self.order_by]

    def _encode(self, key: Sequence[Any]) -> str:
        """The cursor of a page after the sort key ``key`` (:meth:`_sort_key`)."""
        values: list[Any] = []
        for value in key:
            if isinstance(value, _Stored):
                values.append({"stored": value.text})
            elif isinstance(value, datetime):
                values.append(value.isoformat())
            elif isinstance(value, uuid.UUID):
                values.append(str(value))
            else:
                values.append(value)
        raw = _CURSOR_JSON.encode([self.entity, *values]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode(self, cursor: str) -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            data = json.loads(raw)
            if not isinstance(data, list) or data[0] != self.entity:
                raise ValueError
            out: list[Any] = []
            for col, value in zip(self.order_by, data[1:], strict=True):
                # A cursor is user input: check every value's type (and an int's range, so
                # neither backend sees an out-of-range integer) before it reaches SQL.
                if isinstance(value, dict) and set(value) == {"stored"}:
                    stored = value["stored"]
                    # Only a backend storing these columns as text can hold garbage there.
                    if not isinstance(stored, str) or not self._scope.backend.text_storage:
                        raise ValueError(col)
                    out.append(_Stored(stored))
                elif col == "id" or col.endswith("_id") or col.endswith("_at"):
                    if not isinstance(value, str):
                        raise ValueError(col)
                    is_time = col.endswith("_at")
                    out.append(parse_timestamp(value) if is_time else uuid.UUID(value))
                elif isinstance(value, int) and not isinstance(value, bool):
                    if not -(2**31) <= value < 2**31:
                        raise ValueError(col)
                    out.append(value)
                else:
                    raise ValueError(col)
            return out
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            OverflowError,
            binascii.Error,
            json.JSONDecodeError,
        ):
            raise InvalidInput("cursor", "not a cursor returned by this list") from None

    def _after(self, key: Sequence[Any]) -> sa.ColumnElement[bool]:
        cols = [self.table.c[c] for c in self.order_by]
        if any(isinstance(k, _Stored) for k in key):
            return self._after_stored(key, cols)
        keys = [sa.literal(k, type_=c.type) for k, c in zip(key, cols, strict=True)]
        return sa.tuple_(*cols) > sa.tuple_(*keys)

    def _after_stored(
        self, key: Sequence[Any], cols: list[sa.Column[Any]]
    ) -> sa.ColumnElement[bool]:
        """After a row whose sort key is unreadable: compared as SQLite stores it, as text
        (the order the list has on SQLite anyway)."""
        left: list[sa.ColumnElement[Any]] = []
        right: list[sa.ColumnElement[Any]] = []
        for k, c in zip(key, cols, strict=True):
            if isinstance(k, _Stored | datetime | uuid.UUID):
                text = k.text if isinstance(k, _Stored) else _as_stored(k)
                left.append(sa.type_coerce(c, sa.Text()))
                right.append(sa.literal(text, type_=sa.Text()))
            else:
                left.append(c)
                right.append(sa.literal(k, type_=c.type))
        return sa.tuple_(*left) > sa.tuple_(*right)

    # --- writes ----------------------------------------------------------------------------

    def create_many(self, rows: Sequence[Mapping[str, Any]]) -> list[R]:
        """Add many rows in one statement batch (all or none), returned as stored.

        Each row is a dict of :attr:`fields`; an unknown key is refused, not ignored.
        """
        checked = self._rows(rows, self.fields)
        bulk_rows = self._scope.backend.bulk_rows
        if bulk_rows is None or len(checked) < bulk_rows:
            return self._create_values([self._new_values(row) for row in checked])
        with _collector_paused():
            # (no bulk path under row-level security)
            if self._scope.backend.streams_bulk and self._scope.user_id is None:
                return self._create_streamed(checked)
            return self._create_values([self._new_values(row) for row in checked])

    def _create_streamed(self, rows: list[Mapping[str, Any]]) -> list[R]:
        """:meth:`create_many` of a batch the backend loads while it is validated (Postgres's
        ``COPY``: the server stores rows while the next ones are checked), with the verdicts
        of :meth:`_create_values`, which validates every row, then checks them against the
        database (:meth:`_check_new`), then inserts.

        All of it happens inside a savepoint, which any refusal rolls back: the caller's
        enclosing transaction (a session, ``scope.write()``) is left as it was.

        - A row refused by validation ends the load before it is written: the same verdict,
          since nothing before it was refused and validation comes first.
        - The database's checks run after the load: they read nothing the insert writes
          (see :meth:`_check_new`), so their verdict is the one they would have given before
          it.
        - A refusal by the database itself (a key taken, a parent missing, a trigger's rule)
          rolls the load back, and the batch then goes the checked way in the same
          transaction, so the caller hears what that way says.  Such a batch is loaded twice
          before it is refused.  A lost connection or a timeout is not a refusal: it is
          raised as it is.
        """
        first = self._new_values(rows[0])  # (its keys are the load's columns, in order)
        names = list(first)
        values = [first]

        def validated() -> Iterator[list[Any]]:
            yield [first[n] for n in names]
            for row in itertools.islice(rows, 1, None):
                new = self._new_values(row)
                values.append(new)
                yield [new[n] for n in names]

        made: list[R] = []
        with self._scope.write() as conn:
            savepoint = conn.begin_nested()
            try:
                loaded = self._scope.backend.copy_rows(
                    conn, self.table, names, _Sized(validated(), len(rows))
                )
                if loaded:
                    self._check_new(conn, values)
                    made = self._read_back(conn, values)
                    self._after_insert(conn, made)
            except BaseException as err:
                if isinstance(err, sa.exc.DBAPIError) and not _refusal(err):
                    raise  # (the transaction is lost with it: nothing to roll back to)
                savepoint.rollback()
                if not isinstance(err, sa.exc.DBAPIError):
                    raise
                loaded = False
            else:
                savepoint.commit()
            if loaded:
                return made
            values.extend(self._new_values(row) for row in rows[len(values) :])
            return self._create_in(conn, values)

    def _create(self, row: Mapping[str, Any]) -> R:
        """``create`` of one row whose keys are :attr:`fields` by construction (a method's own
        arguments): :meth:`create_many` without its check of the keys."""
        return self._create_values([self._new_values(row)])[0]

    def _create_values(self, values: list[dict[str, Any]]) -> list[R]:
        """Insert rows already validated (:meth:`_new_values`)."""
        if not values:
            return []
        if len(values) == 1 and self._one_statement(values):
            return [self._create_one(values)]
        with self._scope.write() as conn:
            return self._create_in(conn, values)

    def _create_in(self, conn: sa.Connection, values: list[dict[str, Any]]) -> list[R]:
        """Check ``values`` against the database, insert them, and return them as stored."""
        self._check_new(conn, values)
        try:
            made = self._insert(conn, values)
        except sa.exc.IntegrityError as err:
            missing = self._missing_parent(err, values)
            if missing is None:
                raise
            raise missing from None
        self._after_insert(conn, made)
        return made

    #: ``create`` of one row is its validation and one ``INSERT``: no checks of its own beyond
    #: the parent (:attr:`parent`), nothing after the insert.
    plain_create: ClassVar[bool] = False

    def _one_statement(self, values: list[dict[str, Any]]) -> bool:
        """Whether creating ``values`` is one ``INSERT`` (the hot path: :meth:`_create_one`)."""
        return self.plain_create and (self.parent is None or self._parent_left_to_database(values))

    def _create_one(self, values: list[dict[str, Any]]) -> R:
        """One row, one compiled ``INSERT … RETURNING``; a missing parent is ``NotFound``."""
        row = values[0]

        def missing_parent(err: sa.exc.DBAPIError) -> NotFound | None:
            if not isinstance(err, sa.exc.IntegrityError):
                return None
            return self._missing_parent(err, values)

        statement = self._insert_statement(tuple(row))
        stored = self._scope.write_rows(
            statement, {f"v_{name}": value for name, value in row.items()}, missing_parent
        )
        return self._from_values(stored[0])

    def _insert_statement(self, columns: tuple[str, ...]) -> Statement:
        """``INSERT … RETURNING`` of ``columns``, compiled once per set of columns."""
        return self._compiled(
            ("insert", columns),
            lambda: (
                self.table.insert().values(self._bound(columns)).returning(*self._record_columns)
            ),
        )

    def _new_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The validated column values of one new row (no database access)."""
        raise NotImplementedError

    #: The new rows' one foreign key (column, entity): when all rows name the same parent,
    #: its existence is left to the database, whose violation is :meth:`_missing_parent`.
    parent: ClassVar[tuple[str, str] | None] = None

    def _check_new(self, conn: sa.Connection, values: list[dict[str, Any]]) -> None:
        """Checks against the database before an insert: the parent projects exist (and are
        the acting user's), in one query.  Subclasses add their own.

        They must read nothing the insert writes: a batch streamed into the backend's bulk
        path is checked after it, in its transaction (:meth:`_create_streamed`).
        """
        if "project_id" in self.table.c and not self._parent_left_to_database(values):
            require_projects(conn, self._scope, "project_id", (x["project_id"] for x in values))

    def _parent_left_to_database(self, values: list[dict[str, Any]]) -> bool:
        """Whether the insert's foreign key alone decides that the parent exists.

        Only with one parent (the error names it, as the check would) and, for projects,
        unscoped: a signed-in user is refused someone else's project, which no key says.
        """
        if self.parent is None:
            return False
        column, entity = self.parent
        if entity == "project" and self._scope.user_id is not None:
            return False
        return len({x[column] for x in values}) == 1

    def _missing_parent(
        self, err: sa.exc.IntegrityError, values: list[dict[str, Any]]
    ) -> NotFound | None:
        """The :class:`NotFound` a foreign-key violation of the insert means, if any."""
        if not self._parent_left_to_database(values) or not foreign_key_violation(err):
            return None
        column, entity = self.parent or ("", "")
        return NotFound(f"{entity} {values[0][column]} not found")

    def _after_insert(self, conn: sa.Connection, made: list[R]) -> None:
        """Work after an insert, in its transaction (nothing by default)."""
        return None

    def _rows(self, rows: object, fields: frozenset[str]) -> list[Mapping[str, Any]]:
        """The rows of a ``create_many``: dicts whose keys are all ``fields`` of this table.

        An unknown key is refused rather than ignored, so a typo cannot silently drop a value.
        """
        if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Iterable):
            raise InvalidInput("rows", f"must be a list of {self.entity} dicts")
        out: list[Mapping[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidInput(f"rows[{i}]", f"must be a dict, not {type(row).__name__}")
            if not fields.issuperset(row):  # (no set made per row: a bulk insert's rows pass)
                unknown = sorted(set(row) - fields, key=str)
                raise InvalidInput(str(unknown[0]), f"unknown {self.entity} field")
            out.append(row)
        return out

    def delete(self, id: uuid.UUID | str) -> None:
        """Delete the row (children go with it: every foreign key cascades)."""
        key = v.uuid_("id", id)
        if not self._scope.write_count(self._delete_by_id, {"key": key}):
            raise self._not_writable(key)

    @functools.cached_property
    def _delete_by_id(self) -> Statement:
        key = sa.bindparam("key", type_=self.table.c.id.type)
        stmt = self.table.delete().where(*self._where(self.table.c.id == key))
        return Statement(stmt, self._scope.engine.dialect)

    def _not_writable(self, key: uuid.UUID) -> NotFound | PermissionDenied:
        """Why a write matched no row: as :meth:`_check_writable` would have said."""
        if self._scope.user_id is not None:
            return PermissionDenied(f"{self.entity} {key} is not yours (or does not exist)")
        return NotFound(f"{self.entity} {key} not found")

    def _check_writable(self, conn: sa.Connection, key: uuid.UUID) -> None:
        """Refuse a write to a row the acting user cannot see (PermissionDenied)."""
        if self._scope.user_id is None:
            return
        visible = conn.execute(
            sa.select(self.table.c.id).where(*self._where(self.table.c.id == key))
        ).first()
        if visible is None:
            raise self._not_writable(key)

    def _insert(self, conn: sa.Connection, values: Sequence[Mapping[str, Any]]) -> list[R]:
        """Insert ``values`` and return the records as the database stored them.

        Read back, not rebuilt from ``values``: the database may set columns in its BEFORE
        triggers (``created_at`` when a Supabase API role writes, a task's counter on
        Postgres).  What AFTER triggers write later is not in these rows.
        """
        if not values:
            return []
        # One batch; the rows come back in no promised order, so they are put back in the
        # callers' by primary key (``sort_by_parameter_order`` would cost a statement per row
        # on SQLite, whose tables have no integer sentinel).
        key = self.table.primary_key.columns.values()[0].name
        # A large batch by the driver's bulk path (COPY on Postgres), then read back.  Not for
        # a signed-in user: Postgres refuses COPY FROM into a table whose row-level security
        # applies to the role.
        names = list(values[0])
        if self._scope.user_id is None and self._scope.backend.copy_rows(
            conn, self.table, names, _InOrder(values, names)
        ):
            return self._read_back(conn, values)
        rows = list(conn.execute(self.table.insert().returning(*self.table.c), list(values)).all())
        by_row_key = {row._mapping[key]: row for row in rows}
        return [self._record(by_row_key[v[key]]) for v in values]

    def _read_back(self, conn: sa.Connection, values: Sequence[Mapping[str, Any]]) -> list[R]:
        """The records of ``values`` as stored, in their order (after a bulk load): on the
        hot path, the keys as one parameter, records by position."""
        key_column = self.table.primary_key.columns.values()[0]
        key = key_column.name
        read_back = self._compiled(
            "read back",
            lambda: sa.select(*self._record_columns).where(
                self._scope.backend.one_of(key_column, "keys")
            ),
        )
        dbapi = conn.connection.dbapi_connection
        fetched = read_back.fetch(dbapi, {"keys": [v[key] for v in values]})
        made: list[R] = []
        if fetched:  # (a statement's builder is made after its first run)
            build = read_back.builder(self._make, self._build)
            made = [build(r) for r in fetched]
        by_key = {getattr(record, key): record for record in made}
        return [by_key[v[key]] for v in values]

    def _update(self, key: uuid.UUID, values: dict[str, Any]) -> R:
        """One ``UPDATE … RETURNING`` of a row the acting user may write."""
        if "updated_at" in self.table.c:
            values = {**values, "updated_at": utcnow()}
        rows = self._scope.write_rows(
            self._update_statement(tuple(sorted(values))),
            {"key": key, **{f"v_{name}": value for name, value in values.items()}},
        )
        if not rows:
            raise self._not_writable(key)
        return self._from_values(rows[0])

    def _update_statement(self, columns: tuple[str, ...]) -> Statement:
        """``UPDATE … RETURNING`` of ``columns``, compiled once per set of columns."""
        return self._compiled(
            ("update", columns),
            lambda: (
                self.table.update()
                .where(
                    *self._where(self.table.c.id == sa.bindparam("key", type_=self.table.c.id.type))
                )
                .values(self._bound(columns))
                .returning(*self._record_columns)
            ),
        )

    def _bound(self, columns: tuple[str, ...]) -> dict[str, sa.BindParameter[Any]]:
        """A bind parameter ``v_<column>`` of each column, typed as the column."""
        return {c: sa.bindparam(f"v_{c}", type_=self.table.c[c].type) for c in columns}

    def _compiled(self, key: Hashable, build: Callable[[], sa.ClauseElement]) -> Statement:
        """The statement ``key``, built and compiled once per repository (:mod:`dualdb.hotpath`):
        building and compiling it costs more than running it."""
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = Statement(build(), self._scope.engine.dialect)
        return statement

    @functools.cached_property
    def _statements(self) -> dict[Hashable, Statement]:
        return {}

    def _from_values(self, values: Sequence[Any]) -> R:
        return self._build(values)

    @functools.cached_property
    def _build(self) -> Callable[[Sequence[Any]], R]:
        """:meth:`Record.from_values` of :attr:`record`, typed as this repository's records."""
        build: Callable[[Sequence[Any]], R] = self.record.from_values  # type: ignore[assignment]
        return build

    @functools.cached_property
    def _make(self) -> Callable[..., R]:
        """:attr:`record`'s constructor (values known to be readable), typed likewise."""
        make: Callable[..., R] = self.record  # type: ignore[assignment]
        return make

    def _record(self, row: Any) -> R:
        record: R = self.record.from_row(row)  # type: ignore[assignment]
        return record
