"""Input validation, run before any SQL.

Every function takes the field name first so the :class:`~dualdb.errors.InvalidInput` it raises
names the offending argument.  The studio's forms use the same functions as the DAL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any, Final

from dualdb.errors import InvalidInput
from dualdb.types import (
    JSON_NULL,
    TASK_STATUSES,
    SerialisedJSON,
    dump_json,
    serialise_json,
    to_uuid,
)

#: Longest project/shot name.
MAX_NAME = 200
#: Longest task type.
MAX_TASK_TYPE = 100
#: Longest file location / URL.
MAX_LOCATION = 2048
#: Longest error text kept on a task (longer text is refused, not truncated).
MAX_ERROR = 10_000
#: Longest worker id.
MAX_WORKER_ID = 200
#: Largest params document, in bytes of JSON.
MAX_PARAMS_BYTES = 1_000_000
#: Most dependencies one task may have.
MAX_DEPENDENCIES = 1_000
#: Largest page a list may return.
MAX_LIMIT = 1_000
#: The most attempts a task may be given: the ``integer`` range of Postgres' queue functions
#: (migration 0008), so "retry forever" gets the same verdict on both backends.
MAX_ATTEMPTS = 2**31 - 1

_TASK_TYPE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")


def uuid_(field: str, value: object) -> uuid.UUID:
    """A UUID (or its string form)."""
    try:
        return to_uuid(value)
    except ValueError:
        raise InvalidInput(field, f"not a valid UUID: {_show(value)}") from None


def uuid_list(field: str, value: object, *, max_items: int = MAX_DEPENDENCIES) -> list[uuid.UUID]:
    """A list (or other non-string iterable) of UUIDs, duplicates removed, order kept."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput(field, "must be a list of UUIDs")
    out: list[uuid.UUID] = []
    seen: set[uuid.UUID] = set()
    for i, item in enumerate(value):
        u = uuid_(f"{field}[{i}]", item)
        if u not in seen:
            seen.add(u)
            out.append(u)
    if len(out) > max_items:
        raise InvalidInput(field, f"at most {max_items} items")
    return out


def text(
    field: str, value: object, *, max_len: int, allow_empty: bool = False, strip: bool = True
) -> str:
    """A string within ``max_len`` characters, with no NUL characters (Postgres refuses them)."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, not {type(value).__name__}")
    out = value.strip() if strip else value
    if not out and not allow_empty:
        raise InvalidInput(field, "must not be empty")
    if len(out) > max_len:
        raise InvalidInput(field, f"must be at most {max_len} characters (got {len(out)})")
    if "\x00" in out:
        raise InvalidInput(field, "must not contain NUL characters")
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "is not valid Unicode") from None
    return out


def optional_text(field: str, value: object, *, max_len: int) -> str | None:
    """``None``, or :func:`text` (empty allowed)."""
    if value is None:
        return None
    return text(field, value, max_len=max_len, allow_empty=True, strip=False)


def name(field: str, value: object) -> str:
    """A display name: non-empty after trimming, at most :data:`MAX_NAME` characters."""
    return text(field, value, max_len=MAX_NAME)


def task_type(field: str, value: object) -> str:
    """A task type such as ``single_image`` or ``travel_stitch``."""
    out = text(field, value, max_len=MAX_TASK_TYPE)
    if not _TASK_TYPE_RE.match(out):
        raise InvalidInput(field, "letters, digits, '_', '.', ':' and '-' only")
    return out


def task_types(field: str, value: object) -> list[str] | None:
    """``None`` (every type) or a non-empty list of task types.

    A bare string is refused: iterating it would yield its letters and match nothing.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput(
            field, f"must be a list of task types, e.g. [{value!r}], not {type(value).__name__}"
        )
    out = [task_type(field, t) for t in value]
    if not out:
        raise InvalidInput(field, "must name at least one type (or be None for all)")
    return out


def status(field: str, value: object) -> str:
    """One of the task statuses (exact spelling: ``Queued``, ``In Progress``, …)."""
    if not isinstance(value, str) or value not in TASK_STATUSES:
        allowed = ", ".join(TASK_STATUSES)
        raise InvalidInput(field, f"{_show(value)} is not a task status (one of: {allowed})")
    return value


def json_document(field: str, value: object, *, max_bytes: int = MAX_PARAMS_BYTES) -> Any:
    """A JSON value (``JSON_NULL`` for a JSON null) that round-trips exactly on both backends."""
    if value is None:
        raise InvalidInput(field, "must be a JSON value (use dualdb.types.JSON_NULL for null)")
    try:
        encoded = dump_json(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(field, f"not storable as JSON: {exc}") from None
    if len(encoded.encode("utf-8")) > max_bytes:
        raise InvalidInput(field, f"larger than {max_bytes} bytes of JSON")
    return value if value is not JSON_NULL else JSON_NULL


def params(field: str, value: object) -> dict[str, Any]:
    """Task params: a JSON object, returned as the backends give it back.

    That is a fresh copy (tuples become lists, later changes to ``value`` do not leak in) with
    every object's keys in jsonb's order (shorter keys first, then bytewise), which Postgres
    imposes; storing that order on SQLite too makes ``params`` identical on both backends.
    """
    out: dict[str, Any] = params_json(field, value).value
    return out


def params_json(field: str, value: object) -> SerialisedJSON:
    """:func:`params` and its JSON text, checked and serialised once (what is stored).

    The size limit is that of the stored text (jsonb's key order, no negative zero).
    """
    if not isinstance(value, dict):
        raise InvalidInput(field, f"must be a JSON object (dict), not {type(value).__name__}")
    try:
        out = serialise_json(value, _jsonb_order)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(field, f"not storable as JSON: {exc}") from None
    # A character is at most 4 bytes of UTF-8: most documents need no encoding to know.
    if len(out) * 4 > MAX_PARAMS_BYTES and len(out.encode("utf-8")) > MAX_PARAMS_BYTES:
        raise InvalidInput(field, f"larger than {MAX_PARAMS_BYTES} bytes of JSON")
    return out


#: Values :func:`_jsonb_order` copies as they are (exactly these classes: a subclass goes
#: through it, which gives the same value).
_AS_THEY_ARE = frozenset({str, int, bool, type(None)})


def _utf8_length(key: str) -> int:
    return len(key.encode("utf-8"))


def _jsonb_order(value: Any) -> Any:
    """A fresh copy of a checked JSON value, every object's keys in jsonb's order (tuples
    become lists, as a JSON round trip makes them)."""
    if isinstance(value, dict):
        # jsonb's order: shorter keys (in UTF-8 bytes) first, then bytewise.  Code point
        # order is UTF-8's byte order (for checked text: no lone surrogates), so for plain
        # str keys a sort of the keys, then a stable sort by length, gives it without a key
        # function per key where every key is ASCII (a character per byte).
        if all(k.__class__ is str for k in value):
            keys = sorted(value)
            keys.sort(key=len if all(map(str.isascii, keys)) else _utf8_length)
        else:  # a subclass may compare or measure itself otherwise: its bytes decide
            keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        plain = _AS_THEY_ARE
        return {
            k: item if (item := value[k]).__class__ in plain else _jsonb_order(item) for k in keys
        }
    if isinstance(value, list | tuple):
        plain = _AS_THEY_ARE
        return [item if item.__class__ in plain else _jsonb_order(item) for item in value]
    if isinstance(value, float) and value == 0.0:
        return 0.0  # jsonb numbers have no negative zero
    return value


def non_negative_int(field: str, value: object, *, maximum: int | None = None) -> int:
    """An ``int`` ≥ 0 (and ≤ ``maximum``); booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be an integer, not {type(value).__name__}")
    if value < 0:
        raise InvalidInput(field, "must not be negative")
    if maximum is not None and value > maximum:
        raise InvalidInput(field, f"must be at most {maximum}")
    return value


def limit(field: str, value: object) -> int:
    """A page size between 1 and :data:`MAX_LIMIT`."""
    out = non_negative_int(field, value, maximum=MAX_LIMIT)
    if out == 0:
        raise InvalidInput(field, "must be at least 1")
    return out


def _show(value: object) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 60 else text_[:57] + "..."
