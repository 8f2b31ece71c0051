"""Rows in their portable form, the same whichever backend they come from or go to.

A *portable row* is a tuple of plain values in the table's column order: a UUID as its
canonical 36-character text, a ``uuid[]`` as a list of those, a timestamp as the fixed-width
UTC text ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (microseconds exact), a JSON document as its exact
JSON text (SQL ``NULL`` is ``None``; a JSON ``null`` is the text ``"null"``), integers and text
as they are.  Rows are read and written through :data:`TRANSFER_TABLES`, copies of the
canonical tables whose JSON columns carry text (:class:`~dualdb.types.JSONText`), so no value
is ever re-encoded by Python on the way.

The *canonical line* of a row is what checksums hash: the portable values as one compact JSON
array, with each JSON document rewritten in one canonical form (object keys sorted, numbers as
exact decimals).  Postgres' ``jsonb`` keeps neither key order nor the spelling of numbers
(``1e2`` is ``100``), so only that form is the same on both backends.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from dualdb import schema
from dualdb.backends import Backend, backend_for, backend_of
from dualdb.errors import InvalidInput, UnreadableRow
from dualdb.hotpath import Statement
from dualdb.types import (
    JSONB,
    UUID,
    JSONText,
    Timestamp,
    TimestampText,
    UUIDArray,
    UUIDArrayText,
    UUIDText,
    format_timestamp,
    json_encoder,
    parse_timestamp,
    to_uuid,
)

#: One row: its values in the table's column order.
Row = tuple[Any, ...]


class Kind(enum.Enum):
    """How a column's values travel."""

    UUID = "uuid"
    UUIDS = "uuid[]"
    TIME = "timestamp"
    JSON = "json"
    INTEGER = "integer"
    TEXT = "text"


def _kind(column: sa.Column[Any]) -> Kind:
    t = column.type
    if isinstance(t, UUID):
        return Kind.UUID
    if isinstance(t, UUIDArray):
        return Kind.UUIDS
    if isinstance(t, Timestamp):
        return Kind.TIME
    if isinstance(t, JSONB):
        return Kind.JSON
    if isinstance(t, sa.Integer):
        return Kind.INTEGER
    return Kind.TEXT


_META = sa.MetaData()


@dataclass(frozen=True)
class TableSpec:
    """One table as the transfer sees it."""

    name: str
    #: The transfer copy of the table (JSON as text).
    table: sa.Table
    columns: tuple[str, ...]
    kinds: tuple[Kind, ...]
    #: Positions of the primary-key columns in :attr:`columns`.
    key: tuple[int, ...]
    #: Kept by the database's triggers (``task_dependencies``): verified, never written.
    derived: bool = False
    #: Positions of the UUID and timestamp columns (another tool may have stored a form of
    #: its own), of the ``uuid[]`` columns and of the JSON columns: what :func:`to_portable`
    #: looks at.
    texts: tuple[tuple[int, Kind, Callable[[str], object]], ...] = ()
    lists: tuple[int, ...] = ()
    documents: tuple[int, ...] = ()

    def key_of(self, row: Row) -> tuple[Any, ...]:
        """The primary key of ``row``."""
        if len(self.key) == 1:
            return (row[self.key[0]],)  # most tables: no generator per row
        return tuple(row[i] for i in self.key)

    def column(self, name: str) -> sa.Column[Any]:
        """The transfer table's column ``name``."""
        return self.table.c[name]


#: dualdb's own text of a UUID and of a timestamp.
_CANONICAL = {
    Kind.UUID: re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"),
    Kind.TIME: re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z"),
}


def _spec(canonical: sa.Table) -> TableSpec:
    kinds = tuple(_kind(c) for c in canonical.columns)
    # Every value travels as its text where it can: no Python object made per value.
    as_text: dict[Kind, sa.types.TypeEngine[Any]] = {
        Kind.JSON: JSONText(),
        Kind.UUID: UUIDText(),
        Kind.TIME: TimestampText(),
        Kind.UUIDS: UUIDArrayText(),
    }
    columns = [
        sa.Column(c.name, as_text.get(kind, c.type), primary_key=c.primary_key)
        for c, kind in zip(canonical.columns, kinds, strict=True)
    ]
    table = sa.Table(canonical.name, _META, *columns)
    names = tuple(c.name for c in canonical.columns)
    key = tuple(names.index(c.name) for c in canonical.primary_key.columns)
    return TableSpec(
        canonical.name,
        table,
        names,
        kinds,
        key,
        derived=canonical is schema.task_dependencies,
        texts=tuple(
            (i, k, _CANONICAL[k].match) for i, k in enumerate(kinds) if k in (Kind.UUID, Kind.TIME)
        ),
        lists=tuple(i for i, k in enumerate(kinds) if k is Kind.UUIDS),
        documents=tuple(i for i, k in enumerate(kinds) if k is Kind.JSON),
    )


#: Every table, parents first (the order rows are written in).
SPECS: tuple[TableSpec, ...] = tuple(_spec(t) for t in schema.TABLES)
SPEC: dict[str, TableSpec] = {s.name: s for s in SPECS}
TRANSFER_TABLES: dict[str, sa.Table] = {s.name: s.table for s in SPECS}


# --- values --------------------------------------------------------------------------------

# A JSON string literal (captured: re.split keeps it), written "unrolled" so that runs of
# plain characters are taken in one step.
_JSON_STRING = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")', re.DOTALL)
# Whitespace outside JSON strings: jsonb prints it (``{"a": 1}``), dualdb's own compact text
# has none.  One scan in C, where most texts need no minifying; the possessive quantifiers
# (Python 3.11) never backtrack, so a text without such whitespace fails in linear time.
_SPACE_OUTSIDE_STRINGS = re.compile(r'(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"|[^"\s]++)*+\s', re.DOTALL)


def minify_json(text: str) -> str:
    """``text`` without the whitespace between tokens: every key, number and string as is."""
    parts = _JSON_STRING.split(text)  # outside, string, outside, string, …, outside
    parts[::2] = ["".join(p.split()) for p in parts[::2]]
    return "".join(parts)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def canonical_json(text: str) -> str:
    """The one form of a JSON document both backends agree on: keys sorted, numbers exact.

    Numbers are parsed as decimals and written without an exponent, as Postgres' numeric
    prints them (``1e2`` → ``100``, ``1.10`` stays ``1.10``); duplicate keys keep the last
    value, as ``jsonb`` does.
    """
    try:
        # Most documents have no fractional or exponent numbers: then the C parser and
        # encoder give the same text as the exact path below (Python ints are exact, keys
        # sort as str, strings encode alike), many times faster.  Anything it refuses (an
        # integer past Python's 4,300-digit limit, or text that is not JSON) goes to the
        # exact path, which gives the verdict.
        value = _DECODE_UNLESS_FRACTIONAL(text)
    except (_Fractional, ValueError, RecursionError):
        # json.loads here: its verdict on text it refuses (a BOM included), as before.
        exact = json.loads(
            text, parse_float=Decimal, parse_int=Decimal, parse_constant=_refuse_constant
        )
        return _canonical(exact)
    return _SORTED_COMPACT(value)


#: json.dumps builds an encoder per call given options: these are built once (both per row of
#: a copy's verification).
_SORTED_COMPACT = json_encoder(sort_keys=True, allow_nan=True)
_COMPACT = json_encoder(allow_nan=True)


class _Fractional(Exception):
    """A JSON document has a number with a fraction or an exponent."""


def _has_fraction(text: str) -> Any:
    raise _Fractional(text)


_DECODE_UNLESS_FRACTIONAL = json.JSONDecoder(
    parse_float=_has_fraction, parse_constant=_refuse_constant
).decode


def _canonical(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{_string(k)}:{_canonical(value[k])}" for k in sorted(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.lstrip("-") if value.is_zero() else text
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return _string(value)


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def to_portable(spec: TableSpec, values: Sequence[Any]) -> Row:
    """A row read from a database (through :attr:`TableSpec.table`) in its portable form.

    UUIDs and timestamps arrive as their text, and leave in dualdb's one form of it (lowercase
    UUIDs, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``): a value another tool stored in another form that
    dualdb reads (``2024-01-01 00:00:00``, an upper-case UUID) is written as dualdb would have
    written it, so both sides and a dump agree on it.  JSON loses the whitespace Postgres
    prints; ``uuid[]`` becomes a list of text.  :class:`~dualdb.errors.UnreadableRow` when a
    value cannot be decoded at all (written by a tool that bypassed the rules).
    """
    out = list(values)
    # Called for every row copied, dumped or verified: the common case (dualdb's own text)
    # costs one regular-expression match per value.
    for i, kind, canonical in spec.texts:
        value = out[i]
        if value is not None and not (type(value) is str and canonical(value)):
            out[i] = _canonical_text(spec, out, i, kind)
    for i in spec.lists:
        if out[i] is not None:
            out[i] = _uuid_list(spec, out, i)
    for i in spec.documents:
        value = out[i]
        if value is None:
            continue
        if type(value) is not str:
            raise UnreadableRow(spec.name, out[spec.key[0]], spec.columns[i], "not JSON text")
        if _SPACE_OUTSIDE_STRINGS.match(value):
            out[i] = minify_json(value)
    return tuple(out)


def _uuid_list(spec: TableSpec, row: list[Any], i: int) -> list[str]:
    """The stored ``uuid[]`` ``row[i]`` (a list of text from Postgres, JSON text from SQLite)
    as a list of dualdb's UUID text; UnreadableRow if it is not a list of UUIDs."""
    value = row[i]
    if value == "[]" or value == []:
        return []  # most tasks depend on nothing
    canonical = _CANONICAL[Kind.UUID].match
    try:
        items = json.loads(value) if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError("not a list of UUIDs")
        return [v if isinstance(v, str) and canonical(v) else str(to_uuid(v)) for v in items]
    except (ValueError, TypeError, RecursionError) as err:
        raise UnreadableRow(spec.name, row[spec.key[0]], spec.columns[i], str(err)) from None


def _canonical_text(spec: TableSpec, row: list[Any], i: int, kind: Kind) -> str:
    """The stored ``row[i]`` in dualdb's own text, read as dualdb reads it; UnreadableRow
    if dualdb cannot read it."""
    value = row[i]
    try:
        if kind is Kind.UUID:
            return str(to_uuid(value))
        return format_timestamp(parse_timestamp(str(value)))
    except (ValueError, TypeError, OverflowError) as err:
        raise UnreadableRow(spec.name, row[spec.key[0]], spec.columns[i], str(err)) from None


def to_params(spec: TableSpec, row: Row) -> dict[str, Any]:
    """Bind parameters for writing ``row`` through :attr:`TableSpec.table`."""
    return dict(zip(spec.columns, row, strict=True))


def check_portable(spec: TableSpec, values: object, where: str) -> Row:
    """``values`` (a row read from a dump) checked value by value; InvalidInput if wrong."""
    if not isinstance(values, list) or len(values) != len(spec.columns):
        raise InvalidInput("dump", f"{where}: not a row of {len(spec.columns)} values")
    for name, kind, value in zip(spec.columns, spec.kinds, values, strict=True):
        if value is not None and not _valid(kind, value):
            raise InvalidInput("dump", f"{where}: column {name} holds an invalid {kind.value}")
    return tuple(values)


def _valid(kind: Kind, value: object) -> bool:
    try:
        if kind is Kind.UUID:
            return isinstance(value, str) and str(uuid.UUID(value)) == value
        if kind is Kind.UUIDS:
            return isinstance(value, list) and all(_valid(Kind.UUID, v) for v in value)
        if kind is Kind.TIME:
            return isinstance(value, str) and format_timestamp(parse_timestamp(value)) == value
        if kind is Kind.JSON:
            if not isinstance(value, str):
                return False
            canonical_json(value)
            return True
        if kind is Kind.INTEGER:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, str)
    except (ValueError, TypeError, RecursionError):
        return False


def same_content(spec: TableSpec, a: Row, b: Row) -> bool:
    """Whether two rows hold the same values (the same text, or the same canonical line)."""
    return a == b or canonical_line(spec, a) == canonical_line(spec, b)


def canonical_line(spec: TableSpec, row: Row) -> str:
    """The text a checksum hashes for ``row`` (the same from either backend or a dump)."""
    values = list(row)
    for i in spec.documents:
        if values[i] is not None:
            values[i] = canonical_json(values[i])
    return _COMPACT(values)


def dump_line(row: Row) -> str:
    """The line a dump stores for ``row`` (exact JSON text kept; see docs/copy.md)."""
    return _COMPACT(list(row))


class Checksum:
    """Row count and SHA-256 of the canonical lines of a table's rows, in key order."""

    def __init__(self) -> None:
        self.rows = 0
        self._hash = hashlib.sha256()

    def add(self, spec: TableSpec, row: Row) -> None:
        """Count ``row`` and hash its canonical line."""
        self.add_line(canonical_line(spec, row))

    def add_line(self, line: str) -> None:
        """Count a row whose canonical line is ``line``, and hash it."""
        self.add_encoded((line + "\n").encode())

    def add_encoded(self, data: bytes) -> None:
        """Count a row whose canonical line and newline, UTF-8 encoded, are ``data``."""
        self.rows += 1
        self._hash.update(data)

    @property
    def digest(self) -> str:
        """``sha256:<hex>``."""
        return "sha256:" + self._hash.hexdigest()


# --- reading a database --------------------------------------------------------------------
#
# A copy reads every row twice (to write it, then to verify it) and the target's rows once:
# the statements are compiled once per dialect and run on the driver's connection
# (:mod:`dualdb.hotpath`), with every list of keys or projects bound as one parameter
# (:meth:`~dualdb.backends.base.Backend.one_of`).


def scope_clause(spec: TableSpec, backend: Backend) -> sa.ColumnElement[bool]:
    """The rows of ``spec`` that belong to the projects bound to ``projects`` (a list of
    project ids)."""
    p = TRANSFER_TABLES["projects"]
    chosen = backend.one_of(p.c.id, "projects")
    if spec.name == "users":
        return spec.column("id").in_(sa.select(p.c.user_id).where(chosen))
    if spec.name == "projects":
        return backend.one_of(spec.column("id"), "projects")
    if spec.name == "shot_generations":
        shots = TRANSFER_TABLES["shots"]
        in_scope = backend.one_of(shots.c.project_id, "projects")
        return spec.column("shot_id").in_(sa.select(shots.c.id).where(in_scope))
    if spec.name == "task_dependencies":
        tasks = TRANSFER_TABLES["tasks"]
        in_scope = backend.one_of(tasks.c.project_id, "projects")
        return spec.column("task_id").in_(sa.select(tasks.c.id).where(in_scope))
    return backend.one_of(spec.column("project_id"), "projects")


def _after(spec: TableSpec) -> sa.ColumnElement[bool]:
    """Keys after the one bound to ``after_0``, ``after_1`` … in key order (keyset paging;
    UUIDs sort alike on both backends)."""
    cols = [spec.table.c[spec.columns[i]] for i in spec.key]
    vals = [sa.bindparam(f"after_{j}", type_=c.type) for j, c in enumerate(cols)]
    clause: sa.ColumnElement[bool] = cols[-1] > vals[-1]
    for col, val in zip(reversed(cols[:-1]), reversed(vals[:-1]), strict=True):
        clause = sa.or_(col > val, sa.and_(col == val, clause))
    return clause


@functools.lru_cache(maxsize=256)
def _page_statement(table: str, scoped: bool, after: bool, dialect: Dialect) -> Statement:
    """A page of ``table`` in key order, at most ``limit`` rows (of the bound ``projects``
    when ``scoped``; after the bound key when ``after``)."""
    spec = SPEC[table]
    query = sa.select(spec.table)
    if scoped:
        query = query.where(scope_clause(spec, backend_for(dialect.name)))
    if after:
        query = query.where(_after(spec))
    order = [spec.table.c[spec.columns[i]] for i in spec.key]
    return Statement(query.order_by(*order).limit(sa.bindparam("limit", type_=sa.Integer)), dialect)


def _run(conn: sa.Connection, statement: Statement, values: dict[str, Any]) -> list[Any]:
    return statement.rows(conn.connection.dbapi_connection, values)


def read_pages(
    conn: sa.Connection, spec: TableSpec, projects: Sequence[uuid.UUID] | None, batch: int
) -> Iterator[list[Row]]:
    """The rows of ``spec`` of ``projects`` (every row when None), in key order, ``batch``
    at a time."""
    scope = {} if projects is None else {"projects": [str(p) for p in projects]}
    values: dict[str, Any] = {"limit": batch, **scope}
    statement = _page_statement(spec.name, projects is not None, False, conn.dialect)
    while True:
        stored = _run(conn, statement, values)
        if not stored:
            return
        yield [to_portable(spec, r) for r in stored]
        if len(stored) < batch:
            return
        # The next page starts after the last key as the database stores it: a key another
        # tool stored in a form of its own (an upper-case UUID on SQLite) sorts where its
        # stored text does, not where dualdb's form of it would.
        values.update({f"after_{j}": stored[-1][i] for j, i in enumerate(spec.key)})
        statement = _page_statement(spec.name, projects is not None, True, conn.dialect)


def count_rows(conn: sa.Connection, spec: TableSpec, projects: Sequence[uuid.UUID] | None) -> int:
    """How many rows of ``spec`` belong to ``projects`` (every row when None)."""
    query = sa.select(sa.func.count()).select_from(spec.table)
    if projects is None:
        return int(conn.execute(query).scalar_one())
    query = query.where(scope_clause(spec, backend_of(conn)))
    return int(conn.execute(query, {"projects": [str(p) for p in projects]}).scalar_one())


#: Most keys in one ``IN (…)`` list (well under SQLite's bound-parameter limit).
IN_CHUNK = 900


@functools.lru_cache(maxsize=64)
def _by_key_statement(table: str, column: str, dialect: Dialect) -> Statement:
    """The rows of ``table`` whose ``column`` is one of the bound ``keys``."""
    spec = SPEC[table]
    one_of = backend_for(dialect.name).one_of(spec.column(column), "keys")
    return Statement(sa.select(spec.table).where(one_of), dialect)


def fetch_by_key(
    conn: sa.Connection, spec: TableSpec, keys: Iterable[Any]
) -> dict[tuple[Any, ...], Row]:
    """The rows of a single-key table whose key is in ``keys``, by key."""
    (pos,) = spec.key
    statement = _by_key_statement(spec.name, spec.columns[pos], conn.dialect)
    found: dict[tuple[Any, ...], Row] = {}
    for r in _run(conn, statement, {"keys": list(keys)}):
        row = to_portable(spec, r)
        found[spec.key_of(row)] = row
    return found


def fetch_edges(conn: sa.Connection, task_ids: Iterable[str]) -> list[Row]:
    """The ``task_dependencies`` rows of ``task_ids``, in key order."""
    spec = SPEC["task_dependencies"]
    statement = _by_key_statement(spec.name, "task_id", conn.dialect)
    rows = _run(conn, statement, {"keys": sorted(set(task_ids))})
    return sorted(to_portable(spec, r) for r in rows)
