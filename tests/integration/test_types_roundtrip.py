"""Round-trip property tests of the portable types on a real SQLite file and a real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualdb.config import resolve
from dualdb.engine import create_engine
from dualdb.types import JSON_NULL, JSONB, UUID, Timestamp, UUIDArray

md = sa.MetaData()
scratch = sa.Table(
    "type_scratch",
    md,
    sa.Column("k", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("u", UUID()),
    sa.Column("ua", UUIDArray()),
    sa.Column("j", JSONB()),
    sa.Column("ts", Timestamp()),
)

HYPO = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | text
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = create_engine(resolve(db_url))
    md.create_all(eng)
    yield eng
    eng.dispose()


def roundtrip(engine: sa.Engine, **values: Any) -> sa.Row[Any]:
    with engine.begin() as conn:
        conn.execute(scratch.delete())
        conn.execute(scratch.insert().values(k=1, **values))
    with engine.connect() as conn:
        return conn.execute(sa.select(scratch).where(scratch.c.k == 1)).one()


@HYPO
@given(u=st.uuids(), ua=st.lists(st.uuids(), max_size=50))
def test_uuid_and_uuid_list(engine: sa.Engine, u: uuid.UUID, ua: list[uuid.UUID]) -> None:
    row = roundtrip(engine, u=u, ua=ua)
    assert row.u == u
    assert row.ua == ua


def test_long_uuid_list(engine: sa.Engine) -> None:
    ua = [uuid.uuid4() for _ in range(2000)]
    assert roundtrip(engine, ua=ua).ua == ua
    assert roundtrip(engine, ua=[]).ua == []


@HYPO
@given(value=json_values)
def test_json_values(engine: sa.Engine, value: Any) -> None:
    row = roundtrip(engine, j=value)
    assert row.j == value  # a top-level None is SQL NULL, and comes back as None
    assert type(row.j) is type(value)


@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1, [2, [3, {"deep": None}]]]}},
        {"unicode": "héllo wörld ✓ 日本語 🎬"},
        {"big": 2**100, "neg": -(2**80), "float": 1.5e-300, "huge": 1.7976931348623157e308},
        [None, None],
        "just a string",
        0,
        False,
    ],
)
def test_json_examples(engine: sa.Engine, value: Any) -> None:
    assert roundtrip(engine, j=value).j == value


def test_sql_null_and_json_null_stay_distinct(engine: sa.Engine) -> None:
    assert roundtrip(engine, j=None).j is None
    assert roundtrip(engine, j=JSON_NULL).j is JSON_NULL
    with engine.connect() as conn:
        null_rows = conn.execute(sa.select(sa.func.count()).where(scratch.c.j.is_(None))).scalar()
    assert null_rows == 0  # the JSON null row is not SQL NULL


@HYPO
@given(ts=st.datetimes(timezones=st.timezones()))
def test_aware_datetimes_come_back_equal_in_utc(engine: sa.Engine, ts: datetime) -> None:
    row = roundtrip(engine, ts=ts)
    # Compared as UTC: PEP 495 makes a wall time inside a DST gap unequal to every other zone.
    assert row.ts == ts.astimezone(UTC)
    assert row.ts.timestamp() == ts.timestamp()
    assert row.ts.utcoffset() is not None and row.ts.utcoffset().total_seconds() == 0
    assert row.ts.microsecond == ts.astimezone(UTC).microsecond


def test_naive_datetime_is_rejected_and_nothing_written(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive"), engine.begin() as conn:
        conn.execute(scratch.insert().values(k=2, ts=datetime(2024, 1, 1)))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scratch)).scalar() == 0


@HYPO
@given(values=st.lists(st.datetimes(timezones=st.timezones()), min_size=2, max_size=15))
def test_ordering_by_timestamp_is_time_order(engine: sa.Engine, values: list[datetime]) -> None:
    with engine.begin() as conn:
        conn.execute(scratch.delete())
        conn.execute(scratch.insert(), [{"k": i, "ts": v} for i, v in enumerate(values)])
    with engine.connect() as conn:
        got = conn.execute(sa.select(scratch.c.ts).order_by(scratch.c.ts, scratch.c.k)).scalars()
        assert list(got) == sorted(v.astimezone(UTC) for v in values)
