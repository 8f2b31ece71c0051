"""The one migration history, applied to a real SQLite file and a real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from dualdb import migrations
from dualdb.config import resolve
from dualdb.engine import create_engine
from dualdb.errors import MigrationError
from dualdb.schema import TABLES, generations, metadata, projects, task_dependencies, tasks, users
from dualdb.types import JSONB, UUID, UUIDArray


def table_names(url: str) -> set[str]:
    engine = create_engine(resolve(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_empty_to_head_then_check_is_clean(db_url: str) -> None:
    target = resolve(db_url)
    applied = migrations.upgrade(target)
    assert applied == migrations.revisions()
    assert {t.name for t in TABLES} | {"alembic_version"} == table_names(db_url)
    assert migrations.check(target) == []
    st = migrations.status(target)
    head = migrations.head_revision()
    assert (st.current, st.head, st.pending, st.up_to_date) == (head, head, [], True)


def test_status_of_empty_database_lists_everything_pending(db_url: str) -> None:
    st = migrations.status(resolve(db_url))
    assert st.current is None
    assert st.pending == migrations.revisions()
    assert not st.up_to_date


def test_upgrade_is_idempotent(migrated_url: str) -> None:
    assert migrations.upgrade(resolve(migrated_url)) == []


# Only the columns of revision 0001, so the helper works before and after 0002.
_tasks_0001 = sa.table(
    "tasks",
    sa.column("id", UUID()),
    sa.column("project_id", UUID()),
    sa.column("task_type", sa.Text()),
    sa.column("params", JSONB()),
    sa.column("status", sa.Text()),
)


def _insert_project_and_task(engine: sa.Engine) -> tuple[uuid.UUID, uuid.UUID]:
    uid, pid, tid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=uid))
        conn.execute(projects.insert().values(id=pid, name="P", user_id=uid))
        conn.execute(
            _tasks_0001.insert().values(
                id=tid,
                project_id=pid,
                task_type="single_image",
                params={"prompt": "a cat", "n": 2},
                status="Queued",
            )
        )
    return pid, tid


def test_downgrade_to_base_and_up_again_preserves_data(db_url: str) -> None:
    target = resolve(db_url)
    migrations.upgrade(target, "0001")
    engine = create_engine(target)
    try:
        _insert_project_and_task(engine)
        migrations.upgrade(target)  # 0001 -> 0002 adds the queue columns to existing rows
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT task_type, attempts, worker_id FROM tasks")).one()
        assert tuple(row) == ("single_image", 0, None)
        assert migrations.downgrade(target, "0001") == migrations.revisions()[:0:-1]
        with engine.connect() as conn:
            cols = {c["name"] for c in sa.inspect(conn).get_columns("tasks")}
            count = conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar()
            projects = conn.execute(sa.text("SELECT count(*) FROM projects")).scalar()
        assert "attempts" not in cols
        assert (count, projects) == (1, 1)  # the table rebuild kept (and did not cascade) rows
        migrations.upgrade(target)
        assert migrations.check(target) == []
        migrations.downgrade(target, "base")
        assert table_names(db_url) == {"alembic_version"}
        migrations.upgrade(target)
        assert migrations.check(target) == []
    finally:
        engine.dispose()


def test_check_constraint_survives_the_sqlite_table_rebuild(db_url: str) -> None:
    target = resolve(db_url)
    migrations.upgrade(target)
    migrations.downgrade(target, "0001")
    migrations.upgrade(target)
    engine = create_engine(target)
    try:
        names = {c["name"] for c in sa.inspect(engine).get_check_constraints("tasks")}
        assert "ck_tasks_status" in names
    finally:
        engine.dispose()


@pytest.mark.parametrize("status", ["Bogus", "pending", "queued", ""])
def test_bogus_status_is_refused_by_the_database(migrated_url: str, status: str) -> None:
    engine = create_engine(resolve(migrated_url))
    try:
        pid, _ = _insert_project_and_task(engine)
        with (
            pytest.raises(sa.exc.IntegrityError, match=r"(?i)ck_tasks_status|check"),
            engine.begin() as conn,
        ):
            conn.execute(
                _tasks_0001.insert().values(
                    id=uuid.uuid4(), project_id=pid, task_type="t", params={}, status=status
                )
            )
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 1
    finally:
        engine.dispose()


def test_foreign_keys_cascade(migrated_url: str) -> None:
    engine = create_engine(resolve(migrated_url))
    try:
        pid, _ = _insert_project_and_task(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM projects WHERE id = :id"), {"id": str(pid)})
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 0
    finally:
        engine.dispose()


def test_server_defaults_fill_ids_and_timestamps(migrated_url: str) -> None:
    """Other writers (plain SQL) get an id, created_at and empty arrays from the database."""
    engine = create_engine(resolve(migrated_url))
    try:
        uid = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(users.insert().values(id=uid))
            conn.execute(sa.text("INSERT INTO projects (name, user_id) SELECT 'x', id FROM users"))
            conn.execute(sa.text("INSERT INTO generations (project_id) SELECT id FROM projects"))
        with engine.connect() as conn:
            p = conn.execute(sa.select(projects)).one()
            g = conn.execute(sa.select(generations)).one()
        assert isinstance(p.id, uuid.UUID) and p.id.version == 4
        assert p.created_at.tzinfo is not None
        assert abs((datetime.now(UTC) - p.created_at).total_seconds()) < 60
        assert g.tasks == []
    finally:
        engine.dispose()


@pytest.mark.postgres_only
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_postgres_gets_native_types(migrated_url: str) -> None:
    engine = create_engine(resolve(migrated_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_name, column_name, udt_name FROM information_schema.columns "
                    "WHERE table_schema = 'public'"
                )
            ).all()
        types = {(t, c): u for t, c, u in rows}
        assert types[("tasks", "id")] == "uuid"
        assert types[("tasks", "dependant_on")] == "_uuid"
        assert types[("tasks", "params")] == "jsonb"
        assert types[("tasks", "created_at")] == "timestamptz"
        assert types[("generations", "tasks")] == "_uuid"
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("tasks")}
        assert "ix_tasks_dependant_on_gin" in indexes
    finally:
        engine.dispose()


def test_check_detects_drift(migrated_url: str) -> None:
    target = resolve(migrated_url)
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE shots ADD COLUMN sneaky TEXT"))
            conn.execute(sa.text("DROP INDEX ix_tasks_project_id_status"))
    finally:
        engine.dispose()
    problems = migrations.check(target)
    assert "column shots.sneaky is in the database but not in the models" in problems
    assert "index ix_tasks_project_id_status is in the models but not in the database" in problems


@pytest.mark.postgres_only
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_check_detects_a_wrong_column_type_and_a_missing_check(migrated_url: str) -> None:
    target = resolve(migrated_url)
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE shots ALTER COLUMN name TYPE varchar(300)"))
            conn.execute(sa.text("ALTER TABLE tasks DROP CONSTRAINT ck_tasks_status"))
    finally:
        engine.dispose()
    problems = migrations.check(target)
    assert any(p.startswith("column shots.name: type") for p in problems), problems
    assert "check ck_tasks_status is in the models but not in the database" in problems


def test_check_detects_missing_and_unknown_triggers(migrated_url: str, backend: str) -> None:
    """A SQLite table rebuilt by batch mode loses its triggers: check says so."""
    target = resolve(migrated_url)
    engine = create_engine(target)
    on = " ON tasks" if backend == "postgresql" else ""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TRIGGER tasks_after_status{on}"))
            conn.execute(
                sa.text(
                    "CREATE TRIGGER stray AFTER DELETE ON shots "
                    + (
                        "FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
                        if backend == "postgresql"
                        else "BEGIN SELECT 1; END"
                    )
                )
            )
    finally:
        engine.dispose()
    problems = migrations.check(target)
    assert "trigger tasks_after_status on tasks is in the models but not in the database" in (
        problems
    )
    assert "trigger stray on shots is in the database but not in the models" in problems


@pytest.mark.postgres_only
def test_check_reports_a_missing_queue_function(migrated_url: str) -> None:
    """dualdb's queue calls the workers' verbs (migration 0008): a dropped one is drift."""
    target = resolve(migrated_url)
    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP FUNCTION dualdb.complete_task(uuid, text, text)"))
    finally:
        engine.dispose()
    assert migrations.check(target) == [
        "function dualdb.complete_task(uuid, text, text) is in the models but not in the database"
    ]


def test_models_match_the_migrations(migrated_url: str) -> None:
    """Guard: a model change without a migration fails here."""
    problems = migrations.check(resolve(migrated_url))
    assert problems == [], (
        "The models in src/dualdb/schema.py differ from what the migrations create:\n  "
        + "\n  ".join(problems)
        + "\nFix: run `dualdb migrate` on a scratch database, then "
        "`dualdb generate -m 'describe the change'`, review the new file in "
        "src/dualdb/migrations/versions/, and commit it."
    )


def test_metadata_covers_every_table() -> None:
    assert set(metadata.tables) == {t.name for t in TABLES}


def test_unknown_revision_is_a_migration_error(db_url: str) -> None:
    with pytest.raises(MigrationError, match="nope"):
        migrations.upgrade(resolve(db_url), "nope")


def test_transaction_pooler_is_refused() -> None:
    target = resolve("postgresql://u:p@127.0.0.1:6543/postgres")
    with pytest.raises(MigrationError, match="session pooler"):
        migrations.upgrade(target)


def test_offline_sql_has_postgres_ddl_and_version_updates() -> None:
    text = migrations.render_sql()
    assert "CREATE TABLE tasks" in text
    assert "UUID[]" in text and "JSONB" in text and "TIMESTAMP WITH TIME ZONE" in text
    assert "USING gin" in text
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in text
    assert "UPDATE alembic_version SET version_num='0002'" in text
    partial = migrations.render_sql("0001", "0002")
    assert "CREATE TABLE" not in partial and "ADD COLUMN attempts" in partial


def test_readiness_migration_backfills_edges_and_counts(db_url: str) -> None:
    """0003 derives task_dependencies and unmet_dependencies from existing dependant_on."""
    target = resolve(db_url)
    migrations.upgrade(target, "0002")
    tasks_0002 = sa.table(
        "tasks",
        sa.column("id", UUID()),
        sa.column("project_id", UUID()),
        sa.column("task_type", sa.Text()),
        sa.column("params", JSONB()),
        sa.column("status", sa.Text()),
        sa.column("dependant_on", UUIDArray()),
    )
    engine = create_engine(target)
    try:
        pid, done = _insert_project_and_task(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tasks SET status = 'Complete'"))
        a, b = uuid.uuid4(), uuid.uuid4()
        with engine.begin() as conn:
            rows = [
                {"id": a, "dependant_on": [done]},  # dependency complete: ready
                {"id": b, "dependant_on": [done, a]},  # waits for a
            ]
            conn.execute(
                tasks_0002.insert(),
                [
                    {**r, "project_id": pid, "task_type": "t", "params": {}, "status": "Queued"}
                    for r in rows
                ],
            )
        migrations.upgrade(target)
        with engine.connect() as conn:
            unmet = {
                r.id: r.unmet_dependencies
                for r in conn.execute(sa.select(tasks.c.id, tasks.c.unmet_dependencies))
            }
            edges = {
                (r.task_id, r.dependency_id) for r in conn.execute(sa.select(task_dependencies))
            }
        assert unmet == {done: 0, a: 0, b: 1}
        assert edges == {(a, done), (b, done), (b, a)}
        assert migrations.check(target) == []
    finally:
        engine.dispose()


@pytest.mark.postgres_only
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_tasks_table_is_vacuumed_often_on_postgres(migrated_url: str) -> None:
    engine = create_engine(resolve(migrated_url))
    try:
        with engine.connect() as conn:
            options = conn.execute(
                sa.text("SELECT reloptions FROM pg_class WHERE relname = 'tasks'")
            ).scalar()
        assert "autovacuum_vacuum_scale_factor=0.0" in options
        assert "autovacuum_vacuum_threshold=5000" in options
    finally:
        engine.dispose()
