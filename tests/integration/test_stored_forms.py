"""Values stored in another form than dualdb's own read the same on the hot path.

:mod:`dualdb.hotpath` decodes the canonical stored text at once (``types.*.hot_result_processor``)
and hands anything else to the column type's own processor.  Another program may have stored a
value in another form, around the database's rules (its triggers switched off, as
``test_unreadable_rows`` does): each such value must read through ``get``, ``list`` and ``iter``
exactly as SQLAlchemy's path reads it — the same value, or the same unreadable column.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import dualdb
from dualdb.errors import UnreadableRow
from dualdb.records import Task
from dualdb.schema import tasks
from tests.integration.dal_support import World

DEP = uuid.UUID("0190abcd-0000-7000-8000-0000000000aa")

#: (column, stored SQL value) on SQLite, which keeps any text.
SQLITE_FORMS = [
    ("project_id", "PROJECT"),  # the task's own project id, in upper case
    ("project_id", "0190abcd_0000_7000_8000_0000000000aa"),  # 36 characters, not a UUID
    ("dependant_on", f'["{str(DEP).upper()}"]'),
    ("dependant_on", f'[ "{DEP}" ]'),
    ("dependant_on", f'["{{{DEP}}}"]'),  # braces: not a UUID to dualdb
    ("dependant_on", "[null]"),
    ("dependant_on", '"x"'),
    ("params", ' { "a" : 1 } '),
    ("params", "null"),
    ("params", "[1,"),
    ("created_at", "2026-01-02 03:04:05+02:00"),
    ("created_at", "2026-01-02T03:04:05.000000+00:00"),
    ("created_at", "2026-01-02T03:04:05Z"),
    ("updated_at", "2026-01-02T03:04:05.123456z"),
    ("updated_at", "2026-13-02T03:04:05.123456Z"),  # canonical shape, no such month
    ("heartbeat_at", "2026-01-02T03:04:05.123456-05:00"),
]
#: (column, stored SQL expression) on Postgres, whose types keep values in one form.
POSTGRES_FORMS = [
    ("dependant_on", "ARRAY[NULL]::uuid[]"),
    ("dependant_on", f"ARRAY['{DEP}', '{str(DEP).upper()}']::uuid[]"),
    ("params", "'null'::jsonb"),
    ("params", "'{\"a\": 1.10}'::jsonb"),
]


def _store(url: str, backend: str, task_id: uuid.UUID, column: str, value: str) -> None:
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            for (trigger,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks'"
            ).fetchall():
                conn.execute(f"DROP TRIGGER {trigger}")
            if value == "PROJECT":
                (project,) = conn.execute(
                    "SELECT project_id FROM tasks WHERE id = ?", (str(task_id),)
                ).fetchone()
                value = project.upper()
            conn.execute(f"UPDATE tasks SET {column} = ? WHERE id = ?", (value, str(task_id)))
            conn.commit()
        finally:
            conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("ALTER TABLE tasks DISABLE TRIGGER USER")
        pg.execute(f"UPDATE tasks SET {column} = {value} WHERE id = %s", (task_id,))  # type: ignore[arg-type]
        pg.execute("ALTER TABLE tasks ENABLE TRIGGER USER")


def _through_sqlalchemy(db: dualdb.Database, task_id: uuid.UUID) -> Task | str:
    """The task as SQLAlchemy's own path reads it, or the column it cannot read."""
    columns = [tasks.c[name] for name in Task.field_names()]
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(*columns).where(tasks.c.id == task_id)).one()
    try:
        return Task.from_row(row)
    except UnreadableRow as err:
        return err.column


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("column", "value"), SQLITE_FORMS)
def test_sqlite_text_in_another_form(
    db: dualdb.Database, world: World, migrated_url: str, column: str, value: str
) -> None:
    _reads_as_on_sqlalchemys_path(db, world, migrated_url, "sqlite", column, value)


@pytest.mark.postgres_only
@pytest.mark.parametrize(("column", "value"), POSTGRES_FORMS)
def test_postgres_values_in_another_form(
    db: dualdb.Database, world: World, migrated_url: str, column: str, value: str
) -> None:
    _reads_as_on_sqlalchemys_path(db, world, migrated_url, "postgresql", column, value)


def _reads_as_on_sqlalchemys_path(
    db: dualdb.Database, world: World, url: str, backend: str, column: str, value: str
) -> None:
    task_id = world.task.id
    _store(url, backend, task_id, column, value)
    expected = _through_sqlalchemy(db, task_id)

    listed = db.tasks.list()
    iterated = [t for t in db.tasks.iter() if t.id == task_id]
    if isinstance(expected, str):  # unreadable: the same column, on every path
        with pytest.raises(UnreadableRow) as caught:
            db.tasks.get(task_id)
        assert caught.value.column == expected
        assert [(p.id, p.column) for p in listed.unreadable] == [(task_id, expected)]
        assert iterated == []
        return
    got = db.tasks.get(task_id)
    assert got == expected
    assert [t for t in listed.items if t.id == task_id] == [expected]
    assert iterated == [expected]
    for name in ("created_at", "updated_at", "heartbeat_at"):  # always UTC, as on that path
        stamp = getattr(got, name)
        assert stamp is None or stamp.tzinfo is getattr(expected, name).tzinfo


def test_the_fast_uuid_is_an_ordinary_uuid() -> None:
    """The hot path builds a canonical UUID from its integer (as unpickling does): it must be
    indistinguishable from ``uuid.UUID(text)`` — if a Python release changes ``uuid.UUID``'s
    internals, ``dualdb.types._uuid_of_canonical`` must go back to ``uuid.UUID(text)``."""
    import pickle

    from dualdb.types import _uuid_of_canonical

    for text in (str(DEP), str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000"):
        made, plain = _uuid_of_canonical(text), uuid.UUID(text)
        assert type(made) is uuid.UUID
        assert (made, hash(made), str(made), repr(made)) == (plain, hash(plain), text, repr(plain))
        assert (made.is_safe, made.version, made.variant) == (
            plain.is_safe,
            plain.version,
            plain.variant,
        )
        assert pickle.loads(pickle.dumps(made)) == plain
        assert {made: 1}[plain] == 1


def test_uuids_read_again_are_the_ones_decoded_before() -> None:
    """The hot path keeps the UUIDs it decoded, by their text (``dualdb.types._UUIDS``): a
    text read again gives an equal UUID; text that is not canonical is never kept (the
    fallback still gives its verdict); the memo stays within its size."""
    from dualdb.types import _UUIDS, _UUIDS_KEPT, UUID, Unreadable, UUIDArray

    dialect = sa.create_engine("sqlite://").dialect

    def hot(type_: UUID | UUIDArray) -> Any:
        # As dualdb.hotpath builds a column's converter: the type's own processor behind it.
        fallback = type_.dialect_impl(dialect).result_processor(dialect, None)
        made = type_.hot_result_processor(dialect, None, fallback)
        assert made is not None
        return made

    convert, listed = hot(UUID()), hot(UUIDArray())
    texts = [str(uuid.uuid4()) for _ in range(_UUIDS_KEPT + 10)]
    for text in texts:
        first, again = convert(text), convert(text)
        assert first == again == uuid.UUID(text) and type(again) is uuid.UUID
        assert again is first and _UUIDS[text] is first  # kept, not decoded again
        assert len(_UUIDS) <= _UUIDS_KEPT
    assert listed(f'["{texts[-1]}", "{texts[0]}"]') == [uuid.UUID(texts[-1]), uuid.UUID(texts[0])]
    upper = texts[-1].upper()  # readable, but not the stored form: decoded, never kept
    assert convert(upper) == uuid.UUID(upper) and upper not in _UUIDS
    assert listed(f'["{upper}"]') == [uuid.UUID(upper)] and upper not in _UUIDS
    assert isinstance(convert("not-a-uuid"), Unreadable) and "not-a-uuid" not in _UUIDS
