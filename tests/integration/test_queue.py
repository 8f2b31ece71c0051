"""Queue semantics on a real SQLite file and a real Postgres: every guarantee in docs/queue.md."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

import dualdb
import dualdb.worker
from dualdb import Conflict, InvalidInput, NotFound
from dualdb.database import Database
from dualdb.records import Project
from dualdb.schema import task_dependencies, tasks
from tests.integration.driver_trace import driver_statements
from tests.integration.lock_support import LockWatch


@pytest.fixture
def project(db: Database) -> Project:
    user = db.users.create()
    return db.projects.create("Queue", user.id)


def test_enqueue_defaults_to_queued_and_claim_takes_oldest(db: Database, project: Project) -> None:
    first = db.tasks.enqueue(project.id, "single_image", {"n": 1})
    second = db.tasks.enqueue(project.id, "single_image", {"n": 2})
    assert first.status == "Queued"
    claimed = db.tasks.claim("w1")
    assert claimed is not None and claimed.id == first.id
    assert (claimed.status, claimed.worker_id, claimed.attempts) == ("In Progress", "w1", 1)
    assert claimed.generation_started_at is not None
    assert claimed.heartbeat_at == claimed.generation_started_at
    again = db.tasks.claim("w2")
    assert again is not None and again.id == second.id
    assert db.tasks.claim("w3") is None


def test_claim_filters_by_task_type(db: Database, project: Project) -> None:
    db.tasks.enqueue(project.id, "single_image", {})
    stitch = db.tasks.enqueue(project.id, "travel_stitch", {})
    claimed = db.tasks.claim("w", task_types=["travel_stitch"])
    assert claimed is not None and claimed.id == stitch.id
    assert db.tasks.claim("w", task_types=["travel_stitch"]) is None
    with pytest.raises(InvalidInput, match="task_types"):
        db.tasks.claim("w", task_types=[])


def test_pending_is_held_until_released(db: Database, project: Project) -> None:
    held = db.tasks.enqueue(project.id, "single_image", {}, status="Pending")
    assert db.tasks.claim("w") is None
    released = db.tasks.release(held.id)
    assert released.status == "Queued"
    claimed = db.tasks.claim("w")
    assert claimed is not None and claimed.id == held.id
    with pytest.raises(Conflict, match="not Pending"):
        db.tasks.release(held.id)


def test_dependencies_gate_claims(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "single_image", {})
    b = db.tasks.enqueue(project.id, "single_image", {})
    c = db.tasks.enqueue(project.id, "travel_stitch", {}, depends_on=[a.id, b.id])
    assert c.dependant_on == [a.id, b.id]
    ca = db.tasks.claim("w")
    cb = db.tasks.claim("w")
    assert {ca.id if ca else None, cb.id if cb else None} == {a.id, b.id}
    assert db.tasks.claim("w") is None  # c waits for both
    db.tasks.complete(a.id, "w", "a.png")
    assert db.tasks.claim("w") is None  # still waits for b
    db.tasks.complete(b.id, "w", "b.png")
    claimed = db.tasks.claim("w")
    assert claimed is not None and claimed.id == c.id


def test_enqueue_after_dependency_completed_is_ready(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.claim("w")
    db.tasks.complete(a.id, "w", "a.png")
    b = db.tasks.enqueue(project.id, "single_image", {}, depends_on=[a.id])
    claimed = db.tasks.claim("w")
    assert claimed is not None and claimed.id == b.id


def test_dependencies_must_exist_and_share_the_project(db: Database, project: Project) -> None:
    other = db.projects.create("Other", project.user_id)
    foreign = db.tasks.enqueue(other.id, "single_image", {})
    with pytest.raises(InvalidInput, match="another project") as info:
        db.tasks.enqueue(project.id, "x", {}, depends_on=[foreign.id])
    assert info.value.field == "depends_on"
    with pytest.raises(InvalidInput, match="does not exist"):
        db.tasks.enqueue(project.id, "x", {}, depends_on=[uuid.uuid4()])
    with pytest.raises(InvalidInput, match="not a valid UUID"):
        db.tasks.enqueue(project.id, "x", {}, depends_on=["nope"])
    assert db.tasks.count(project_id=project.id) == 0


def test_complete_only_by_the_claiming_worker_and_only_in_progress(
    db: Database, project: Project
) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    with pytest.raises(Conflict, match="Queued, not In Progress"):
        db.tasks.complete(t.id, "w1", "x.png")
    db.tasks.claim("w1")
    with pytest.raises(Conflict, match="another worker"):
        db.tasks.complete(t.id, "w2", "x.png")
    done = db.tasks.complete(t.id, "w1", "files/out.mp4")
    assert (done.status, done.output_location) == ("Complete", "files/out.mp4")
    assert done == db.tasks.get(t.id)  # the task as stored
    # A retry of the same call (lost reply) is answered, not refused…
    assert db.tasks.complete(t.id, "w1", "files/out.mp4") == done
    # …but a different result is a conflict.
    with pytest.raises(Conflict):
        db.tasks.complete(t.id, "w1", "files/other.mp4")
    with pytest.raises(NotFound):
        db.tasks.complete(uuid.uuid4(), "w1", "x")


def test_complete_creates_the_shot_generation_exactly_once(db: Database, project: Project) -> None:
    shot = db.shots.create(project.id, "Opening")
    t = db.tasks.enqueue(project.id, "single_image", {"prompt": "p", "shot_id": str(shot.id)})
    db.tasks.claim("w")
    done = db.tasks.complete(t.id, "w", "files/a.png")
    assert done.generation_processed_at is not None
    assert done == db.tasks.get(t.id)  # what the database's trigger wrote after the update
    gens = db.shots.generations(shot.id)
    assert [(g.location, g.tasks, g.type) for g in gens] == [
        ("files/a.png", [t.id], "single_image")
    ]
    db.tasks.complete(t.id, "w", "files/a.png")  # retried
    assert len(db.shots.generations(shot.id)) == 1
    assert [g.id for g in db.generations.for_task(t.id)] == [gens[0].id]


def test_shot_in_params_must_be_in_the_project(db: Database, project: Project) -> None:
    other = db.projects.create("Other", project.user_id)
    foreign_shot = db.shots.create(other.id, "Theirs")
    with pytest.raises(InvalidInput) as info:
        db.tasks.enqueue(project.id, "single_image", {"shot_id": str(foreign_shot.id)})
    assert info.value.field == "params.shot_id"
    with pytest.raises(InvalidInput):
        db.tasks.enqueue(project.id, "single_image", {"shot_id": "not-a-uuid"})


def test_fail_cascades_cancellation_transitively(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "single_image", {})
    b = db.tasks.enqueue(project.id, "single_image", {}, depends_on=[a.id])
    c = db.tasks.enqueue(project.id, "travel_stitch", {}, depends_on=[b.id])
    unrelated = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.claim("w")
    failed = db.tasks.fail(a.id, "w", "CUDA out of memory")
    assert (failed.status, failed.error) == ("Failed", "CUDA out of memory")
    for dependent in (b, c):
        got = db.tasks.get(dependent.id)
        assert got.status == "Cancelled"
        assert got.error is not None and str(a.id) in got.error
    assert db.tasks.get(unrelated.id).status == "Queued"
    with pytest.raises(InvalidInput, match="will never complete"):
        db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id])


def test_fail_with_retry_requeues_while_attempts_remain(db: Database, project: Project) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    for attempt in (1, 2):
        claimed = db.tasks.claim("w")
        assert claimed is not None and claimed.attempts == attempt
        again = db.tasks.fail(t.id, "w", f"flaky {attempt}", retry=True, max_attempts=3)
        assert (again.status, again.worker_id, again.error) == ("Queued", None, f"flaky {attempt}")
    db.tasks.claim("w")
    final = db.tasks.fail(t.id, "w", "flaky 3", retry=True, max_attempts=3)
    assert (final.status, final.attempts) == ("Failed", 3)


def test_cancel_cascades_and_refuses_finished_tasks(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "single_image", {})
    b = db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id])
    c = db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id, b.id])  # a fan-in
    cancelled = db.tasks.cancel(a.id, "user cancelled")
    assert [t.id for t in cancelled] == [a.id, b.id, c.id]
    assert all(t.status == "Cancelled" for t in cancelled)
    with pytest.raises(Conflict, match="only unfinished"):
        db.tasks.cancel(a.id)


def test_cancel_of_a_running_task_refuses_its_completion(db: Database, project: Project) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.claim("w")
    db.tasks.cancel(t.id)
    with pytest.raises(Conflict, match="Cancelled"):
        db.tasks.complete(t.id, "w", "late.png")
    assert db.tasks.get(t.id).output_location is None


def test_heartbeat_and_requeue_stale(db: Database, project: Project) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    claimed = db.tasks.claim("dead")
    assert claimed is not None
    beat = db.tasks.heartbeat(t.id, "dead")
    assert beat.heartbeat_at is not None and claimed.heartbeat_at is not None
    assert beat.heartbeat_at >= claimed.heartbeat_at
    with pytest.raises(Conflict):
        db.tasks.heartbeat(t.id, "someone-else")
    assert db.tasks.requeue_stale(timedelta(minutes=5)) == []  # fresh heartbeat
    time.sleep(0.05)
    recovered = db.tasks.requeue_stale(timedelta(milliseconds=10))
    assert [(r.id, r.status, r.worker_id) for r in recovered] == [(t.id, "Queued", None)]
    assert recovered[0].error is not None and "dead" in recovered[0].error
    again = db.tasks.claim("alive")
    assert again is not None and (again.id, again.attempts) == (t.id, 2)
    db.tasks.complete(t.id, "alive", "ok.png")
    with pytest.raises(Conflict):
        db.tasks.complete(t.id, "dead", "ok.png")


def test_requeue_stale_fails_after_max_attempts_and_cascades(
    db: Database, project: Project
) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    child = db.tasks.enqueue(project.id, "x", {}, depends_on=[t.id])
    db.tasks.claim("dead")
    time.sleep(0.02)
    changed = db.tasks.requeue_stale(timedelta(0), max_attempts=1)
    assert [(c.id, c.status) for c in changed] == [(t.id, "Failed"), (child.id, "Cancelled")]
    assert changed[0].error is not None and "after 1 attempts" in changed[0].error


def test_release_claim_gives_the_task_back_without_an_attempt(
    db: Database, project: Project
) -> None:
    t = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.claim("w")
    back = db.tasks.release_claim(t.id, "w")
    assert (back.status, back.attempts, back.worker_id) == ("Queued", 0, None)


def test_counts_and_list_filters(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.enqueue(project.id, "travel_stitch", {}, depends_on=[a.id])
    db.tasks.enqueue(project.id, "single_image", {}, status="Pending")
    db.tasks.claim("gpu-1")
    counts = db.tasks.counts(project.id)
    assert counts == {
        "Pending": 1,
        "Queued": 1,
        "In Progress": 1,
        "Complete": 0,
        "Failed": 0,
        "Cancelled": 0,
    }
    assert db.tasks.counts() == counts
    assert [t.id for t in db.tasks.list(worker_id="gpu-1").items] == [a.id]
    assert len(db.tasks.list(status="Queued", task_type="travel_stitch").items) == 1
    with pytest.raises(InvalidInput, match="not a task status"):
        db.tasks.list(status="queued")


def test_readiness_bookkeeping_matches_the_canonical_array(
    db: Database, project: Project, migrated_url: str
) -> None:
    """task_dependencies and unmet_dependencies always agree with dependant_on and statuses."""
    a = db.tasks.enqueue(project.id, "x", {})
    b = db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id])
    c = db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id, b.id])
    db.tasks.claim("w")
    db.tasks.complete(a.id, "w", "a")
    with db.engine.connect() as conn:
        edges = {(r.task_id, r.dependency_id) for r in conn.execute(sa.select(task_dependencies))}
        rows = conn.execute(sa.select(tasks.c.id, tasks.c.unmet_dependencies)).all()
    unmet = {r.id: r.unmet_dependencies for r in rows}
    assert edges == {(b.id, a.id), (c.id, a.id), (c.id, b.id)}
    assert unmet == {a.id: 0, b.id: 0, c.id: 1}


def test_delete_refuses_a_task_others_wait_for(db: Database, project: Project) -> None:
    a = db.tasks.enqueue(project.id, "x", {})
    b = db.tasks.enqueue(project.id, "x", {}, depends_on=[a.id])
    with pytest.raises(Conflict, match="cancel it"):
        db.tasks.delete(a.id)
    db.tasks.delete(b.id)
    db.tasks.delete(a.id)
    assert db.tasks.count() == 0


def test_queue_verbs_validate_input(db: Database, project: Project) -> None:
    t = db.tasks.enqueue(project.id, "x", {})
    with pytest.raises(InvalidInput, match="worker_id"):
        db.tasks.claim("")
    with pytest.raises(InvalidInput, match="id"):
        db.tasks.complete("nope", "w", "x")
    with pytest.raises(InvalidInput, match="older_than"):
        db.tasks.requeue_stale(timedelta(seconds=-1))
    with pytest.raises(InvalidInput, match="output_location"):
        db.tasks.claim("w")
        db.tasks.complete(t.id, "w", "")
    assert db.tasks.get(t.id).status == "In Progress"


def test_racing_completions_create_the_generation_once(
    db: Database, project: Project, migrated_url: str
) -> None:
    """Eight threads, each with its own connection, complete the same task at the same time."""
    shot = db.shots.create(project.id, "Race")
    t = db.tasks.enqueue(project.id, "single_image", {"shot_id": str(shot.id)})
    db.tasks.claim("w")
    start = threading.Barrier(8)
    results: list[object] = []

    def finish() -> None:
        with dualdb.connect(migrated_url) as own:
            start.wait()
            try:
                results.append(own.tasks.complete(t.id, "w", "files/race.png"))
            except Exception as exc:  # collected and asserted below
                results.append(exc)

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(results) == 8
    assert all(getattr(r, "status", None) == "Complete" for r in results), results
    assert [g.location for g in db.shots.generations(shot.id)] == ["files/race.png"]
    assert len(db.generations.for_task(t.id)) == 1


def test_enqueue_racing_the_completion_of_its_dependency_is_never_stranded(
    db: Database, project: Project, migrated_url: str
) -> None:
    """A dependent enqueued (uncommitted) while its dependency completes ends up claimable.

    The completion must wait for the enqueue's lock (Postgres: the enqueue's trigger locks the
    dependency ``FOR SHARE``; SQLite: the enqueue's transaction holds the one write lock) and
    then count the new edge.  The test releases the enqueue only once the completion is seen
    waiting for it: without that lock the completion never waits (``until_blocked`` fails) and
    misses the uncommitted edge, stranding the dependent (the claim below finds nothing).
    """
    dep = db.tasks.enqueue(project.id, "single_image", {})
    db.tasks.claim("w")
    done: list[object] = []
    with dualdb.connect(migrated_url) as own:
        watch = LockWatch(own)

        def complete_dep() -> None:
            try:
                done.append(own.tasks.complete(dep.id, "w", "dep.png"))
            except Exception as exc:  # collected and asserted below
                done.append(exc)

        racer = threading.Thread(target=complete_dep)
        with db.session() as s:
            child = s.tasks.enqueue(project.id, "travel_stitch", {}, depends_on=[dep.id])
            racer.start()
            watch.until_blocked(racer, s.connection)
            assert done == [], "the completion finished while the enqueue held its lock"
        racer.join(timeout=60)
    assert not racer.is_alive()
    assert [getattr(d, "status", d) for d in done] == ["Complete"]
    claimed = db.tasks.claim("w")
    assert claimed is not None and claimed.id == child.id


def test_a_completion_that_releases_dependents_returns_the_task_as_stored(
    db: Database, project: Project
) -> None:
    """Releasing dependents writes their rows, not the completed one's: what the update
    returned is the task as stored (on SQLite one statement, no read-back); a shot task's
    row is stamped after the update, and what is returned says so on both backends."""
    shot = db.shots.create(project.id, "Stamped")
    # (params, stamped, read back on SQLite: any "shot_id" in the stored text is)
    for params, stamped, read in (
        ({"prompt": "p"}, False, False),
        ({"shot_id": None}, False, True),
        ({"shot_id": str(shot.id)}, True, True),
    ):
        t = db.tasks.enqueue(project.id, "single_image", params)
        waiting = db.tasks.enqueue(project.id, "single_image", {}, depends_on=[t.id])
        db.tasks.claim("w")
        with driver_statements(db) as seen:
            done = db.tasks.complete(t.id, "w", "files/a.png")
        assert done == db.tasks.get(t.id)
        assert (done.generation_processed_at is not None) == stamped, params
        if db.backend == "sqlite":
            read_back = [q for q in seen if q.startswith("SELECT tasks.id")]
            assert len(read_back) == read, seen
        released = db.tasks.claim("w")  # the dependent is ready now
        assert released is not None and released.id == waiting.id
        db.tasks.complete(waiting.id, "w", "files/b.png")


@pytest.mark.sqlite_only
def test_a_shot_id_given_twice_is_read_as_the_database_reads_it(
    db: Database, project: Project
) -> None:
    """Another program stored params with ``shot_id`` twice, the first one set: SQLite's
    trigger reads the first and stamps the row (Python's JSON parser keeps the last, null);
    the completion returns the row as stored."""
    shot = db.shots.create(project.id, "Twice")
    t = db.tasks.enqueue(project.id, "single_image", {})
    waiting = db.tasks.enqueue(project.id, "single_image", {}, depends_on=[t.id])
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE tasks SET params = ? WHERE id = ?",
            (f'{{"shot_id":"{shot.id}","shot_id":null}}', str(t.id)),
        )
    db.tasks.claim("w")
    done = db.tasks.complete(t.id, "w", "files/a.png")
    assert done.generation_processed_at is not None
    assert done == db.tasks.get(t.id)
    assert db.tasks.get(waiting.id).status == "Queued"


def test_a_shot_that_disappeared_does_not_poison_completion(db: Database, project: Project) -> None:
    shot = db.shots.create(project.id, "Gone")
    t = db.tasks.enqueue(project.id, "single_image", {"shot_id": str(shot.id)})
    db.shots.delete(shot.id)
    db.tasks.claim("w")
    done = db.tasks.complete(t.id, "w", "files/orphan.png")
    assert done.status == "Complete" and done.generation_processed_at is not None
    assert [g.location for g in db.generations.for_task(t.id)] == ["files/orphan.png"]


def test_updating_params_checks_the_shot_like_enqueue(db: Database, project: Project) -> None:
    other = db.projects.create("Other", project.user_id)
    foreign = db.shots.create(other.id, "Theirs")
    t = db.tasks.enqueue(project.id, "single_image", {})
    for bad in ({"shot_id": "not-a-uuid"}, {"shot_id": str(foreign.id)}):
        with pytest.raises(InvalidInput) as info:
            db.tasks.update(t.id, params=bad)
        assert info.value.field == "params.shot_id"
    assert db.tasks.get(t.id).params == {}


def test_max_attempts_has_the_same_bound_on_both_backends(db: Database, project: Project) -> None:
    """Postgres' queue functions take ``integer`` attempts: a larger limit is refused on both
    backends alike (InvalidInput, nothing changed), and the largest allowed one works."""
    db.tasks.enqueue(project.id, "t", {})
    task = db.tasks.claim("w")
    assert task is not None
    too_many = 2**31
    with pytest.raises(InvalidInput, match=r"^max_attempts: must be at most 2147483647$"):
        db.tasks.fail(task.id, "w", "boom", retry=True, max_attempts=too_many)
    with pytest.raises(InvalidInput, match=r"^max_attempts: must be at most 2147483647$"):
        db.tasks.requeue_stale(timedelta(0), max_attempts=too_many)
    with pytest.raises(InvalidInput, match=r"^max_attempts: must be at most 2147483647$"):
        dualdb.worker.Worker(db, lambda t: "x", max_attempts=too_many)
    assert db.tasks.get(task.id).status == "In Progress"
    again = db.tasks.fail(task.id, "w", "boom", retry=True, max_attempts=too_many - 1)
    assert (again.status, again.attempts) == ("Queued", 1)
