"""``dualdb.integrity``: the data audit and repair, on a real SQLite file and a real Postgres.

Broken data is written the way a careless program could (``integrity_support.rules_off``:
triggers and foreign keys out of the way), then :func:`audit` must name every broken rule with
the same counts and ids on both engines, and :func:`repair` must fix what it can in one
transaction, say what it changed, and leave the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dualdb import integrity
from dualdb.config import resolve
from dualdb.database import Database
from dualdb.errors import Conflict, DatabaseBusy, InvalidInput, SchemaOutOfDate
from dualdb.integrity import DataReport, RepairReport
from dualdb.migrations import downgrade, upgrade
from dualdb.records import Task
from tests.integration.dal_support import World, snapshot
from tests.integration.integrity_support import J, Raw, rules_off


def verdicts(report: DataReport) -> dict[str, tuple[int, set[str]]]:
    """Rule → (count, ids): what must be the same on both engines."""
    return {f.rule: (f.count, set(f.ids)) for f in report.findings}


def changes(report: RepairReport) -> dict[str, tuple[int, set[str]]]:
    return {c.fix: (c.count, set(c.ids)) for c in report.changes}


def run_one(db: Database, task: Task, *, output: str = "files/out.png") -> Task:
    """Claim ``task`` (the only one of its type) and complete it."""
    claimed = db.tasks.claim("w", task_types=[task.task_type])
    assert claimed is not None and claimed.id == task.id
    return db.tasks.complete(task.id, "w", output)


def edge(a: Task | uuid.UUID, b: Task | uuid.UUID) -> str:
    ids = [x.id if isinstance(x, Task) else x for x in (a, b)]
    return f"{ids[0]} -> {ids[1]}"


# --- a clean database -------------------------------------------------------------------


def test_a_clean_database_passes_and_repair_changes_nothing(
    db: Database, migrated_url: str, world: World
) -> None:
    p, shot = world.project.id, world.shot.id
    first = db.tasks.enqueue(p, "first", {"shot_id": str(shot)})
    second = db.tasks.enqueue(p, "second", {}, depends_on=[first.id])
    db.tasks.enqueue(p, "third", {}, depends_on=[second.id, first.id])
    doomed = db.tasks.enqueue(p, "doomed", {})
    db.tasks.enqueue(p, "after_doomed", {}, depends_on=[doomed.id])
    db.tasks.enqueue(p, "held", {}, status="Pending")
    run_one(db, first)
    claimed = db.tasks.claim("w", task_types=["doomed"])
    assert claimed is not None
    db.tasks.fail(doomed.id, "w", "CUDA OOM")  # cascades to after_doomed
    db.tasks.claim("w", task_types=["second"])  # In Progress, fresh heartbeat
    target = resolve(migrated_url)

    report = integrity.audit(target)
    assert report.clean, report
    assert (report.schema, report.findings, report.audited) == ((), (), True)
    assert report.rules == integrity.rule_names()

    before = snapshot(db)
    for dry_run in (True, False):
        repaired = integrity.repair(target, dry_run=dry_run, delete_orphans=True)
        assert (repaired.changes, repaired.skipped) == ((), ())
        assert not repaired.changed and repaired.remaining.clean
    assert snapshot(db) == before


# --- what repair fixes --------------------------------------------------------------------


@dataclass
class Broken:
    """The rows of :func:`break_derived_state`."""

    done: Task
    q1: Task
    pend: Task
    q2: Task
    q3: Task
    f: Task
    w: Task
    w2: Task
    x: Task
    m: Task
    g: Task
    doomed_shot: uuid.UUID
    doomed_task: uuid.UUID
    placement: uuid.UUID


def break_derived_state(db: Database, url: str, world: World) -> Broken:
    """Derived state out of step with dependant_on, tasks that can never run, a Complete shot
    task without its generation, and orphans of three kinds."""
    p = world.project.id
    done = db.tasks.enqueue(p, "done", {})
    run_one(db, done)
    q1 = db.tasks.enqueue(p, "q1", {}, depends_on=[done.id])
    pend = db.tasks.enqueue(p, "pend", {}, status="Pending")
    q2 = db.tasks.enqueue(p, "q2", {}, depends_on=[pend.id])
    q3 = db.tasks.enqueue(p, "q3", {})
    f = db.tasks.enqueue(p, "f", {})
    w = db.tasks.enqueue(p, "w", {}, depends_on=[f.id])
    w2 = db.tasks.enqueue(p, "w2", {}, depends_on=[w.id])
    x = db.tasks.enqueue(p, "x", {})
    m = db.tasks.enqueue(p, "m", {}, depends_on=[x.id])
    g = db.tasks.enqueue(p, "g", {"shot_id": str(world.shot.id)})
    doomed = db.projects.create("Doomed", world.user.id)
    doomed_shot = db.shots.create(doomed.id, "Gone with it")
    doomed_task = db.tasks.enqueue(doomed.id, "orphan", {})
    placement = db.shots.add_generation(world.shot.id, world.generation.id)
    with rules_off(url) as raw:
        assert raw.run("UPDATE tasks SET unmet_dependencies = 1 WHERE id = %s", q1.id) == 1
        assert raw.run(
            "DELETE FROM task_dependencies WHERE task_id = %s AND dependency_id = %s",
            q2.id,
            pend.id,
        )
        raw.run(
            "INSERT INTO task_dependencies (task_id, dependency_id) VALUES (%s, %s)", q3.id, done.id
        )
        raw.run("UPDATE tasks SET status = 'Failed' WHERE id = %s", f.id)  # no cascade
        raw.run("DELETE FROM tasks WHERE id = %s", x.id)  # its edge from m stays
        raw.run(
            "UPDATE tasks SET status = 'Complete', output_location = 'files/g.png' WHERE id = %s",
            g.id,
        )
        raw.run("DELETE FROM users WHERE id = %s", world.other_user.id)
        raw.run("DELETE FROM projects WHERE id = %s", doomed.id)
        raw.run("DELETE FROM generations WHERE id = %s", world.generation.id)
    return Broken(
        done, q1, pend, q2, q3, f, w, w2, x, m, g, doomed_shot.id, doomed_task.id, placement.id
    )


def test_audit_names_every_broken_rule_and_repair_fixes_it(
    db: Database, migrated_url: str, world: World
) -> None:
    b = break_derived_state(db, migrated_url, world)
    target = resolve(migrated_url)
    orphans = {
        "orphan_projects": (1, {str(world.other_project.id)}),
        "orphan_tasks": (1, {str(b.doomed_task)}),
        "orphan_shots": (1, {str(b.doomed_shot)}),
        "orphan_shot_generations": (1, {str(b.placement)}),
    }
    report = integrity.audit(target)
    assert report.audited and report.schema == () and not report.clean
    assert verdicts(report) == {
        "edges_missing": (1, {edge(b.q2, b.pend)}),
        "edges_extra": (2, {edge(b.q3, b.done), edge(b.m, b.x)}),
        "counters": (2, {str(b.q1.id), str(b.m.id)}),
        "dependencies_missing": (1, {str(b.m.id)}),
        "waiting_on_failed": (1, {str(b.w.id)}),
        "generation_unprocessed": (1, {str(b.g.id)}),
        **orphans,
    }
    assert [f.rule for f in report.findings if f.repairable] == [
        "edges_missing",
        "edges_extra",
        "counters",
        "dependencies_missing",
        "waiting_on_failed",
        "generation_unprocessed",
    ]

    expected = {
        "edges_removed": (2, {edge(b.q3, b.done), edge(b.m, b.x)}),
        "edges_added": (1, {edge(b.q2, b.pend)}),
        "tasks_cancelled": (2, {str(b.w.id), str(b.m.id)}),
        "dependents_cancelled": (1, {str(b.w2.id)}),
        # m's counter follows by itself: removing its edge to the deleted x recounts it.
        "counters_recomputed": (1, {str(b.q1.id)}),
        "generations_created": (1, {str(b.g.id)}),
    }
    # A dry run reports exactly what the real run then does, and writes nothing.
    before = snapshot(db)
    dry = integrity.repair(target, dry_run=True)
    assert dry.dry_run and changes(dry) == expected and dry.skipped == ()
    assert snapshot(db) == before
    assert verdicts(integrity.audit(target)) == verdicts(report)

    repaired = integrity.repair(target)
    assert not repaired.dry_run and changes(repaired) == expected and repaired.skipped == ()
    # Orphans are reported and left unless asked for.
    assert verdicts(repaired.remaining) == orphans
    assert verdicts(integrity.audit(target)) == orphans

    w, w2, m = (db.tasks.get(t.id) for t in (b.w, b.w2, b.m))
    assert (w.status, w.error) == (
        "Cancelled",
        f"cancelled by dualdb repair: dependency {b.f.id} is Failed",
    )
    assert m.error == f"cancelled by dualdb repair: dependency {b.x.id} does not exist"
    assert w2.status == "Cancelled" and w2.error is not None and str(w.id) in w2.error
    assert db.tasks.get(b.q2.id).status == "Queued"
    ready = db.tasks.claim("w", task_types=["q1"])
    assert ready is not None and ready.id == b.q1.id  # its counter no longer blocks it
    made = db.generations.for_task(b.g.id)
    assert [(x.location, x.type, x.tasks) for x in made] == [("files/g.png", "g", [b.g.id])]
    placements = db.shots.placements(world.shot.id)
    assert placements[-1].generation_id == made[0].id
    assert db.tasks.get(b.g.id).generation_processed_at is not None

    cleaned = integrity.repair(target, delete_orphans=True)
    assert changes(cleaned) == {
        "orphan_shot_generations_deleted": (1, {str(b.placement)}),
        "orphan_shots_deleted": (1, {str(b.doomed_shot)}),
        "orphan_tasks_deleted": (1, {str(b.doomed_task)}),
        "orphan_projects_deleted": (1, {str(world.other_project.id)}),
    }
    assert cleaned.remaining.clean
    # The orphan project's own children went with it.
    assert db.tasks.find(world.other_task.id) is None
    assert integrity.audit(target).clean
    # Exactly once: nothing left to do, and no second generation.
    again = integrity.repair(target, delete_orphans=True)
    assert (again.changes, again.skipped) == ((), ())
    assert len(db.generations.for_task(b.g.id)) == 1


def test_a_wrong_counter_blocks_its_dependencys_completion_until_repaired(
    db: Database, migrated_url: str, world: World
) -> None:
    """Completion decrements each dependent's counter; the counter trigger refuses a result
    that is not the truth, so a drifted counter makes the dependency's completion fail."""
    first = db.tasks.enqueue(world.project.id, "first", {})
    second = db.tasks.enqueue(world.project.id, "second", {}, depends_on=[first.id])
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET unmet_dependencies = 5 WHERE id = %s", second.id)
    assert db.tasks.claim("w", task_types=["first"]) is not None
    with pytest.raises(Conflict, match="unmet_dependencies is kept by the database"):
        db.tasks.complete(first.id, "w", "files/out.png")
    assert changes(integrity.repair(resolve(migrated_url))) == {
        "counters_recomputed": (1, {str(second.id)})
    }
    db.tasks.complete(first.id, "w", "files/out.png")
    assert db.tasks.claim("w", task_types=["second"]) is not None


def test_repair_marks_a_generation_that_exists_instead_of_making_another(
    db: Database, migrated_url: str, world: World
) -> None:
    g = db.tasks.enqueue(world.project.id, "g", {"shot_id": str(world.shot.id)})
    run_one(db, g, output="files/g.png")
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET generation_processed_at = NULL WHERE id = %s", g.id)
    target = resolve(migrated_url)
    assert verdicts(integrity.audit(target)) == {"generation_unprocessed": (1, {str(g.id)})}
    repaired = integrity.repair(target)
    assert changes(repaired) == {"generations_marked_processed": (1, {str(g.id)})}
    assert repaired.remaining.clean
    assert len(db.generations.for_task(g.id)) == 1


# --- what repair reports and leaves -------------------------------------------------------


def test_rules_repair_cannot_decide_are_reported_and_left(
    db: Database, migrated_url: str, world: World
) -> None:
    p = world.project.id
    a = db.tasks.enqueue(p, "a", {})
    deep = db.tasks.enqueue(p, "deep", {})
    huge = db.tasks.enqueue(p, "huge", {})
    d = db.tasks.enqueue(p, "d", {})
    e = db.tasks.enqueue(p, "e", {})
    h = db.tasks.enqueue(p, "h", {}, status="Pending")
    i = db.tasks.enqueue(p, "i", {}, status="Pending")
    old = db.tasks.enqueue(p, "old", {})
    silent = db.tasks.enqueue(p, "silent", {})
    n = db.tasks.enqueue(p, "n", {"shot_id": str(world.shot.id)})
    for t in (old, silent):
        assert db.tasks.claim("w", task_types=[t.task_type]) is not None
    run_one(db, n)
    db.generations.create(p, tasks=[n.id])  # a second generation made from n alone
    nested: object = 1
    for _ in range(70):
        nested = [nested]
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET params = %s WHERE id = %s", J([1]), a.id)
        raw.run("UPDATE tasks SET params = %s WHERE id = %s", J({"n": nested}), deep.id)
        raw.run(
            Raw(
                sqlite="UPDATE tasks SET params = '{\"n\": 1e400}' WHERE id = ?",
                postgresql="UPDATE tasks SET params = '{\"n\": 1e400}'::jsonb WHERE id = %s",
            ),
            huge.id,
        )
        raw.run(
            Raw(
                sqlite="UPDATE tasks SET dependant_on = '[null]' WHERE id = ?",
                postgresql="UPDATE tasks SET dependant_on = ARRAY[NULL]::uuid[] WHERE id = %s",
            ),
            d.id,
        )
        raw.run(
            Raw(
                sqlite="UPDATE generations SET tasks = '[\"not-a-uuid\", null]' WHERE id = ?",
                postgresql="UPDATE generations SET tasks = ARRAY[NULL]::uuid[] WHERE id = %s",
            ),
            world.generation.id,
        )
        raw.run("UPDATE tasks SET attempts = -1, unmet_dependencies = 5 WHERE id = %s", e.id)
        raw.run("UPDATE tasks SET dependant_on = %s WHERE id = %s", [h.id], h.id)
        raw.run("UPDATE tasks SET dependant_on = %s WHERE id = %s", [world.other_task.id], i.id)
        raw.run(
            "UPDATE tasks SET heartbeat_at = %s WHERE id = %s",
            datetime.now(UTC) - timedelta(hours=1),
            old.id,
        )
        raw.run("UPDATE tasks SET heartbeat_at = NULL WHERE id = %s", silent.id)
    target = resolve(migrated_url)
    left = {
        "params_shape": (1, {str(a.id)}),
        "params_limits": (2, {str(deep.id), str(huge.id)}),
        "dependant_on_shape": (1, {str(d.id)}),
        "generation_tasks_shape": (1, {str(world.generation.id)}),
        "attempts": (1, {str(e.id)}),
        "dependencies_elsewhere": (2, {str(h.id), str(i.id)}),
        "stale_in_progress": (2, {str(old.id), str(silent.id)}),
        "generation_duplicated": (1, {str(n.id)}),
    }
    assert verdicts(integrity.audit(target)) == {
        **left,
        "edges_missing": (2, {edge(h, h), edge(i, world.other_task)}),
        "counters": (3, {str(e.id), str(h.id), str(i.id)}),
    }
    # A longer threshold: the hour-old heartbeat is not stale yet; no heartbeat still is.
    patient = integrity.audit(target, stale_after=timedelta(hours=2))
    assert verdicts(patient)["stale_in_progress"] == (1, {str(silent.id)})

    repaired = integrity.repair(target)
    # Edges and counters follow dependant_on, even where it names the wrong tasks ...
    assert changes(repaired) == {
        "edges_added": (2, {edge(h, h), edge(i, world.other_task)}),
        "counters_recomputed": (2, {str(h.id), str(i.id)}),
    }
    # ... but the database refuses any write to a row with a negative attempts: left.
    assert verdicts(repaired.remaining) == {**left, "counters": (1, {str(e.id)})}
    assert repaired.skipped == ()
    assert verdicts(integrity.audit(target)) == verdicts(repaired.remaining)
    assert not integrity.repair(target).changed


def test_a_status_outside_the_check_is_reported(
    db: Database, migrated_url: str, world: World
) -> None:
    """SQLite skips CHECKs under ``ignore_check_constraints``; on Postgres the constraint has
    to go (and ``dualdb check`` then says so)."""
    with rules_off(migrated_url, check_constraints=False) as raw:
        raw.run(Raw("SELECT 1", "ALTER TABLE tasks DROP CONSTRAINT ck_tasks_status"))
        raw.run("UPDATE tasks SET status = 'Done' WHERE id = %s", world.task.id)
    target = resolve(migrated_url)
    assert verdicts(integrity.audit(target)) == {"status": (1, {str(world.task.id)})}
    repaired = integrity.repair(target)
    assert not repaired.changed
    assert verdicts(repaired.remaining) == {"status": (1, {str(world.task.id)})}


@pytest.mark.sqlite_only
def test_garbage_sqlite_rows_never_crash_the_audit_or_repair(
    db: Database, migrated_url: str, world: World
) -> None:
    """What only SQLite can store: text that is not JSON, ids and times in other forms."""
    p = world.project.id
    f = db.tasks.enqueue(p, "f", {})
    w = db.tasks.enqueue(p, "w", {}, depends_on=[f.id])
    late = db.tasks.enqueue(p, "late", {}, depends_on=[w.id])
    junk = db.tasks.enqueue(p, "junk", {})
    upper = db.tasks.enqueue(p, "upper", {})
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET status = 'Failed' WHERE id = %s", f.id)
        # A dependent whose timestamp the database refuses: cancelling w cascades to it.
        raw.run("UPDATE tasks SET created_at = 'yesterday' WHERE id = %s", late.id)
        raw.run(
            "UPDATE tasks SET params = 'not json', dependant_on = 'garbage', attempts = 'x', "
            "unmet_dependencies = 'abc', created_at = '2026-01-01 00:00:00' WHERE id = %s",
            junk.id,
        )
        raw.run(
            "INSERT INTO task_dependencies (task_id, dependency_id) VALUES (%s, %s)",
            junk.id,
            f.id,
        )
        raw.run("UPDATE tasks SET id = upper(id) WHERE id = %s", upper.id)
        raw.run(
            "INSERT INTO tasks (id, task_type, params, status, dependant_on, created_at, "
            "project_id, attempts, unmet_dependencies) VALUES (x'00ff', 't', '{}', 'Queued', "
            "'[]', %s, %s, 0, 0)",
            datetime.now(UTC),
            p,
        )
        raw.run("UPDATE generations SET tasks = '{\"a\": 1' WHERE id = %s", world.generation.id)
    target = resolve(migrated_url)
    found = verdicts(integrity.audit(target))
    # The edge and counter of a task whose dependant_on is garbage are unknowable: the
    # shape rule reports the task, the derived rules do not guess.
    assert found == {
        "params_shape": (1, {str(junk.id)}),
        "dependant_on_shape": (1, {str(junk.id)}),
        "attempts": (1, {str(junk.id)}),
        "generation_tasks_shape": (1, {str(world.generation.id)}),
        "waiting_on_failed": (1, {str(w.id)}),
        "ids": (2, {f"tasks.id of {str(upper.id).upper()}", "tasks.id of X'00FF'"}),
        "timestamps": (2, {f"tasks.created_at of {junk.id}", f"tasks.created_at of {late.id}"}),
    }

    repaired = integrity.repair(target)
    assert repaired.changes == ()
    assert len(repaired.skipped) == 1
    assert repaired.skipped[0].startswith(f"task {w.id} not cancelled: ")
    assert "timestamp: must be UTC text" in repaired.skipped[0]
    assert db.tasks.get(w.id).status == "Queued"
    assert verdicts(repaired.remaining) == found


@pytest.mark.postgres_only
def test_a_multidimensional_array_is_a_shape_finding(
    db: Database, migrated_url: str, world: World
) -> None:
    """``array_position`` raises on a 2-D array (the 0006 triggers do): the audit must not."""
    with rules_off(migrated_url) as raw:
        raw.run(
            "UPDATE tasks SET dependant_on = ARRAY[ARRAY[%s::uuid]] WHERE id = %s",
            world.other_task.id,
            world.task.id,
        )
        raw.run(
            "UPDATE generations SET tasks = ARRAY[ARRAY[%s::uuid]] WHERE id = %s",
            world.task.id,
            world.generation.id,
        )
    target = resolve(migrated_url)
    assert verdicts(integrity.audit(target)) == {
        "dependant_on_shape": (1, {str(world.task.id)}),
        "generation_tasks_shape": (1, {str(world.generation.id)}),
    }
    repaired = integrity.repair(target)
    assert (repaired.changes, repaired.skipped) == ((), ())


# --- refusals, locks, atomicity -----------------------------------------------------------


def test_repair_needs_the_triggers_and_the_head_revision(
    db: Database, migrated_url: str, backend: str, world: World
) -> None:
    target = resolve(migrated_url)
    on = " ON tasks" if backend == "postgresql" else ""
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TRIGGER tasks_after_status{on}"))
    report = integrity.audit(target)
    assert report.audited and report.findings == () and not report.clean
    assert report.schema == (
        "trigger tasks_after_status on tasks is in the models but not in the database",
    )
    before = snapshot(db)
    with pytest.raises(SchemaOutOfDate, match="tasks_after_status"):
        integrity.repair(target)
    assert snapshot(db) == before
    db.close()
    downgrade(target, "0005")
    behind = integrity.audit(target)
    assert not behind.audited and not behind.clean and behind.findings == ()
    with pytest.raises(SchemaOutOfDate, match="dualdb migrate"):
        integrity.repair(target)


@pytest.mark.sqlite_only
def test_the_advised_downgrade_and_migrate_bring_back_a_lost_trigger(
    db: Database, migrated_url: str
) -> None:
    """What the audit advises for a lost trigger works for the ones that migrations 0014
    and 0015 replace too (their downgrades and upgrades drop them only if they exist)."""
    target = resolve(migrated_url)
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER tasks_check_dependencies"))
        conn.execute(sa.text("DROP TRIGGER tasks_after_status"))
    db.close()
    downgrade(target, "0005")
    upgrade(target)
    with sa.create_engine(migrated_url).connect() as conn:
        sql = dict(
            conn.execute(
                sa.text(
                    "SELECT name, sql FROM sqlite_master WHERE name IN "
                    "('tasks_check_dependencies', 'tasks_after_status')"
                )
            ).all()
        )
    assert "WHERE +d.status IN ('Failed', 'Cancelled')" in sql["tasks_check_dependencies"]
    assert "(+status IN ('Pending', 'Queued', 'In Progress')" in sql["tasks_after_status"]
    assert integrity.audit(target).schema == ()


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    target = resolve(str(path))
    report = integrity.audit(target)
    assert not report.audited and "does not exist" in report.schema[0]
    with pytest.raises(SchemaOutOfDate, match="does not exist"):
        integrity.repair(target)
    assert not path.exists()


def test_bad_intervals_are_refused(migrated_url: str) -> None:
    target = resolve(migrated_url)
    with pytest.raises(InvalidInput, match="stale_after"):
        integrity.audit(target, stale_after=timedelta(0))
    with pytest.raises(InvalidInput, match="lock_timeout"):
        integrity.repair(target, lock_timeout=timedelta(seconds=-1))


@pytest.mark.postgres_only
def test_repair_locks_out_writers_and_changes_nothing_when_it_cannot(
    db: Database, migrated_url: str, world: World
) -> None:
    """A worker's open write transaction holds repair back; past lock_timeout repair gives up
    and nothing of it is written."""
    q = db.tasks.enqueue(world.project.id, "q", {})
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET unmet_dependencies = 3 WHERE id = %s", q.id)
    target = resolve(migrated_url)
    pg_url = make_url(migrated_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(pg_url) as worker:
        worker.execute("UPDATE tasks SET worker_id = 'busy' WHERE id = %s", (world.task.id,))
        before = snapshot(db)
        with pytest.raises(DatabaseBusy):
            integrity.repair(target, lock_timeout=timedelta(milliseconds=200))
        assert snapshot(db) == before
        worker.rollback()
    assert changes(integrity.repair(target)) == {"counters_recomputed": (1, {str(q.id)})}
