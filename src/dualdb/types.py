"""Portable column types: one ``TypeDecorator`` per logical type.

======================  =================  ===========================================
logical                 PostgreSQL         SQLite
======================  =================  ===========================================
:class:`UUID`           ``uuid``           ``TEXT``, 36-char lowercase canonical
:class:`UUIDArray`      ``uuid[]``         ``TEXT`` holding a JSON array of UUID strings
:class:`JSONB`          ``jsonb``          ``TEXT`` holding the JSON text
:class:`Timestamp`      ``timestamptz``    ``TEXT`` ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
======================  =================  ===========================================

Python values are the same on both backends: :class:`uuid.UUID`, ``list[uuid.UUID]``, any
JSON value (with :data:`JSON_NULL` for a top-level JSON ``null``, distinct from SQL ``NULL``
which is ``None``) and aware :class:`datetime.datetime` in UTC.  Naive datetimes are refused.

The server-side defaults (:func:`utcnow`, :func:`new_uuid`, :func:`empty_uuid_array`) compile
per dialect, so the same migration creates the right ``DEFAULT`` on either database.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler, TypeCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

__all__ = [
    "INITIAL_STATUSES",
    "JSONB",
    "JSON_NULL",
    "TASK_STATUSES",
    "UNFINISHED_STATUSES",
    "UUID",
    "JSONNull",
    "JSONText",
    "TaskStatus",
    "Timestamp",
    "TimestampText",
    "UUIDArray",
    "UUIDText",
    "Unreadable",
    "empty_uuid_array",
    "format_timestamp",
    "json_encoder",
    "new_uuid",
    "parse_timestamp",
    "to_uuid",
    "utcnow",
]


class TaskStatus(StrEnum):
    """The statuses a task can have (the ``tasks.status`` CHECK constraint)."""

    PENDING = "Pending"
    QUEUED = "Queued"
    IN_PROGRESS = "In Progress"
    COMPLETE = "Complete"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TASK_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in TaskStatus)
#: The statuses a task is created with (a worker's statuses come later).
INITIAL_STATUSES: Final[tuple[str, ...]] = (TaskStatus.QUEUED.value, TaskStatus.PENDING.value)
#: The statuses of a task that has not finished (what a failure or a cancellation cascades to).
UNFINISHED_STATUSES: Final[tuple[str, ...]] = (
    TaskStatus.PENDING.value,
    TaskStatus.QUEUED.value,
    TaskStatus.IN_PROGRESS.value,
)


class JSONNull:
    """Type of :data:`JSON_NULL`, the top-level JSON ``null`` (SQL ``NULL`` is ``None``)."""

    _instance: JSONNull | None = None

    def __new__(cls) -> JSONNull:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "JSON_NULL"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "JSON_NULL"


#: A JSON ``null`` stored as a value (SQL ``NULL`` is ``None``).
JSON_NULL: Final = JSONNull()


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored value that could not be decoded, in place of the value itself.

    Result processors return it instead of raising, so one bad row (written by another tool)
    never breaks the statement that read it; :meth:`dualdb.records.Record.from_row` turns it
    into :class:`~dualdb.errors.UnreadableRow` for that row only.
    """

    reason: str
    #: The stored value as text, shortened (for display; never decoded).
    raw: str
    #: The stored value as text, whole (a list cursor can name its place by it).
    stored: str = ""

    @classmethod
    def of(cls, value: object, err: BaseException) -> Unreadable:
        """The marker for ``value``, which failed to decode with ``err``."""
        text = value if isinstance(value, str) else repr(value)
        shown = text if len(text) <= 80 else text[:77] + "..."
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, RecursionError):
            reason = "JSON nested too deeply to decode"
        return cls(reason=reason[:200], raw=shown, stored=text)

    def __str__(self) -> str:
        return f"⚠ unreadable ({self.reason}): {self.raw}"


#: What a decoder may raise on a value another writer stored.
_DECODE_ERRORS = (ValueError, TypeError, RecursionError, OverflowError)


#: How :class:`UUID` is stored on SQLite (lowercase, hyphenated), as a regular expression.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


#: ``SafeUUID.unknown``, looked up once (an enum member costs a lookup per use).
_UNKNOWN_SAFETY: Final = _uuid.SafeUUID.unknown


def _uuid_of_canonical(text: str) -> _uuid.UUID:
    """The UUID of text already matched by ``_CANONICAL_UUID``, built from its integer the way
    unpickling builds one (``UUID.__setstate__``): ``UUID(text)`` would check and strip the
    text again, which costs a scan a third of its UUID decoding."""
    made = object.__new__(_uuid.UUID)
    object.__setattr__(made, "int", int(text.replace("-", ""), 16))
    object.__setattr__(made, "is_safe", _UNKNOWN_SAFETY)
    return made


#: UUIDs decoded from their canonical text, by that text, for the hot path's converters.  A
#: worker reads the same keys again and again: a task's id in its claim and its completion, its
#: project's id in every task, a dependency's id in its dependents.  A dict lookup costs a tenth
#: of decoding, and a UUID is immutable, so records may share one.  Emptied when full (a scan
#: of a million distinct keys pays a lookup and an insert per key, and keeps no more than this).
_UUIDS: dict[str, _uuid.UUID] = {}
_UUIDS_KEPT: Final = 4096


def _remembered_uuid(text: str) -> _uuid.UUID:
    """:func:`_uuid_of_canonical`, kept in :data:`_UUIDS` (``text`` is canonical)."""
    made = _uuid_of_canonical(text)
    if len(_UUIDS) >= _UUIDS_KEPT:
        _UUIDS.clear()
    _UUIDS[text] = made
    return made


#: The standard JSON decoder's scanner (C where there is one): ``(value, end)`` of the text
#: from an index.
_SCAN_JSON: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed names the scanner, not a decoder
)


def _json_loads(text: str) -> Any:
    """``json.loads(text)``, the scanner called at once where the text has no surrounding
    whitespace (JSON as the database stores it): ``loads`` wraps the same scanner in three
    Python calls and two regular-expression matches, about a third of decoding a small
    object.  Any other text goes through ``loads``: the same value, or the same error — but
    for nesting within a couple of levels of Python's recursion limit, where the frames this
    saves (or, for text with whitespace, adds) move the point at which either raises
    ``RecursionError``; the callers read that as an unreadable value either way."""
    try:
        parsed, end = _SCAN_JSON(text, 0)
    except StopIteration:  # no value where one was due: at 0 (whitespace, a BOM, nothing), or
        return json.loads(text)  # inside (truncated text); loads gives the error
    if end != len(text):  # trailing whitespace, or more than one value
        return json.loads(text)
    return parsed


#: A value converter (None: the value as the driver gives it).
Converter = Callable[[Any], Any] | None
#: The type code (OID) psycopg describes a ``uuid`` column with (built-in OIDs never change).
PG_UUID_OID: Final = 2950

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def to_uuid(value: object) -> _uuid.UUID:
    """Coerce ``value`` (a :class:`uuid.UUID` or its string form) to a UUID, else ``ValueError``."""
    if isinstance(value, _uuid.UUID):
        return value
    if isinstance(value, str) and _UUID_RE.match(value.strip()):
        return _uuid.UUID(value.strip())
    # uuid_utils.UUID and friends: anything whose str() is a canonical UUID.
    if value is not None and not isinstance(value, str | bytes | int | float):
        text = str(value)
        if _UUID_RE.match(text):
            return _uuid.UUID(text)
    raise ValueError(f"not a UUID: {value!r}")


#: The second of the last UTC instant :func:`utc_text` formatted, and its text: one tuple,
#: replaced whole, so a thread never pairs one second with another's text.
_utc_second: tuple[tuple[int, ...], str] = ((), "")


def utc_text(value: datetime) -> str:
    """:func:`format_timestamp` of a datetime whose ``tzinfo`` is ``UTC``.

    Each second's text is made once: the stamps a process writes come many to a second (a
    worker's claims and completions, a batch's rows), and ``isoformat`` costs three times
    the rest (the whole costs 1.2 µs against ``isoformat``'s 2.7; SQLite's clock function
    runs it inside the write lock).
    """
    global _utc_second
    second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    known = _utc_second
    if known[0] != second:
        # YYYY-MM-DDTHH:MM:SS: isoformat pads the year to four digits, and the fraction and
        # offset come after.
        known = _utc_second = (second, value.isoformat()[:19])
    return f"{known[1]}.{value.microsecond:06d}Z"


def format_timestamp(value: datetime) -> str:
    """The fixed-width UTC text form used on SQLite: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime: pass an aware datetime (e.g. datetime.now(UTC))")
    if offset:
        value = value.astimezone(UTC)
    # isoformat pads the year to four digits (strftime's %Y does not, below 1000) and, with
    # this timespec, always writes the microseconds; "+00:00" becomes "Z".
    return value.isoformat(timespec="microseconds")[:26] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse the SQLite text form (or ISO 8601 with an offset) to an aware UTC datetime."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class UUID(sa.types.TypeDecorator[_uuid.UUID]):
    """A UUID: native ``uuid`` on Postgres, canonical 36-char lowercase ``TEXT`` on SQLite."""

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=True))
        return dialect.type_descriptor(sa.types.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        u = to_uuid(value)
        return u if dialect.name == "postgresql" else str(u)

    def process_result_value(self, value: Any, dialect: Dialect) -> _uuid.UUID | None:
        if value is None:
            return None
        try:
            return to_uuid(value)
        except _DECODE_ERRORS as err:
            return Unreadable.of(value, err)  # type: ignore[return-value]

    def hot_bind_processor(self, dialect: Dialect, fallback: Converter) -> Converter:
        """The parameter converter of :mod:`dualdb.hotpath`: a :class:`uuid.UUID` at once,
        anything else through ``fallback`` (SQLAlchemy's own processor: the same checks)."""
        uuid_class = _uuid.UUID
        native = dialect.name == "postgresql"

        def convert(value: Any) -> Any:
            if value.__class__ is uuid_class:
                return value if native else str(value)
            return value if fallback is None else fallback(value)

        return convert

    def hot_result_processor(
        self, dialect: Dialect, coltype: object, fallback: Converter
    ) -> Converter:
        """The result converter of :mod:`dualdb.hotpath` for a column the driver describes as
        ``coltype``: the stored canonical form at once, anything else through ``fallback``
        (SQLAlchemy's own processor: the same verdict)."""
        uuid_class, match, made = _uuid.UUID, _CANONICAL_UUID.match, _remembered_uuid
        known = _UUIDS.get

        if dialect.name == "postgresql":
            if coltype == PG_UUID_OID:
                return None  # psycopg loads a uuid column as uuid.UUID (or None) already

            def native(value: Any) -> Any:
                if value.__class__ is uuid_class:
                    return value
                return value if value is None or fallback is None else fallback(value)

            return native

        def text(value: Any) -> Any:
            if value.__class__ is str:
                seen = known(value)
                if seen is not None:
                    return seen
                if match(value):
                    return made(value)
            return value if value is None or fallback is None else fallback(value)

        return text


def _uuid_array_storage(dialect: Dialect, *, as_uuid: bool) -> sa.types.TypeEngine[Any]:
    """How a list of UUIDs is stored: ``uuid[]`` on Postgres (items bound and read as
    :class:`uuid.UUID` or as text), JSON text on SQLite."""
    if dialect.name == "postgresql":
        item = postgresql.UUID(as_uuid=True) if as_uuid else postgresql.UUID(as_uuid=False)
        return dialect.type_descriptor(postgresql.ARRAY(item))
    return dialect.type_descriptor(sa.types.Text())


class UUIDArray(sa.types.TypeDecorator[list[_uuid.UUID]]):
    """A list of UUIDs: ``uuid[]`` on Postgres, a JSON array of canonical strings on SQLite."""

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        return _uuid_array_storage(dialect, as_uuid=True)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str | bytes):
            raise ValueError("a UUID list must be a list, not a string")
        items = [to_uuid(v) for v in value]
        if dialect.name == "postgresql":
            return items
        return json.dumps([str(u) for u in items], separators=(",", ":"))

    def hot_bind_processor(self, dialect: Dialect, fallback: Converter) -> Converter:
        """The parameter converter of :mod:`dualdb.hotpath`: a list of :class:`uuid.UUID`
        at once (as :meth:`process_bind_param` binds it), anything else through
        ``fallback`` (the same checks)."""
        uuid_class = _uuid.UUID
        native = dialect.name == "postgresql"

        def convert(value: Any) -> Any:
            if value.__class__ is list:
                for item in value:
                    if item.__class__ is not uuid_class:
                        break
                else:
                    if native:
                        return value
                    return "[" + ",".join([f'"{item}"' for item in value]) + "]"
            return value if fallback is None else fallback(value)

        return convert

    def process_result_value(self, value: Any, dialect: Dialect) -> list[_uuid.UUID] | None:
        if value is None:
            return None
        try:
            items = json.loads(value) if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ValueError("not a list of UUIDs")
            return [to_uuid(v) for v in items]
        except _DECODE_ERRORS as err:
            return Unreadable.of(value, err)  # type: ignore[return-value]

    def hot_result_processor(
        self, dialect: Dialect, coltype: object, fallback: Converter
    ) -> Converter:
        """The result converter of :mod:`dualdb.hotpath`: a list of canonical UUIDs (SQLite:
        JSON text) at once, anything else through ``fallback`` (the same verdict)."""
        uuid_class, match, loads = _uuid.UUID, _CANONICAL_UUID.match, _json_loads
        made, known = _remembered_uuid, _UUIDS.get

        if dialect.name == "postgresql":

            def native(value: Any) -> Any:
                # psycopg loads uuid[] as a list of uuid.UUID; a NULL element is unreadable.
                if value.__class__ is list:
                    for item in value:
                        if item.__class__ is not uuid_class:
                            break
                    else:
                        return value
                return value if value is None or fallback is None else fallback(value)

            return native

        def text(value: Any) -> Any:
            if value.__class__ is str:
                try:
                    items = loads(value)
                except _DECODE_ERRORS:
                    items = None
                if items.__class__ is list:
                    uuids = []
                    for item in items:
                        if item.__class__ is not str:
                            break  # not canonical: the fallback's verdict
                        seen = known(item)
                        if seen is None:
                            if not match(item):
                                break
                            seen = made(item)
                        uuids.append(seen)
                    else:
                        return uuids
            return value if value is None or fallback is None else fallback(value)

        return text


class _JSONStorage(sa.types.Text):
    """Storage for :class:`JSONB`: plain text to the driver; ``jsonb`` in Postgres DDL.

    On SQLite the declared type is ``TEXT``, not ``JSON``: a column declared ``JSON`` has NUMERIC
    affinity, so SQLite would silently turn a stored top-level ``0.0`` into the integer ``0`` and
    ``2**70`` into a rounded float.  ``TEXT`` affinity keeps the JSON text exactly as written.
    """

    __visit_name__ = "dualdb_json"


@compiles(_JSONStorage, "postgresql")
def _json_pg(type_: _JSONStorage, compiler: TypeCompiler, **kw: Any) -> str:
    return "JSONB"


@compiles(_JSONStorage)
def _json_default(type_: _JSONStorage, compiler: TypeCompiler, **kw: Any) -> str:
    return "TEXT"


class _OnPostgres(sa.sql.expression.ColumnElement[Any]):
    """``template`` wrapped around ``expr`` on Postgres; ``expr`` unchanged on other dialects."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's declaration, read-only
        ("expr", InternalTraversal.dp_clauseelement),
        ("template", InternalTraversal.dp_string),
    ]

    def __init__(self, expr: sa.sql.expression.ColumnElement[Any], template: str) -> None:
        self.expr = expr
        self.template = template
        self.type = expr.type


@compiles(_OnPostgres, "postgresql")
def _on_postgres_pg(element: _OnPostgres, compiler: SQLCompiler, **kw: Any) -> str:
    return element.template.format(compiler.process(element.expr, **kw))


@compiles(_OnPostgres)
def _on_postgres_default(element: _OnPostgres, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.expr, **kw)


#: Integral floats from here on are written out in full: Postgres' jsonb prints numbers without
#: an exponent, so ``1e300`` would otherwise come back as an int that is not equal to it.
_EXACT_FLOAT_FROM = 2.0**53


#: Deepest nesting of arrays/objects a stored JSON document may have (the top level is 1).
#: Every reader must be able to decode what is stored: Python's parser stops near 1,000
#: levels and recursive readers sooner, so dualdb and the database refuse more than this.
MAX_JSON_DEPTH = 64
#: The largest magnitude a stored JSON number may have (the largest finite 64-bit float): the
#: database refuses larger ones, which some readers would turn into infinity (JavaScript) or
#: refuse to parse at all (Python, past 4,300 digits).
MAX_JSON_NUMBER = 1.7976931348623157e308

_HEX = "[0-9a-f]"
#: The text of :class:`UUID` on SQLite (canonical: lowercase, hyphenated), as a GLOB pattern.
UUID_GLOB: Final = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
#: The text of :class:`Timestamp` on SQLite (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), as a GLOB pattern.
TIMESTAMP_GLOB: Final = (
    "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]."
    "[0-9][0-9][0-9][0-9][0-9][0-9]Z"
)


#: Where a value is in a document, for an error message: ``"$"``, or the path of its container
#: and its key (``str``) or index (``int``) there.  Text only when an error is raised
#: (:func:`_path_text`): a document's every value is checked, and formatting each one's path
#: cost more than the checks.
_JSONPath = str | tuple["_JSONPath", str | int]


def _path_text(path: _JSONPath) -> str:
    """``$.a[0].b`` for ``((("$", "a"), 0), "b")``."""
    if isinstance(path, str):
        return path
    parent, step = path
    return (
        f"{_path_text(parent)}[{step}]" if isinstance(step, int) else f"{_path_text(parent)}.{step}"
    )


def _check_json(value: Any, path: _JSONPath = "$", depth: int = 0) -> bool:
    """Reject what JSON (and jsonb) cannot hold exactly; True if a float needs writing in full.

    Refused: NaN/infinity, non-string keys, arbitrary objects, strings with NUL characters
    or lone surrogates (jsonb and UTF-8 cannot store them), nesting deeper than
    :data:`MAX_JSON_DEPTH` and numbers beyond ±:data:`MAX_JSON_NUMBER`.
    """
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, int):
        # Bit length first: converting a huge int to text is itself refused by Python.
        if abs(value) > MAX_JSON_NUMBER:  # an exact comparison, whatever the int's size
            raise ValueError(f"{_path_text(path)}: number outside the 64-bit float range")
        return False
    if isinstance(value, str):
        _check_text(value, path)
        return False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{_path_text(path)}: {value!r} is not valid JSON")
        return value.is_integer() and abs(value) >= _EXACT_FLOAT_FROM
    if isinstance(value, list | tuple | dict) and depth >= MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, list | tuple):
        exact = False
        for i, item in enumerate(value):
            exact |= _check_json(item, (path, i), depth + 1)
        return exact
    if isinstance(value, dict):
        exact = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{_path_text(path)}: object keys must be strings, not {key!r}")
            _check_text(key, path, " key")
            exact |= _check_json(item, (path, key), depth + 1)
        return exact
    raise ValueError(f"{_path_text(path)}: {type(value).__name__} is not JSON-serialisable")


def _check_text(value: str, path: _JSONPath, what: str = "") -> None:
    if "\x00" in value:
        raise ValueError(f"{_path_text(path)}{what}: text cannot contain NUL characters")
    if value.isascii():  # no lone surrogate (and no copy made to find out)
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{_path_text(path)}{what}: text is not valid Unicode (lone surrogate)"
        ) from None


def _encode_exact(value: Any) -> str:
    """JSON text with integral floats written in full decimal (``1e300`` → ``1000…0.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= _EXACT_FLOAT_FROM:
        return f"{Decimal(value):f}.0"
    if isinstance(value, dict):
        items = ",".join(f"{_dumps(k)}:{_encode_exact(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_exact(v) for v in value) + "]"
    return _dumps(value)


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_encoder(*, sort_keys: bool = False, allow_nan: bool = False) -> Callable[[Any], str]:
    """Compact JSON text of a value, non-ASCII as it is: ``JSONEncoder(ensure_ascii=False,
    separators=(",", ":"), sort_keys=…, allow_nan=…).encode``.

    Its C encoder, made once and called at once where there is one: ``encode`` makes a new
    one on every call, half the cost of encoding a small document.  Without the check for
    circular references: every caller checks the document first (:func:`_check_json`, which
    stops at :data:`MAX_JSON_DEPTH`) or encodes values a database gave.  (A container that
    iterates differently each time could pass the check and then loop: ``RecursionError``
    here, where ``JSONEncoder`` says "Circular reference detected".)
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C encoder
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, allow_nan=allow_nan
        ).encode
    chunks = make(
        None,  # no circular-reference markers (see above)
        _not_serialisable,
        json.encoder.encode_basestring,
        None,  # no indent
        ":",
        ",",
        sort_keys,
        False,  # skipkeys
        allow_nan,
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_dumps = json_encoder()


class SerialisedJSON(str):
    """JSON text dualdb has checked and serialised already, with the value it encodes.

    :class:`JSONB` binds it as it is instead of serialising the value again (a bulk insert
    serialises each document once).
    """

    value: Any

    def __new__(cls, text: str, value: Any) -> SerialisedJSON:
        made = super().__new__(cls, text)
        made.value = value
        return made


def serialise_json(value: Any, arrange: Callable[[Any], Any] | None = None) -> SerialisedJSON:
    """Check ``value`` as :func:`dump_json` does, then serialise ``arrange(value)`` (the same
    document rearranged, e.g. its keys reordered) once; ``ValueError`` if JSON cannot hold it."""
    exact = _check_json(value)
    arranged = value if arrange is None else arrange(value)
    return SerialisedJSON(_encode_exact(arranged) if exact else _dumps(arranged), arranged)


def dump_json(value: Any) -> str:
    """Serialise a JSON value (``JSON_NULL`` → ``null``); ``ValueError`` if JSON cannot hold it."""
    if value is JSON_NULL:
        return "null"
    if _check_json(value):
        return _encode_exact(value)
    return _dumps(value)


class _JSONOnPostgres:
    """How a JSON column travels on Postgres: cast to ``jsonb`` going in, read as text coming
    out, so the driver hands back the JSON unparsed (JSON null ≠ SQL NULL)."""

    def bind_expression(self, bindvalue: Any) -> Any:
        return _OnPostgres(bindvalue, "CAST({} AS JSONB)")

    def column_expression(self, column: Any) -> Any:
        return _OnPostgres(column, "({})::text")


class JSONB(_JSONOnPostgres, sa.types.TypeDecorator[Any]):
    """A JSON document: ``jsonb`` on Postgres, JSON text in a ``TEXT`` column on SQLite.

    ``None`` is SQL ``NULL``; :data:`JSON_NULL` is a stored JSON ``null``.  Nested ``None``
    values are JSON ``null`` as usual.  Integers of any size round-trip exactly.
    """

    impl = _JSONStorage
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, SerialisedJSON):
            return str(value)
        return dump_json(value)

    def hot_bind_processor(self, dialect: Dialect, fallback: Converter) -> Converter:
        """The parameter converter of :mod:`dualdb.hotpath`: ``None`` and text serialised
        already (:class:`SerialisedJSON`) at once, where the storage type binds text as it
        is; anything else through ``fallback``."""
        if self.impl_instance.dialect_impl(dialect).bind_processor(dialect) is not None:
            return fallback
        serialised = SerialisedJSON

        def convert(value: Any) -> Any:
            if value is None:
                return None
            if value.__class__ is serialised:
                return str(value)
            return value if fallback is None else fallback(value)

        return convert

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):  # pragma: no cover - the driver returned parsed JSON
            return JSON_NULL if value is None else value
        try:
            parsed = json.loads(value)
        except _DECODE_ERRORS as err:
            return Unreadable.of(value, err)
        return JSON_NULL if parsed is None else parsed

    def hot_result_processor(
        self, dialect: Dialect, coltype: object, fallback: Converter
    ) -> Converter:
        """The result converter of :mod:`dualdb.hotpath`: JSON text (what both backends hand
        back) parsed at once; anything else, and text that does not parse, through
        ``fallback`` (the same verdict: its :class:`Unreadable`)."""
        loads = _json_loads

        def text(value: Any) -> Any:
            if value.__class__ is str:
                try:
                    parsed = loads(value)
                except _DECODE_ERRORS:
                    pass
                else:
                    return JSON_NULL if parsed is None else parsed
            return value if value is None or fallback is None else fallback(value)

        return text


class JSONText(_JSONOnPostgres, sa.types.TypeDecorator[str]):
    """A :class:`JSONB` column read and written as its JSON text, untouched.

    For moving documents between databases (``dualdb copy``/``dump``/``load``): parsing to
    Python would turn ``1.10`` into ``1.1`` and lose integers past the float range's
    exactness, so the text goes through as it is (``CAST(… AS JSONB)`` on Postgres).
    """

    impl = _JSONStorage
    cache_ok = True


class UUIDText(sa.types.TypeDecorator[str]):
    """A :class:`UUID` column as its canonical text, both ways (``dualdb copy``'s bulk path:
    no :class:`uuid.UUID` objects made per value)."""

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(sa.types.Text())

    def column_expression(self, column: Any) -> Any:
        # Postgres prints a uuid in dualdb's form (lowercase, hyphenated): read as text, the
        # driver makes no uuid.UUID to be turned back into text.
        return _OnPostgres(column, "({})::text")

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None  # text on both backends (column_expression): nothing to convert


#: A timestamptz as dualdb's fixed-width UTC text, printed by Postgres.  Only instants that
#: text can hold (years 1 to 9999) go through ``to_char``, whose ``YYYY`` would drop "BC"; the
#: rest (infinity, BC, year 10000 on) come as Postgres prints them, which dualdb cannot read
#: (:class:`~dualdb.errors.UnreadableRow` in ``dualdb copy``), instead of as a wrong value.
_PG_TIMESTAMP_TEXT = (
    "(CASE WHEN {0} >= '0001-01-01T00:00:00Z' AND {0} < '10000-01-01T00:00:00Z' "
    """THEN to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') """
    "ELSE ({0})::text END)"
)


class TimestampText(sa.types.TypeDecorator[str]):
    """A :class:`Timestamp` column as its fixed-width UTC text, both ways (``dualdb copy``'s
    bulk path: SQLite's stored text goes through untouched; Postgres parses the text)."""

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.types.Text())

    def column_expression(self, column: Any) -> Any:
        # Printed by Postgres in dualdb's text: no datetime made and formatted per value.
        return _OnPostgres(column, _PG_TIMESTAMP_TEXT)

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None  # text on both backends (column_expression): nothing to convert


class UUIDArrayText(sa.types.TypeDecorator[list[str]]):
    """A :class:`UUIDArray` column as lists of canonical UUID text going in, and as it is
    stored coming out: a list of text on Postgres, the JSON text on SQLite (``dualdb copy``'s
    bulk path, which checks and decodes it: no :class:`uuid.UUID` objects made per value)."""

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        return _uuid_array_storage(dialect, as_uuid=False)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return _dumps(value) if value else "[]"  # most tasks depend on nothing

    def column_expression(self, column: Any) -> Any:
        return _OnPostgres(column, "({})::text[]")

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None  # Postgres' text[] is a list of str; SQLite's JSON text is decoded later


class Timestamp(sa.types.TypeDecorator[datetime]):
    """An instant: ``timestamptz`` on Postgres, fixed-width UTC ``TEXT`` on SQLite.

    Binding a naive datetime raises ``ValueError``; values come back aware, in UTC.
    """

    impl = sa.types.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.types.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise ValueError(f"not a datetime: {value!r}")
        text = format_timestamp(value)  # also rejects naive datetimes
        return value.astimezone(UTC) if dialect.name == "postgresql" else text

    def hot_bind_processor(self, dialect: Dialect, fallback: Converter) -> Converter:
        """The parameter converter of :mod:`dualdb.hotpath`: ``None``, and a UTC datetime
        at once (what :meth:`process_bind_param` would return: itself on Postgres, its text
        on SQLite), anything else through ``fallback`` (the same checks)."""
        native = dialect.name == "postgresql"

        def convert(value: Any) -> Any:
            if value is None:
                return None
            if value.__class__ is datetime and value.tzinfo is UTC:
                return value if native else utc_text(value)
            return value if fallback is None else fallback(value)

        return convert

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            return parse_timestamp(str(value))
        except _DECODE_ERRORS as err:
            return Unreadable.of(value, err)  # type: ignore[return-value]

    def hot_result_processor(
        self, dialect: Dialect, coltype: object, fallback: Converter
    ) -> Converter:
        """The result converter of :mod:`dualdb.hotpath`: the stored canonical form at once,
        anything else through ``fallback`` (SQLAlchemy's own processor: the same verdict)."""
        parse = datetime.fromisoformat

        if dialect.name == "postgresql":

            def native(value: Any) -> Any:
                if value.__class__ is datetime:
                    zone = value.tzinfo
                    if zone is UTC:  # the session is in UTC (PostgresBackend.create_engine)
                        return value
                    if zone is not None:
                        return value.astimezone(UTC)
                return value if value is None or fallback is None else fallback(value)

            return native

        def text(value: Any) -> Any:
            # YYYY-MM-DDTHH:MM:SS.ffffffZ, which Python reads as it is (an aware UTC instant).
            canonical = value.__class__ is str and len(value) == 27
            if canonical and value[10] == "T" and value[26] == "Z":
                try:
                    return parse(value)
                except ValueError:
                    pass
            return value if value is None or fallback is None else fallback(value)

        return text


# --- server-side defaults, compiled per dialect ------------------------------------------


class utcnow(FunctionElement[datetime]):
    """Server default: the current UTC instant, in each backend's storage format."""

    type = Timestamp()
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _utcnow_pg(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utcnow)
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # %f is SS.SSS; pad to microseconds so every stored value has the same width.
    return "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')"


class new_uuid(FunctionElement[_uuid.UUID]):
    """Server default: a random UUID (``gen_random_uuid()``; a v4 expression on SQLite)."""

    type = UUID()
    inherit_cache = True


@compiles(new_uuid, "postgresql")
def _new_uuid_pg(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(new_uuid)
def _new_uuid_sqlite(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        "(lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
        "substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
        "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))))"
    )


class empty_uuid_array(FunctionElement[list[_uuid.UUID]]):
    """Server default: an empty UUID list (``'{}'`` on Postgres, ``'[]'`` on SQLite)."""

    type = UUIDArray()
    inherit_cache = True


@compiles(empty_uuid_array, "postgresql")
def _empty_array_pg(element: empty_uuid_array, compiler: SQLCompiler, **kw: Any) -> str:
    return "'{}'::uuid[]"


@compiles(empty_uuid_array)
def _empty_array_sqlite(element: empty_uuid_array, compiler: SQLCompiler, **kw: Any) -> str:
    return "'[]'"
