"""Statements compiled once and run straight on the driver's connection: the DAL's hot path.

SQLAlchemy builds, compiles and caches a statement, and runs it through an execution context
with events, result metadata and row objects: about 100 µs a statement, ten times what
``sqlite3`` itself takes for a lookup by key.  For the calls an application makes most (a row
by id, a page of a list) that machinery is most of the cost.  A :class:`Statement` does the
SQLAlchemy part once per dialect — the SQL text, the order of its parameters, the columns'
bind and result converters, all taken from the same column types — and then only runs the
driver's ``cursor.execute`` and the converters.  The values, the typed errors and the records
are the same as on SQLAlchemy's path: only the bookkeeping around them is gone.

Where a statement runs (which connection, which transaction) is :class:`~dualdb.scope.Scope`'s
business; this module only executes on a DBAPI connection it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from dualdb.types import Unreadable

__all__ = ["Statement", "bind_converter"]

T = TypeVar("T")

#: A value converter (None: the value as the driver gives it).
Converter = Callable[[Any], Any] | None
#: Converts a driver row into the columns' values.
RowConverter = Callable[[Sequence[Any]], Sequence[Any]]


class _UnreadableValue(Exception):
    """A value of the row decoded to an :class:`~dualdb.types.Unreadable` marker (see
    :meth:`Statement.builder`)."""


class Statement:
    """One SQL statement, compiled for one dialect, run on a DBAPI connection.

    ``stmt`` may have named bind parameters (:func:`sqlalchemy.bindparam`) whose values are
    given per call; literal values in it are compiled in as parameters with their values.
    Expanding (``IN``) parameters are not supported: those statements stay on SQLAlchemy's
    path.
    """

    def __init__(self, stmt: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
        if compiled.escaped_bind_names or "POSTCOMPILE" in compiled.string:
            raise ValueError("statement needs SQLAlchemy's per-call compilation")
        self._dialect = dialect
        self.sql = compiled.string
        binds = compiled.binds
        names: Sequence[str] = (
            compiled.positiontup if compiled.positional and compiled.positiontup else list(binds)
        )
        self._positional = bool(compiled.positional)
        #: (name, converter, default) per parameter, in the driver's order.
        self._params: list[tuple[str, Converter, Any]] = [
            (
                name,
                bind_converter(binds[name].type, dialect),
                None if binds[name].required else binds[name].effective_value,
            )
            for name in names
        ]
        selected = getattr(stmt, "selected_columns", None)
        if selected is None:
            selected = [c for c in getattr(stmt, "_returning", ())]
        self._types = [c.type for c in selected]
        #: Whether the statement returns rows (a SELECT, or a write with RETURNING).
        self._returns_rows = bool(self._types)
        #: Converts one driver row into the columns' values (built at the first run).
        self._convert: RowConverter | None = None
        #: The same converters, raising _UnreadableValue instead of giving a marker.
        self._strict: list[Converter] = []
        self._builders: dict[Hashable, Callable[[Sequence[Any]], Any]] = {}

    def _bound(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        out: list[Any] = []
        for name, convert, default in self._params:
            value = values.get(name, default)
            out.append(value if convert is None else convert(value))
        if self._positional:
            return out
        return {name: value for (name, _, _), value in zip(self._params, out, strict=True)}

    def _converters_for(self, description: Sequence[Any]) -> None:
        """The columns' result converters, by position, from the driver's types (columns the
        driver already gives as they are have none): :attr:`convert`, and the strict ones of
        :meth:`builder`."""
        converters: list[Converter] = []
        strict: list[Converter] = []
        for type_, column in zip(self._types, description, strict=True):
            generic = type_.dialect_impl(self._dialect).result_processor(self._dialect, column[1])
            hot = getattr(type_, "hot_result_processor", None)
            if hot is None:
                converters.append(generic)
                strict.append(None if generic is None else _strict(generic))
            else:
                converters.append(hot(self._dialect, column[1], generic))
                # The fast path as it is: a hot converter gives a marker only through its
                # fallback (types.*.hot_result_processor), so only the fallback needs to raise.
                strict.append(
                    hot(self._dialect, column[1], None if generic is None else _strict(generic))
                )
        self._strict = strict
        self._convert = _row_function(converters, None)

    @property
    def convert(self) -> RowConverter:
        """Converts one row :meth:`fetch` returned into the columns' values (the statement
        must have run once)."""
        if self._convert is None:
            raise RuntimeError("the statement has not run yet")
        return self._convert

    def fetch(self, dbapi_conn: Any, values: Mapping[str, Any]) -> list[Any]:
        """Run the statement with ``values``; the driver's rows as they are (none for a plain
        write), for the caller to :attr:`convert` one at a time.

        A driver error is raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, as
        SQLAlchemy's own path would (so :func:`dualdb.engine.translate` maps it the same way).
        """
        params = self._bound(values)
        try:
            # Both drivers (sqlite3, psycopg) have Connection.execute: a cursor per call.
            cursor = dbapi_conn.execute(self.sql, params)
            if not self._returns_rows:
                return []
            fetched: list[Any] = cursor.fetchall()
            if self._convert is None:  # the first run: the driver's types are known now
                self._converters_for(cursor.description)
        except self._dialect.loaded_dbapi.Error as err:
            raise self._wrapped(err, params, dbapi_conn) from err
        return fetched

    def count(self, dbapi_conn: Any, values: Mapping[str, Any]) -> int:
        """Run the statement (a write without ``RETURNING``) with ``values``: how many rows
        it wrote itself, as the driver counts them (sqlite3's ``changes()``, psycopg's
        command tag: neither counts what triggers or cascades wrote).  Errors as in
        :meth:`fetch`."""
        params = self._bound(values)
        try:
            return int(dbapi_conn.execute(self.sql, params).rowcount)
        except self._dialect.loaded_dbapi.Error as err:
            raise self._wrapped(err, params, dbapi_conn) from err

    def many(self, dbapi_conn: Any, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Run the statement (a write without ``RETURNING``) once per row of ``rows``, each
        the values of its parameters ``names`` in that order, as one ``executemany``; errors
        as in :meth:`fetch`.

        Rows go to the driver as they are where the order is the driver's and no value needs
        converting: a bulk write pays for nothing per row but what the driver does.
        """
        at = {name: i for i, name in enumerate(names)}
        order = [at[name] for name, _, _ in self._params]
        convert = [(j, f) for j, (_, f, _) in enumerate(self._params) if f is not None]
        in_order = order == list(range(len(names)))
        params: Sequence[Any]
        if self._positional and in_order and not convert:
            params = rows
        else:
            listed = [list(row) if in_order else [row[i] for i in order] for row in rows]
            for values in listed:
                for j, f in convert:
                    values[j] = f(values[j])
            params = (
                listed
                if self._positional
                else [dict(zip((n for n, _, _ in self._params), v, strict=True)) for v in listed]
            )
        try:
            dbapi_conn.cursor().executemany(self.sql, params)
        except self._dialect.loaded_dbapi.Error as err:
            raise self._wrapped(err, params, dbapi_conn) from err

    def _wrapped(self, err: Any, params: Any, dbapi_conn: Any) -> exc.StatementError:
        """A driver error as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, as SQLAlchemy's
        own path would raise it (so :func:`dualdb.engine.translate` maps it the same way)."""
        wrapped: exc.StatementError = exc.DBAPIError.instance(
            self.sql,
            params,
            err,
            self._dialect.loaded_dbapi.Error,
            connection_invalidated=self._dialect.is_disconnect(err, dbapi_conn, None),
            dialect=self._dialect,
        )
        return wrapped

    def builder(
        self, make: Callable[..., T], otherwise: Callable[[Sequence[Any]], T]
    ) -> Callable[[Sequence[Any]], T]:
        """A function of a row :meth:`fetch` returned: ``make(*values)``, its values converted
        (the statement must have run once).

        A row with a value that does not decode is ``otherwise(values)``, the values with
        their :class:`~dualdb.types.Unreadable` markers (:meth:`Record.from_values
        <dualdb.records.Record.from_values>`, which raises).  Every other row goes straight
        to ``make``: only a fallback converter can give a marker, so the values need no
        search for one (about a tenth of building a record).
        """
        build = self._builders.get(make)
        if build is None:
            if self._convert is None:
                raise RuntimeError("the statement has not run yet")
            fast, convert = _row_function(self._strict, make), self._convert

            def build(row: Sequence[Any]) -> T:
                try:
                    made: T = fast(row)
                    return made
                except _UnreadableValue:
                    return otherwise(convert(row))

            self._builders[make] = build
        return build

    def rows(self, dbapi_conn: Any, values: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run the statement with ``values``; its rows, converted (none for a plain write).

        Errors as :meth:`fetch`.
        """
        fetched = self.fetch(dbapi_conn, values)
        if not fetched:
            return []
        return list(map(self.convert, fetched))


def _row_function(converters: Sequence[Converter], make: Callable[..., Any] | None) -> Any:
    """One function converting a whole row: ``lambda row: (c0(row[0]), row[1], …)``, or with
    ``make``, ``lambda row: make(c0(row[0]), row[1], …)``.

    Generated, as :mod:`dataclasses` generates ``__init__``: a loop over the columns costs a
    wide row (a task's 15 columns) about a tenth of its conversion, and a scan converts
    millions.
    """
    if make is None and all(convert is None for convert in converters):
        return _as_is
    names: dict[str, Any] = {f"c{i}": c for i, c in enumerate(converters) if c is not None}
    names["make"] = make
    items = "".join(
        f"row[{i}], " if convert is None else f"c{i}(row[{i}]), "
        for i, convert in enumerate(converters)
    )
    # The text is ours (column positions and names): nothing of the caller's is evaluated.
    return eval(f"lambda row: {'make' if make else ''}({items})", names)


def _strict(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, raising :class:`_UnreadableValue` where it would give a marker."""

    def strict(value: Any) -> Any:
        out = convert(value)
        if out.__class__ is Unreadable:
            raise _UnreadableValue
        return out

    return strict


def _as_is(row: Sequence[Any]) -> Sequence[Any]:
    return row


def bind_converter(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> Converter:
    """A parameter's converter: the type's own, behind its fast path where it has one."""
    generic = type_.dialect_impl(dialect).bind_processor(dialect)
    hot = getattr(type_, "hot_bind_processor", None)
    return generic if hot is None else hot(dialect, generic)


def row_binder(
    table: sa.Table, columns: Sequence[str], dialect: Dialect
) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function of a row of values of ``columns``: the row as an ``INSERT`` of them would
    bind it (each column's :func:`bind_converter`), for a backend's bulk path."""
    convert = [
        (i, f)
        for i, name in enumerate(columns)
        if (f := bind_converter(table.c[name].type, dialect)) is not None
    ]
    if not convert:
        return _as_is

    def bind(row: Sequence[Any]) -> Sequence[Any]:
        bound = list(row)
        for i, f in convert:
            bound[i] = f(bound[i])
        return bound

    return bind
