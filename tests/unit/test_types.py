"""Portable types without a database: formatting, parsing and validation rules."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from dualdb.backends.sqlite import _clock_text
from dualdb.hotpath import bind_converter
from dualdb.types import (
    JSON_NULL,
    JSONB,
    TASK_STATUSES,
    Timestamp,
    UUIDArray,
    _json_loads,
    dump_json,
    format_timestamp,
    parse_timestamp,
    serialise_json,
    to_uuid,
    utc_text,
)


def test_statuses_are_the_seed_set() -> None:
    assert set(TASK_STATUSES) == {
        "Pending",
        "Queued",
        "In Progress",
        "Complete",
        "Failed",
        "Cancelled",
    }


def test_timestamp_text_is_fixed_width_utc() -> None:
    dt = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert format_timestamp(dt) == "2024-03-01T17:00:00.000000Z"
    assert format_timestamp(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2024, 1, 1))


@given(st.datetimes(timezones=st.timezones()))
def test_timestamp_text_round_trips_and_sorts(dt: datetime) -> None:
    text = format_timestamp(dt)
    assert len(text) == 27
    back = parse_timestamp(text)
    assert back == dt.astimezone(UTC)  # as UTC: PEP 495 wall times in a gap compare unequal
    assert back.tzinfo is UTC


@given(st.datetimes(timezones=st.timezones()))
def test_timestamp_text_is_every_field_of_the_utc_instant(dt: datetime) -> None:
    try:
        v = dt.astimezone(UTC)
    except OverflowError:
        with pytest.raises(OverflowError):
            format_timestamp(dt)
        return
    assert format_timestamp(dt) == (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T"
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}Z"
    )


@given(st.lists(st.datetimes(timezones=st.timezones()), min_size=2, max_size=20))
def test_text_order_is_time_order(values: list[datetime]) -> None:
    assert sorted(values, key=lambda v: v.timestamp()) == sorted(values, key=format_timestamp)


@given(st.lists(st.datetimes(timezones=st.just(UTC)), min_size=1))
def test_utc_text_is_format_timestamp(instants: list[datetime]) -> None:
    """``utc_text`` (each second's text made once) gives ``format_timestamp``'s text,
    whatever order the instants come in."""
    for instant in instants:
        # The instant, the start of its second, the instant again: from the second's cache.
        for value in (instant, instant.replace(microsecond=0), instant):
            assert utc_text(value) == format_timestamp(value)


def test_sqlite_clock_reads_the_time_now() -> None:
    before = format_timestamp(datetime.now(UTC))
    text = _clock_text()
    assert before <= text <= format_timestamp(datetime.now(UTC))


def test_uuid_coercion() -> None:
    u = uuid.uuid4()
    assert to_uuid(str(u).upper()) == u
    assert to_uuid(u.hex) == u
    for bad in ("nope", "", 123, None, "1234"):
        with pytest.raises(ValueError):
            to_uuid(bad)


def test_json_null_is_distinct_and_serialises_as_null() -> None:
    assert dump_json(JSON_NULL) == "null"
    assert dump_json({"a": None}) == '{"a":null}'
    assert repr(JSON_NULL) == "JSON_NULL"


@pytest.mark.parametrize(
    "bad",
    [float("nan"), {"x": float("inf")}, {1: "int key"}, {"s": {1, 2}}, "nul\x00", {"k": "\ud800"}],
)
def test_json_refuses_what_it_cannot_hold(bad: object) -> None:
    with pytest.raises(ValueError):
        dump_json(bad)


_DIALECTS = [sqlite_dialect(), psycopg_dialect()]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def _outcome(convert: Any, value: Any) -> tuple[str, Any, type]:
    """What ``convert`` makes of ``value``: the result and its type, or the error's type."""
    try:
        got = convert(value) if convert else value
    except (ValueError, TypeError) as err:
        return ("refused", None, type(err))
    return ("bound", got, type(got))


def _serialised(documents: list[object]) -> list[object]:
    out: list[object] = []
    for document in documents:
        with contextlib.suppress(ValueError):  # refused before it could be bound
            out.append(serialise_json(document))
    return out


@pytest.mark.parametrize("dialect", _DIALECTS, ids=lambda d: d.name)
@given(
    stamps=st.lists(st.none() | st.datetimes(timezones=st.timezones()), max_size=4),
    lists=st.lists(st.lists(st.uuids() | st.uuids().map(str), max_size=3), max_size=4),
    documents=st.lists(_JSON, max_size=4),
)
def test_hot_bind_converters_bind_what_the_types_bind(
    dialect: Dialect,
    stamps: list[datetime | None],
    lists: list[list[uuid.UUID | str]],
    documents: list[object],
) -> None:
    """The hot path's shortcuts (``hot_bind_processor``) give what SQLAlchemy's own bind
    processing of the type gives, value for value and type for type (or refuse alike)."""
    cases: list[tuple[TypeEngine[Any], list[Any]]] = [
        (Timestamp(), [*stamps, datetime(2026, 1, 1)]),  # naive: refused
        (UUIDArray(), [*lists, "not a list"]),
        (JSONB(), [*documents, *_serialised(documents)]),
    ]
    for type_, values in cases:
        hot = bind_converter(type_, dialect)
        generic = type_.dialect_impl(dialect).bind_processor(dialect)
        for value in values:
            assert _outcome(hot, value) == _outcome(generic, value), (type_, value)


def _verdict(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", loads(text)
    except (ValueError, RecursionError) as err:
        return type(err).__name__, None


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@given(
    _JSON_VALUES,
    st.sampled_from(["", " ", "\n", "\t ", "\r\n"]),
    st.sampled_from(["", " ", "\n", "\r", "x", "{}", ",1", "\x00"]),
    st.booleans(),
    st.booleans(),
)
def test_the_fast_json_decoder_gives_json_loads_verdict(
    value: Any, before: str, after: str, compact: bool, ascii_only: bool
) -> None:
    """The hot path's JSON decoding (the scanner called at once) reads every text as
    ``json.loads`` does: the same value, or the same kind of error (whitespace around the
    value, a second value after it, nothing at all; raw non-ASCII and lone surrogates).  Not
    drawn: nesting within a couple of levels of the recursion limit (see ``_json_loads``)."""
    separators = (",", ":") if compact else (", ", ": ")
    text = before + json.dumps(value, separators=separators, ensure_ascii=ascii_only) + after
    ours, theirs = _verdict(_json_loads, text), _verdict(json.loads, text)
    # NaN never equals itself: compare the texts they serialise back to.
    assert json.dumps(ours) == json.dumps(theirs)


@pytest.mark.parametrize(
    "text",
    ["", " ", "\ufeff{}", "tru", '{"a":1', "[" * 100_000, "1 2", "-", "[1,", "[1,]", "{}\x00"],
)
def test_the_fast_json_decoder_refuses_what_json_loads_refuses(text: str) -> None:
    assert _verdict(_json_loads, text)[0] == _verdict(json.loads, text)[0] != "value"


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)  # no lone surrogates
_CHECKED_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=5),
    max_leaves=12,
)  # fmt: skip


def _keys_in_jsonb_order(value: Any) -> bool:
    if isinstance(value, dict):
        keys = list(value)
        wanted = sorted(keys, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return keys == wanted and all(_keys_in_jsonb_order(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_in_jsonb_order(v) for v in value)
    return True


@given(_CHECKED_JSON)
def test_params_are_a_copy_in_jsonbs_key_order_encoded_as_json_does(value: Any) -> None:
    """``params_json`` copies a document with every object's keys in jsonb's order (shorter in
    UTF-8 first, then bytewise: what Postgres gives back); dualdb's encoder writes what the
    standard one writes (compact, non-ASCII as it is)."""
    from dualdb.types import _dumps
    from dualdb.validation import _jsonb_order

    ordered = _jsonb_order(value)
    assert _keys_in_jsonb_order(ordered)
    assert json.loads(json.dumps(ordered)) == json.loads(json.dumps(value))  # same document
    standard = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert _dumps(ordered) == standard.encode(ordered)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"x": [1, {"y": float("-inf")}]}, "$.x[1].y: -inf is not valid JSON"),
        ({"x": {2: "y"}}, "$.x: object keys must be strings, not 2"),
        ({"a\x00": 1}, "$ key: text cannot contain NUL characters"),
        ({"x": ["ok", "a\x00b"]}, "$.x[1]: text cannot contain NUL characters"),
        ({"é": {"\ud800": 1}}, "$.é key: text is not valid Unicode (lone surrogate)"),
        ({"k": [[{"z": "\udfff"}]]}, "$.k[0][0].z: text is not valid Unicode (lone surrogate)"),
        ({"x": {"y": 2**1100}}, "$.x.y: number outside the 64-bit float range"),
        ({"x": [object()]}, "$.x[0]: object is not JSON-serialisable"),
        ([float("nan")], "$[0]: nan is not valid JSON"),
    ],
)
def test_a_refused_document_names_where_it_fails(document: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        dump_json(document)
    assert str(refused.value) == message


def test_keys_that_compare_themselves_otherwise_still_get_jsonbs_order() -> None:
    """A ``str`` subclass key may define its own ``<``: jsonb's order is its UTF-8 bytes'."""
    from dualdb.validation import params_json

    class Backwards(str):
        def __lt__(self, other: object) -> bool:
            return str(self) > str(other)

    keys = [Backwards(k) for k in ("c", "a", "é", "bb")]
    assert list(params_json("params", dict.fromkeys(keys, 1)).value) == ["a", "c", "bb", "é"]
