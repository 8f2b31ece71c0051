"""``dualdb.copy``: exact copies in all four directions, conflicts, refusals, ownership."""

from __future__ import annotations

import uuid
from typing import Any

import hypothesis.strategies as st
import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

import dualdb
from dualdb import migrations, schema
from dualdb.config import resolve
from dualdb.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    SchemaOutOfDate,
    UnreadableRow,
    VerificationFailed,
)
from dualdb.seed import seed_id
from dualdb.transfer.copy import DatabaseSource
from dualdb.transfer.copy import snapshot as source_snapshot
from dualdb.transfer.core import transfer
from tests.integration.dal_support import snapshot
from tests.integration.transfer_support import (
    DIRECTIONS,
    SEED_PROJECT,
    SEED_USER,
    TARGETS,
    MakeDb,
    content,
    fresh,
    populate,
    rename_project,
)

__all__ = ["fresh"]  # the fixture, imported for the tests below


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_copy_is_exact_and_a_rerun_writes_nothing(
    direction: tuple[str, str], fresh: MakeDb
) -> None:
    src_url, dst_url = fresh(direction[0]), fresh(direction[1])
    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        populate(src)
        result = dualdb.copy(src, dst, allow_remote=True)
        assert result.verified
        assert content(dst) == content(src)
        counts = src.row_counts()
        assert dst.row_counts() == counts
        assert {t: r.rows for t, r in result.tables.items()} == counts
        assert all(r.checksum and r.checksum.startswith("sha256:") for r in result.tables.values())
        # The database kept its rules: the running task is still claimable by nobody else,
        # and the blocked one still waits (its unmet count arrived with it).
        assert dst.tasks.counts() == src.tasks.counts()

        again = dualdb.copy(src, dst, allow_remote=True)
        assert again.inserted == 0 and again.verified
        assert all(
            r.identical == counts[t] for t, r in again.tables.items() if t != "task_dependencies"
        )
        assert content(dst) == content(src)


# JSON the schema accepts: finite numbers, text without NUL or lone surrogates.
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
# A "shot_id" key names a shot that must exist (tested with the tasks repository), so the
# generated keys leave it out.
_params = st.dictionaries(_text.filter(lambda k: k != "shot_id"), _json, max_size=5)


@pytest.mark.postgres
@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(population=st.lists(st.tuples(_params, st.booleans()), min_size=1, max_size=6))
def test_round_trip_sqlite_postgres_sqlite(
    fresh: MakeDb, population: list[tuple[dict[str, Any], bool]]
) -> None:
    first, middle, last = fresh("sqlite"), fresh("postgresql"), fresh("sqlite")
    with dualdb.connect(first) as a, dualdb.connect(middle) as p, dualdb.connect(last) as b:
        project = populate(a)
        with a.session() as s:
            previous: list[uuid.UUID] = []
            for params, chained in population:
                task = s.tasks.enqueue(project, "generated", params, depends_on=previous[-1:])
                if chained:
                    previous.append(task.id)
        assert dualdb.copy(a, p, allow_remote=True).verified
        assert content(p) == content(a)
        assert dualdb.copy(p, b).verified
        assert content(b) == content(a)


def _project_name(db: dualdb.Database, project: uuid.UUID) -> str:
    return db.projects.get(project).name


@pytest.mark.parametrize("target", TARGETS)
def test_conflicts_fail_skip_overwrite(target: str, fresh: MakeDb) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        populate(src)
        dualdb.copy(src, dst, allow_remote=True)
        rename_project(dst, SEED_PROJECT, "Renamed in the target")
        # A queued task whose dependencies another writer changed in the target (its edges
        # and counter follow, by the triggers).
        keyframe_2 = seed_id("task:keyframe-2")
        with dst.engine.begin() as conn:
            conn.execute(
                sa.update(schema.tasks)
                .where(schema.tasks.c.id == keyframe_2)
                .values(dependant_on=[])
            )
        new_shot = src.shots.create(SEED_PROJECT, "Added in the source")

        before = snapshot(dst)
        with pytest.raises(Conflict, match=f"projects {SEED_PROJECT}.*nothing was written"):
            dualdb.copy(src, dst, allow_remote=True)
        assert snapshot(dst) == before

        dry = dualdb.copy(src, dst, on_conflict="skip", dry_run=True)
        assert dry.dry_run and dry.tables["projects"].conflicting == 1
        assert dry.tables["shots"].inserted == 1
        assert snapshot(dst) == before

        skipped = dualdb.copy(src, dst, on_conflict="skip", allow_remote=True)
        assert skipped.verified and skipped.tables["projects"].conflicting == 1
        assert skipped.tables["tasks"].conflicting == 1
        assert _project_name(dst, SEED_PROJECT) == "Renamed in the target"
        assert dst.tasks.get(keyframe_2).dependant_on == []
        assert dst.shots.get(new_shot.id).name == "Added in the source"

        overwritten = dualdb.copy(src, dst, on_conflict="overwrite", allow_remote=True)
        assert overwritten.verified and overwritten.tables["projects"].conflicting == 1
        assert overwritten.tables["tasks"].conflicting == 1
        assert content(dst) == content(src)


@pytest.mark.parametrize("target", TARGETS)
def test_overwrite_never_rewinds_a_finished_task(target: str, fresh: MakeDb) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        populate(src)
        dualdb.copy(src, dst, allow_remote=True)
        # In the target a worker finishes a task the source still has queued.
        task = dst.tasks.claim("target-worker", ["travel_stitch", "single_image"])
        assert task is not None
        dst.tasks.complete(task.id, "target-worker", "files/done.png")
        with pytest.raises(Conflict, match=f"tasks {task.id}"):
            dualdb.copy(src, dst, on_conflict="overwrite", allow_remote=True)
        assert dst.tasks.get(task.id).status == "Complete"


@pytest.mark.parametrize("target", TARGETS)
def test_a_project_brings_its_owner_and_nothing_else(target: str, fresh: MakeDb) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        exotic = populate(src)
        owner = src.projects.get(exotic).user_id
        result = dualdb.copy(src, dst, projects=[str(exotic)], allow_remote=True)
        assert result.verified
        assert [u.id for u in dst.users.list().items] == [owner]
        assert [p.id for p in dst.projects.list().items] == [exotic]
        assert dst.users.find(SEED_USER) is None
        counts = dst.row_counts()
        with src.engine.connect() as conn:
            tasks = conn.execute(
                sa.select(sa.func.count())
                .select_from(schema.tasks)
                .where(schema.tasks.c.project_id == exotic)
            ).scalar_one()
        assert counts["tasks"] == tasks and counts["projects"] == 1 and counts["users"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_requeue_running(target: str, fresh: MakeDb) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        populate(src)
        with src.engine.connect() as conn:
            ids = (
                conn.execute(
                    sa.select(schema.tasks.c.id).where(schema.tasks.c.status == "In Progress")
                )
                .scalars()
                .all()
            )
        assert len(ids) == 1
        result = dualdb.copy(src, dst, requeue_running=True, allow_remote=True)
        assert result.verified
        for task_id in ids:
            task = dst.tasks.get(task_id)
            assert task.status == "Queued" and task.worker_id is None
            assert task.heartbeat_at is None
        claimed = dst.tasks.claim("new-worker", ["exotic_b"])
        assert claimed is not None and claimed.id in ids


@pytest.mark.parametrize("target", TARGETS)
def test_refusals_write_nothing(target: str, fresh: MakeDb) -> None:
    src_url, dst_url = fresh("sqlite"), fresh(target)
    with dualdb.connect(src_url) as src:
        populate(src)
        with dualdb.connect(dst_url) as dst:
            before = snapshot(dst)
            if target == "postgresql":
                with pytest.raises(ConfigError, match="--allow-remote"):
                    dualdb.copy(src, dst)
            with pytest.raises(NotFound, match="project"):
                dualdb.copy(src, dst, projects=[uuid.uuid4()], allow_remote=True)
            with pytest.raises(InvalidInput, match="project"):
                dualdb.copy(src, dst, projects=["not-a-uuid"], allow_remote=True)
            with pytest.raises(InvalidInput, match="on_conflict"):
                dualdb.copy(src, dst, on_conflict="merge", allow_remote=True)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="same database"):
                dualdb.copy(dst, dst, allow_remote=True)
            assert snapshot(dst) == before
        # An older target: one migration behind.
        migrations.downgrade(resolve(dst_url), migrations.revisions()[-2])
        with (
            dualdb.connect(dst_url, check_schema=False) as old,
            pytest.raises(SchemaOutOfDate, match=r"target database .*`dualdb migrate --url"),
        ):
            dualdb.copy(src, old, allow_remote=True)
        # An unmigrated one.
        migrations.downgrade(resolve(dst_url), "base")
        with dualdb.connect(dst_url, check_schema=False) as empty:
            with pytest.raises(SchemaOutOfDate, match="revision none"):
                dualdb.copy(src, empty, allow_remote=True)
            with empty.engine.connect() as conn:
                assert "projects" not in sa.inspect(conn).get_table_names()


@pytest.mark.parametrize("target", TARGETS)
def test_a_target_that_changes_rows_fails_verification_naming_the_table(
    target: str, fresh: MakeDb
) -> None:
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        populate(src)
        # Another program's trigger in the target rewrites every shot name it is given.
        with dst.engine.begin() as conn:
            if target == "sqlite":
                conn.exec_driver_sql(
                    "CREATE TRIGGER meddle AFTER INSERT ON shots BEGIN "
                    "UPDATE shots SET name = name || '!' WHERE id = NEW.id; END"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE FUNCTION meddle() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN NEW.name := NEW.name || '!'; RETURN NEW; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER meddle BEFORE INSERT ON shots "
                    "FOR EACH ROW EXECUTE FUNCTION meddle()"
                )
        with pytest.raises(VerificationFailed, match="table shots: content differs") as caught:
            dualdb.copy(src, dst, allow_remote=True)
        assert caught.value.table == "shots"


@pytest.mark.parametrize("target", TARGETS)
def test_values_another_tool_stored_in_its_own_form_arrive_in_dualdbs(
    target: str, fresh: MakeDb, tmp_path: Any
) -> None:
    """SQLite text that dualdb reads but did not write (a space for the ``T``, no fraction, an
    upper-case UUID) arrives as dualdb writes it, the copy verifies, and a dump of it loads."""
    src_url, dst_url = fresh("sqlite"), fresh(target)
    with dualdb.connect(src_url) as src:
        user = src.users.create(email="o@example.invalid")
        project = src.projects.create("odd", user.id)
        shot = src.shots.create(project.id, "s")
    with sa.create_engine(src_url).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE projects SET created_at = '2024-01-02 03:04:05' WHERE id = ?",
            (str(project.id),),
        )
        conn.exec_driver_sql(
            "UPDATE shots SET project_id = upper(project_id) WHERE id = ?", (str(shot.id),)
        )
    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        read = src.projects.get(project.id)
        assert read.created_at.isoformat() == "2024-01-02T03:04:05+00:00"
        result = dualdb.copy(src, dst, allow_remote=True)
        assert result.verified
        assert dst.projects.get(project.id).created_at == read.created_at
        assert dst.shots.get(shot.id).project_id == project.id
        assert dualdb.copy(src, dst, allow_remote=True).inserted == 0  # a rerun agrees
        archive = tmp_path / "odd.zip"
        dualdb.dump(src, archive)
    with dualdb.connect(fresh(target)) as again:
        assert dualdb.load(again, archive, allow_remote=True, verify=True).verified
        assert again.projects.get(project.id).created_at == read.created_at


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("same", [True, False], ids=["identical", "different"])
def test_a_row_written_meanwhile_into_a_table_that_was_empty_is_looked_up(
    target: str, same: bool, fresh: MakeDb
) -> None:
    """Pages of a table empty when its copy began go in without their keys looked up; a
    row someone else writes meanwhile makes that page fail, roll back and go again, looked
    up: identical, it is left alone; different, it is the Conflict a changed row is."""
    with dualdb.connect(fresh("sqlite")) as src, dualdb.connect(fresh(target)) as dst:
        user = src.users.create(email="meanwhile@example.invalid")
        project = src.projects.create("meanwhile", user.id)
        shots = [src.shots.create(project.id, f"shot {i}") for i in range(6)]
        with src.engine.connect() as conn:
            last = conn.execute(
                sa.select(schema.shots).where(schema.shots.c.id == shots[-1].id)
            ).one()
        written: list[int] = []

        def meanwhile(table: str, done: int, total: int) -> None:
            # After the first committed page of shots, the last shot appears in the target,
            # written with plain SQL by another connection.
            if table == "shots" and not written:
                values = dict(last._mapping)
                if not same:
                    values["name"] = "someone else's"
                with dst.engine.begin() as conn:
                    conn.execute(sa.insert(schema.shots).values(values))
                written.append(done)

        if same:
            result = dualdb.copy(src, dst, allow_remote=True, batch_size=2, progress=meanwhile)
            assert result.verified
            assert (result.tables["shots"].inserted, result.tables["shots"].identical) == (5, 1)
            assert content(dst) == content(src)
        else:
            with pytest.raises(Conflict, match=f"shots {last.id} .*changed during the copy"):
                dualdb.copy(src, dst, allow_remote=True, batch_size=2, progress=meanwhile)
            # The pages before it stay (a rerun with --on-conflict finishes the job).
            assert dst.shots.get(shots[0].id).name == "shot 0"
            assert dst.shots.get(last.id).name == "someone else's"
        assert written == [2]


@pytest.mark.parametrize(
    "stored", ["infinity", "-infinity", "0044-03-15 00:00:00+00 BC", "12000-01-01 00:00:00+00"]
)
@pytest.mark.postgres
def test_a_postgres_instant_dualdb_cannot_write_as_text_is_refused(
    stored: str, fresh: MakeDb
) -> None:
    """Postgres holds instants outside years 1 to 9999 (and infinity), which dualdb's text
    cannot: a copy refuses the row, naming it, instead of writing another instant."""
    src_url, dst_url = fresh("postgresql"), fresh("sqlite")
    with dualdb.connect(src_url) as src:
        user = src.users.create(email="when@example.invalid")
        project = src.projects.create("when", user.id)
    with psycopg.connect(src_url, autocommit=True) as pg:
        pg.execute("UPDATE projects SET created_at = %s::timestamptz", (stored,))
    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        with pytest.raises(UnreadableRow, match=f"projects {project.id}: column created_at"):
            dualdb.copy(src, dst)
        assert dst.row_counts()["projects"] == 0


@pytest.mark.parametrize("target", TARGETS)
def test_keys_another_tool_stored_in_upper_case_are_all_copied(target: str, fresh: MakeDb) -> None:
    """Pages follow the keys as stored: upper-case UUIDs (written by another tool) sort
    before lower-case ones on SQLite, and every row arrives whatever the batch size."""
    src_url = fresh("sqlite")
    with dualdb.connect(src_url) as src:
        made = [src.users.create(email=f"u{i}@example.invalid").id for i in range(7)]
    shouted = sorted(str(u) for u in made)[-3:]  # the largest keys, stored upper-case
    with sa.create_engine(src_url).begin() as conn:
        for key in shouted:
            conn.exec_driver_sql("UPDATE users SET id = upper(id) WHERE id = ?", (key,))
    with dualdb.connect(src_url) as src, dualdb.connect(fresh(target)) as dst:
        result = dualdb.copy(src, dst, allow_remote=True, batch_size=2)
        assert result.verified
        assert result.tables["users"].inserted == 7
        assert sorted(u.id for u in dst.users.list(limit=100).items) == sorted(made)


# --- Reading the source ahead -----------------------------------------------------------------
# Into Postgres, the next page of the source is read while the server stores the current one
# (COPY).  The copy's outcome must be that of reading it after: an error reading a page leaves
# the pages before it written, on both backends.

_PAGE = 1000  # pages this large go in by COPY on Postgres (COPY_FROM_ROWS)


class _Source:
    """A source's tasks, with a hook run when a page of tasks after the first is read."""

    def __init__(self, inner: Any, on_later_page: Any) -> None:
        self._inner = inner
        self._on_later_page = on_later_page

    def count(self, spec: Any) -> int:
        return int(self._inner.count(spec))

    def pages(self, spec: Any) -> Any:
        for n, page in enumerate(self._inner.pages(spec)):
            if spec.name == "tasks" and n > 0:
                self._on_later_page()
            yield page


def _many_tasks(db: dualdb.Database, n: int) -> None:
    user = db.users.create(email="ahead@example.com")
    project = db.projects.create("Ahead", user.id)
    db.tasks.create_many(
        [{"project_id": project.id, "task_type": "t", "params": {"i": i}} for i in range(n)]
    )


@pytest.mark.parametrize("target", TARGETS)
def test_an_error_reading_a_later_page_leaves_the_pages_before_it_written(
    target: str, fresh: MakeDb
) -> None:
    def fail() -> None:
        raise UnreadableRow("tasks", "k", "params", "garbled on purpose")

    src_url, dst_url = fresh("sqlite"), fresh(target)
    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        _many_tasks(src, 2 * _PAGE + 10)
        with source_snapshot(src) as conn, pytest.raises(UnreadableRow, match="on purpose"):
            transfer(_Source(DatabaseSource(conn, None, _PAGE), fail), dst, on_conflict="skip")
        # The first page was committed before the second was asked for.
        assert dst.tasks.count() == _PAGE


@pytest.mark.postgres
def test_into_postgres_the_next_page_is_read_while_the_server_stores_one(
    fresh: MakeDb,
) -> None:
    src_url, dst_url = fresh("sqlite"), fresh("postgresql")
    seen: list[str] = []

    def look() -> None:
        with psycopg.connect(dst_url.replace("postgresql+psycopg", "postgresql")) as conn:
            seen.extend(
                str(r[0])
                for r in conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state = 'active'"
                )
            )

    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        _many_tasks(src, 2 * _PAGE)
        with source_snapshot(src) as conn:
            result = transfer(_Source(DatabaseSource(conn, None, _PAGE), look), dst)
        assert result.verified
        assert dst.tasks.count() == 2 * _PAGE
    assert any(q.startswith("COPY tasks ") for q in seen), seen
