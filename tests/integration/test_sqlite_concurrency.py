"""Several OS processes writing one SQLite file at once: nobody sees "database is locked".

Meaningful on SQLite only (one writer at a time, serialised by ``BEGIN IMMEDIATE`` and the busy
timeout); Postgres has row locks and is covered by the queue's own concurrency tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import dualdb

WORKERS = 3
PROJECTS = 120  # one-call creates per worker
BATCHES = 12  # create_many batches of TASKS_PER_BATCH tasks (with a dependency chain) each
TASKS_PER_BATCH = 10
INCREMENTS = 60  # read-then-write sessions on one shared row per worker
PLACEMENTS = 25  # generations each worker appends to one shared shot

# Runs in a fresh interpreter per worker.  Every DAL call goes through the public API; any
# DatabaseBusy (or raw "database is locked") is reported and fails the test.
WORKER = r"""
import json, sys, time, uuid
from pathlib import Path
import dualdb
from dualdb.errors import DatabaseBusy

args = json.loads(sys.argv[1])
go = Path(args["go"])
Path(args["ready"]).touch()  # imported: the parent says go once every worker is here
deadline = time.monotonic() + 120
while not go.exists():  # start together
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.005)
began = time.time()
db = dualdb.connect(args["url"])
me, counter, shot, owner = args["name"], args["counter"], args["shot"], args["user"]
try:
    for i in range(args["projects"]):
        db.projects.create(f"{me}-{i}", owner)
        if i % 10 == 0:
            # Read while others write: WAL readers never wait and never fail.
            assert db.projects.count() >= i
            sum(1 for _ in db.projects.iter(batch_size=50))
        if i % 5 == 0 and args["increments"]:
            # Read-then-write in one transaction: a lost update would lose an increment.
            with db.session() as s:
                value = int(s.projects.get(counter).name)
                s.projects.update(counter, name=str(value + 1))
            args["increments"] -= 1
    while args["increments"]:
        with db.session() as s:
            value = int(s.projects.get(counter).name)
            s.projects.update(counter, name=str(value + 1))
        args["increments"] -= 1
    project = db.projects.create(f"{me}-tasks", owner)
    for b in range(args["batches"]):
        ids = [str(uuid.uuid4()) for _ in range(args["per_batch"])]
        db.tasks.create_many([
            {"id": ids[k], "project_id": project.id, "task_type": "step",
             "params": {"b": b, "k": k}, "depends_on": ids[:k][-1:]}
            for k in range(len(ids))
        ])
    for g in range(args["placements"]):
        with db.session() as s:
            gen = s.generations.create(args["project"], location=f"{me}/{g}.png")
            s.shots.add_generation(shot, gen.id, position=0 if g % 3 == 0 else None)
except DatabaseBusy as exc:
    print(f"DatabaseBusy: {exc}", file=sys.stderr)
    sys.exit(3)
finally:
    db.close()
print(json.dumps({"began": began, "ended": time.time()}))
"""


@pytest.mark.sqlite_only
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_processes_writing_at_once_never_see_database_is_locked(
    migrated_url: str, tmp_path: Path
) -> None:
    with dualdb.connect(migrated_url) as db:
        owner = db.users.create(email="many@example.com")
        shared = db.projects.create("Shared", owner.id)
        counter = db.projects.create("0", owner.id)
        shot = db.shots.create(shared.id, "Shared shot")
        baseline = db.row_counts()

    go = tmp_path / "go"
    ready = [tmp_path / f"ready-w{w}" for w in range(WORKERS)]
    procs = []
    for w in range(WORKERS):
        args = {
            "url": migrated_url,
            "go": str(go),
            "ready": str(ready[w]),
            "name": f"w{w}",
            "user": str(owner.id),
            "counter": str(counter.id),
            "project": str(shared.id),
            "shot": str(shot.id),
            "projects": PROJECTS,
            "batches": BATCHES,
            "per_batch": TASKS_PER_BATCH,
            "increments": INCREMENTS,
            "placements": PLACEMENTS,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    # Every interpreter has started and waits at the barrier before any is told to go.
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready):
        if early := [p for p in procs if p.poll() is not None]:
            pytest.fail(f"a worker exited before the start:\n{early[0].communicate()[1]}")
        assert time.monotonic() < deadline, "the workers did not all start in time"
        time.sleep(0.01)
    go.touch()
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert "locked" not in (out + err).lower(), err
        assert code == 0, f"worker failed ({code}):\n{err}"
    spans = [json.loads(out.splitlines()[-1]) for _code, out, _err in results]
    assert max(s["began"] for s in spans) < min(s["ended"] for s in spans), (
        f"the workers did not write at the same time, so nothing was contended: {spans}"
    )

    with dualdb.connect(migrated_url) as db:
        counts = db.row_counts()
        assert counts["projects"] == baseline["projects"] + WORKERS * (PROJECTS + 1)
        assert counts["tasks"] == WORKERS * BATCHES * TASKS_PER_BATCH
        assert counts["task_dependencies"] == WORKERS * BATCHES * (TASKS_PER_BATCH - 1)
        assert counts["generations"] == WORKERS * PLACEMENTS
        assert db.projects.get(counter.id).name == str(WORKERS * INCREMENTS), "lost update"
        placed = db.shots.placements(shot.id)
        assert [p.position for p in placed] == list(range(WORKERS * PLACEMENTS))
        for w in range(WORKERS):
            names = {p.name for p in db.projects.iter(user_id=owner.id)}
            assert {f"w{w}-{i}" for i in range(PROJECTS)} <= names
        assert len({t.id for t in db.tasks.iter()}) == counts["tasks"]
        assert all(isinstance(t.id, uuid.UUID) for t in db.tasks.list(limit=5).items)
