"""Large ``create_many`` batches go in through the driver (unscoped): ``COPY`` on Postgres
(from ``dualdb.backends.postgres.COPY_FROM_ROWS`` rows), multi-row ``INSERT`` statements of up
to 1,000 rows on SQLite (from ``dualdb.backends.sqlite.BULK_ROWS``), then are read back; the
results, the database's rules and the errors are those of a small batch's ``INSERT``, on both
backends.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import dualdb
from benchmarks.targets import psycopg_dsn
from dualdb.backends.postgres import COPY_FROM_ROWS
from dualdb.errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound, PermissionDenied
from tests.integration.dal_support import World, assert_unchanged

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


# --- Verdicts of a batch streamed into the bulk path ------------------------------------------
# On Postgres a large batch is validated while COPY loads it, and checked against the database
# after; these are the cases where that order could show.  Every verdict must be the one a small
# batch (validated, checked, then inserted) gets, on both backends.


@pytest.mark.parametrize("size", [1, LARGE], ids=["one", "large"])
def test_a_bad_last_row_outranks_a_missing_project(
    db: dualdb.Database, world: World, size: int
) -> None:
    rows = _rows(uuid.uuid4(), size)
    rows[-1]["status"] = "Complete"

    caught = assert_unchanged(db, lambda: db.tasks.create_many(rows), InvalidInput, "status")

    assert "a new task starts as 'Queued' or 'Pending'" in str(caught)


@pytest.mark.parametrize("size", [1, LARGE], ids=["one", "large"])
def test_a_missing_project_outranks_a_taken_id(
    db: dualdb.Database, world: World, size: int
) -> None:
    missing = uuid.uuid4()
    rows = _rows(missing, size)
    rows[-1]["id"] = world.task.id
    rows[-1]["depends_on"] = []

    caught = assert_unchanged(db, lambda: db.tasks.create_many(rows), NotFound, None)

    assert f"project {missing} not found" in str(caught)


#: The field a spoiled batch is refused on, and words of the message.
Spoiled = tuple[str, str]


def _waits_on_a_cancelled_task(db: dualdb.Database, world: World, rows: list[Any]) -> Spoiled:
    db.tasks.cancel(world.task.id)
    rows[-1]["depends_on"] = [world.task.id]
    return "depends_on", f"task {world.task.id} is Cancelled: it will never complete"


def _waits_on_a_later_task(db: dualdb.Database, world: World, rows: list[Any]) -> Spoiled:
    rows[-2]["depends_on"] = [rows[-1]["id"]]
    return "depends_on", f"task {rows[-1]['id']} does not exist"


def _names_another_project_s_shot(db: dualdb.Database, world: World, rows: list[Any]) -> Spoiled:
    elsewhere = db.shots.create(world.other_project.id, "Elsewhere")
    rows[-1]["params"] = {"shot_id": str(elsewhere.id)}
    return "params.shot_id", f"shot {elsewhere.id} is not in this project"


@pytest.mark.parametrize("size", [2, LARGE], ids=["two", "large"])
@pytest.mark.parametrize(
    "spoil",
    [_waits_on_a_cancelled_task, _waits_on_a_later_task, _names_another_project_s_shot],
    ids=["cancelled-dependency", "later-dependency", "another-project-s-shot"],
)
def test_a_row_the_database_checks_refuse_is_refused_as_in_a_small_batch(
    db: dualdb.Database,
    world: World,
    size: int,
    spoil: Callable[[dualdb.Database, World, list[Any]], Spoiled],
) -> None:
    """The checks against the database run after a streamed batch's load: the same verdict."""
    rows = _rows(world.project.id, size)
    field, message = spoil(db, world, rows)

    caught = assert_unchanged(db, lambda: db.tasks.create_many(rows), InvalidInput, field)

    assert message in str(caught)


def test_a_large_batch_leaves_the_garbage_collector_as_it_found_it(
    db: dualdb.Database, world: World
) -> None:
    """The cyclic collector is paused during a bulk write, and only switched back on if it
    was on: after a success, after a refusal, and when the caller had it off."""
    assert gc.isenabled()
    db.tasks.create_many(_rows(world.project.id, LARGE))
    assert gc.isenabled()
    bad = _rows(world.project.id, LARGE)
    bad[-1]["params"] = {"x": float("inf")}
    with pytest.raises(InvalidInput):
        db.tasks.create_many(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        db.tasks.create_many(_rows(world.project.id, LARGE))
        assert not gc.isenabled()
    finally:
        gc.enable()


class _OnRead(dict[str, Any]):
    """Params that run ``action`` once, when validation first reads their keys (a streamed
    batch is being written by then), and keep what it returned."""

    def __init__(self, action: Callable[[], object]) -> None:
        super().__init__(probe=True)
        self._action = action
        self.ran = False
        self.result: object = None

    def __iter__(self) -> Iterator[str]:
        if not self.ran:
            self.ran = True
            self.result = self._action()
        return super().__iter__()


def _active_queries(url: str) -> list[str]:
    """What the other sessions of the database at ``url`` are running."""
    with psycopg.connect(psycopg_dsn(url), autocommit=True) as conn:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            )
        ]


def _end_copies(url: str) -> int:
    """End the server processes running a ``COPY`` into tasks (a connection lost mid-load)."""
    with psycopg.connect(psycopg_dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'COPY tasks %'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres_only  # (SQLite has no server to load rows meanwhile)
def test_postgres_loads_a_large_batch_while_it_is_still_being_validated(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    rows = _rows(world.project.id, LARGE)
    probe = _OnRead(lambda: _active_queries(migrated_url))
    rows[-1]["params"] = probe

    made = db.tasks.create_many(rows)

    assert isinstance(probe.result, list)
    assert any(q.startswith("COPY tasks ") for q in probe.result), probe.result
    assert made[-1].params == {"probe": True}
    assert db.tasks.count() == LARGE + 2


@pytest.mark.parametrize("size", [2, LARGE], ids=["two", "large"])
def test_a_bad_last_row_outranks_a_first_row_whose_id_is_taken(
    db: dualdb.Database, world: World, size: int
) -> None:
    """On Postgres the taken id is refused by the server while the batch is still being
    validated: the caller still hears about the bad row, as from a small batch."""
    rows = _rows(world.project.id, size)
    rows[0]["id"] = world.task.id
    rows[1]["depends_on"] = []
    rows[-1]["status"] = "Complete"

    assert_unchanged(db, lambda: db.tasks.create_many(rows), InvalidInput, "status")


@pytest.mark.parametrize("size", [1, LARGE], ids=["one", "large"])
def test_a_refused_batch_inside_a_caller_s_transaction_leaves_it_as_it_was(
    db: dualdb.Database, world: World, size: int
) -> None:
    elsewhere = db.shots.create(world.other_project.id, "Elsewhere")
    rows = _rows(world.project.id, size)
    rows[-1]["params"] = {"shot_id": str(elsewhere.id)}
    bad_status = _rows(world.project.id, size)
    bad_status[-1]["status"] = "Running"
    before = db.tasks.count()

    with db.scope.write():
        for refused in (rows, bad_status):
            with pytest.raises(InvalidInput):
                db.tasks.create_many(refused)
        # The transaction is still usable, and holds none of the refused rows.
        assert db.tasks.count() == before
        db.tasks.create(world.project.id, "after", {})

    assert db.tasks.count() == before + 1


def test_the_garbage_collector_is_paused_while_a_large_batch_is_written(
    db: dualdb.Database, world: World
) -> None:
    rows = _rows(world.project.id, LARGE)
    probe = _OnRead(gc.isenabled)
    rows[-1]["params"] = probe

    db.tasks.create_many(rows)

    assert probe.ran and probe.result is False
    assert gc.isenabled()


@pytest.mark.postgres_only  # (SQLite has no connection to lose)
def test_a_connection_lost_while_a_batch_loads_is_unavailable_and_writes_nothing(
    db: dualdb.Database, world: World, migrated_url: str
) -> None:
    rows = _rows(world.project.id, LARGE)
    ender = _OnRead(lambda: _end_copies(migrated_url))
    rows[-1]["params"] = ender
    before = db.tasks.count()

    with pytest.raises(DatabaseUnavailable):
        db.tasks.create_many(rows)

    assert ender.result == 1
    assert db.tasks.count() == before  # and the next call has a working connection
