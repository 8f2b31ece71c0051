"""Large ``create_many`` batches go in through the driver (unscoped): ``COPY`` on Postgres
(from ``dualdb.backends.postgres.COPY_FROM_ROWS`` rows), multi-row ``INSERT`` statements of up
to 1,000 rows on SQLite (from ``dualdb.backends.sqlite.BULK_ROWS``), then are read back; the
results, the database's rules and the errors are those of a small batch's ``INSERT``, on both
backends.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import dualdb
from dualdb.backends.postgres import COPY_FROM_ROWS
from dualdb.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tests.integration.dal_support import World

#: Above both thresholds; on SQLite two statements (1,000 rows, then 200), so a row refused
#: in the second leaves nothing of the first.
LARGE = COPY_FROM_ROWS + 200


def _rows(project_id: uuid.UUID, n: int) -> list[dict[str, Any]]:
    """``n`` tasks; every second one depends on the one before it."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        key = uuid.uuid4()
        deps = [rows[-1]["id"]] if i % 2 == 1 else []
        rows.append(
            {
                "id": key,
                "project_id": project_id,
                "task_type": "bench",
                "params": {"i": i, "b": [1, 2.5, None], "a": {"z": "ü", "y": -0.0}},
                "depends_on": deps,
            }
        )
    return rows


def test_a_large_batch_is_stored_and_returned_like_a_small_one(
    db: dualdb.Database, world: World
) -> None:
    made = db.tasks.create_many(_rows(world.project.id, LARGE))

    assert len(made) == LARGE
    assert [t.params["i"] for t in made] == list(range(LARGE))
    assert made[0].params == {"a": {"y": 0.0, "z": "ü"}, "b": [1, 2.5, None], "i": 0}
    assert list(made[0].params) == ["a", "b", "i"]  # jsonb's key order, on both backends
    for task in (made[0], made[1], made[-1]):
        assert db.tasks.get(task.id) == task
    assert made[1].dependant_on == [made[0].id]
    counts = db.tasks.counts()
    assert counts["Queued"] == LARGE + 2  # the world's two tasks are Queued too
    # The database's rules ran for every row: only the tasks without a dependency are ready.
    claimed = [t for _ in range(2) for t in db.tasks.claim_many("w", limit=1000)]
    assert {t.id for t in claimed} == {t.id for t in made[::2]} | {world.task.id} | {
        world.other_task.id
    }


@pytest.mark.parametrize("size", [1, LARGE], ids=["one", "large"])
def test_an_id_taken_is_the_same_conflict_and_nothing_is_written(
    db: dualdb.Database, world: World, size: int
) -> None:
    rows = _rows(world.project.id, size)
    rows[-1]["id"] = world.task.id
    rows[-1]["depends_on"] = []
    before = db.tasks.count()

    with pytest.raises(Conflict) as raised:
        db.tasks.create_many(rows)

    assert "a task with this id exists" in str(raised.value)
    assert db.tasks.count() == before


@pytest.mark.parametrize("size", [1, LARGE], ids=["one", "large"])
def test_a_missing_project_is_not_found_and_nothing_is_written(
    db: dualdb.Database, world: World, size: int
) -> None:
    missing = uuid.uuid4()
    before = db.tasks.count()

    with pytest.raises(NotFound, match=f"project {missing} not found"):
        db.tasks.create_many(_rows(missing, size))

    assert db.tasks.count() == before


def test_a_bad_row_anywhere_is_refused_before_anything_is_written(
    db: dualdb.Database, world: World
) -> None:
    rows = _rows(world.project.id, LARGE)
    rows[LARGE // 2]["params"] = {"x": float("nan")}
    before = db.tasks.count()

    with pytest.raises(InvalidInput) as raised:
        db.tasks.create_many(rows)

    assert raised.value.field == "params"
    assert db.tasks.count() == before


def test_a_signed_in_user_s_large_batch_is_written_too(db: dualdb.Database, world: World) -> None:
    """COPY FROM is refused under row-level security: a user's batch goes through INSERT."""
    mine = db.as_user(world.user.id)
    made = mine.tasks.create_many(_rows(world.project.id, LARGE))

    assert len(made) == LARGE
    assert db.tasks.get(made[-1].id) == made[-1]
    with pytest.raises(PermissionDenied):
        mine.tasks.create_many(_rows(world.other_project.id, LARGE))
