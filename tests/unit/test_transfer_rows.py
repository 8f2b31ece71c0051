"""The portable row form and its canonical line (no database)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualdb.errors import InvalidInput
from dualdb.transfer.rows import (
    _SPACE_OUTSIDE_STRINGS,
    SPEC,
    _canonical,
    canonical_json,
    canonical_line,
    check_portable,
    minify_json,
)


@pytest.mark.parametrize(
    ("stored", "other"),
    [
        ('{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}'),  # jsonb's spacing and key order
        ('{"x": 100}', '{"x":1e2}'),  # a number's spelling
        ('{"x": 0.0000001}', '{"x":1e-7}'),
        ('{"x": 0.0}', '{"x":-0.0}'),  # Postgres' numeric has no negative zero
        ('{"x": 1, "x": 2}', '{"x":2}'),  # the last duplicate key wins, as in jsonb
    ],
)
def test_what_postgres_changes_has_one_canonical_form(stored: str, other: str) -> None:
    assert canonical_json(stored) == canonical_json(other)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('{"x":1.10}', '{"x":1.1}'),  # jsonb keeps the scale: 1.10 is not 1.1's text
        ('{"x":null}', '{"x":"null"}'),
        ('{"x":[1,2]}', '{"x":[2,1]}'),  # array order matters
        ('{"x":12345678901234567890123}', '{"x":12345678901234567890124}'),
    ],
)
def test_different_documents_stay_different(a: str, b: str) -> None:
    assert canonical_json(a) != canonical_json(b)


_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_documents, st.booleans())
def test_the_fast_canonical_form_is_the_exact_one(document: Any, spaced: bool) -> None:
    """Documents without fractional numbers take a fast path: it must give exactly the text
    the exact (Decimal) path gives, which every document with a fraction takes."""
    text = json.dumps(document, indent=1 if spaced else None)
    exact = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    assert canonical_json(text) == _canonical(exact)


@given(_documents)
def test_minify_gives_the_compact_text_of_any_spacing(document: Any) -> None:
    compact = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    for indent in (None, 2):
        spaced = json.dumps(document, ensure_ascii=False, indent=indent)
        assert minify_json(spaced) == compact
        # The quick test for "needs minifying" agrees with minifying.
        assert bool(_SPACE_OUTSIDE_STRINGS.match(spaced)) == (spaced != compact)
    assert minify_json(compact) == compact
    assert _SPACE_OUTSIDE_STRINGS.match(compact) is None


def test_an_integer_past_pythons_digit_limit_takes_the_exact_path() -> None:
    digits = "1" * 5000
    assert canonical_json(f'{{"n": {digits}}}') == f'{{"n":{digits}}}'


def test_minify_keeps_strings_and_numbers_as_written() -> None:
    assert minify_json('{"a b": "c  d", "n": 1.10, "e": "\\" x "}') == (
        '{"a b":"c  d","n":1.10,"e":"\\" x "}'
    )


def test_sql_null_and_json_null_have_different_lines() -> None:
    spec = SPEC["tasks"]
    row = [None] * len(spec.columns)
    params_at = spec.columns.index("params")
    json_null = list(row)
    json_null[params_at] = "null"
    assert canonical_line(spec, tuple(row)) != canonical_line(spec, tuple(json_null))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("id", "0190ABCD-0000-7000-8000-000000000000"),  # not canonical (uppercase)
        ("created_at", "2026-01-01 00:00:00"),  # not the fixed-width UTC form
        ("params", "{not json"),
        ("attempts", True),
        ("dependant_on", ["nope"]),
    ],
)
def test_a_dump_row_with_a_bad_value_is_refused(column: str, value: object) -> None:
    spec = SPEC["tasks"]
    good = {
        "id": "0190abcd-0000-7000-8000-000000000000",
        "task_type": "t",
        "params": "{}",
        "status": "Queued",
        "dependant_on": [],
        "created_at": "2026-01-01T00:00:00.000000Z",
        "project_id": "0190abcd-0000-7000-8000-000000000001",
        "attempts": 0,
        "unmet_dependencies": 0,
    }
    row = [good.get(c) for c in spec.columns]
    check_portable(spec, row, "line 1")
    row[spec.columns.index(column)] = value
    with pytest.raises(InvalidInput, match=f"line 1: column {column}"):
        check_portable(spec, row, "line 1")
