"""``dualdb seed``, run as a user would (the venv's console script), on both backends."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

import dualdb
from dualdb.schema import DUMMY_USER_ID, task_dependencies
from dualdb.seed import PROJECT_NAME, seed_id
from tests.acceptance.test_cli import assert_one_line_error
from tests.acceptance.test_cli import dualdb as run
from tests.integration.dal_support import snapshot


def seed_args(url: str, backend: str) -> list[str]:
    """``seed --url URL``, with the explicit consent Postgres needs."""
    return ["seed", "--url", url, *(["--allow-remote"] if backend == "postgresql" else [])]


def test_seed_twice_gives_the_same_rows_and_ids(
    migrated_url: str, backend: str, tmp_path: Path
) -> None:
    first = run(*seed_args(migrated_url, backend), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Seeded"), first.stdout
    with dualdb.connect(migrated_url) as db:
        once = snapshot(db)
        counts = db.row_counts()
    assert counts == {
        "users": 1,
        "projects": 1,
        "tasks": 3,
        "task_dependencies": 3,
        "generations": 2,
        "shots": 3,
        "shot_generations": 2,
    }
    second = run(*seed_args(migrated_url, backend), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Already seeded" in second.stdout and "nothing changed" in second.stdout
    with dualdb.connect(migrated_url) as db:
        assert snapshot(db) == once, "a second seed must not add or change any row"


def test_seeded_content(migrated_url: str, backend: str, tmp_path: Path) -> None:
    assert run(*seed_args(migrated_url, backend), cwd=tmp_path).returncode == 0
    dummy = uuid.UUID(DUMMY_USER_ID)
    with dualdb.connect(migrated_url) as db:
        assert db.users.get(dummy).id == uuid.UUID("00000000-0000-0000-0000-000000000000")
        [project] = db.projects.for_user(dummy)
        assert (project.id, project.name) == (seed_id("project"), PROJECT_NAME)
        shots = db.shots.list(project_id=project.id).items
        assert [s.name for s in shots] == ["Opening", "Middle", "Finale"]
        assert [s.id for s in shots] == [
            seed_id(f"shot:{n}") for n in ("Opening", "Middle", "Finale")
        ]
        # Generations on the first shot, in position order.
        placed = db.shots.placements(shots[0].id)
        assert [p.position for p in placed] == [0, 1]
        gens = db.shots.generations(shots[0].id)
        assert [g.id for g in gens] == [
            seed_id("generation:storyboard-1"),
            seed_id("generation:storyboard-2"),
        ]
        assert [g.location for g in gens] == [
            "files/seed/storyboard-1.png",
            "files/seed/storyboard-2.png",
        ]
        # A chain of dependent tasks: keyframe-1 <- keyframe-2 <- stitch (which needs both).
        tasks = db.tasks.list(project_id=project.id).items
        k1, k2, stitch = (seed_id(f"task:{k}") for k in ("keyframe-1", "keyframe-2", "stitch"))
        assert [t.id for t in tasks] == [k1, k2, stitch]
        assert [t.dependant_on for t in tasks] == [[], [k1], [k1, k2]]
        assert {t.status for t in tasks} == {"Queued"}
        assert [t.task_type for t in tasks] == ["single_image", "single_image", "travel_stitch"]
        with db.engine.connect() as conn:
            edges = {tuple(r) for r in conn.execute(sa.select(task_dependencies)).all()}
        assert edges == {(k2, k1), (stitch, k1), (stitch, k2)}


def test_reseed_restores_only_what_is_missing(
    migrated_url: str, backend: str, tmp_path: Path
) -> None:
    assert run(*seed_args(migrated_url, backend), cwd=tmp_path).returncode == 0
    with dualdb.connect(migrated_url) as db:
        db.projects.update(seed_id("project"), name="Renamed by hand")
        edited = snapshot(db)
        db.shots.delete(seed_id("shot:Finale"))
    again = run(*seed_args(migrated_url, backend), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 shots" in again.stdout, again.stdout
    with dualdb.connect(migrated_url) as db:
        restored = snapshot(db)
    # The shot is back with the same id; the renamed project was left alone.
    assert {k: v for k, v in restored.items() if k != "shots"} == {
        k: v for k, v in edited.items() if k != "shots"
    }
    ids = lambda rows: [r[0] for r in rows]  # noqa: E731
    assert sorted(map(str, ids(restored["shots"]))) == sorted(map(str, ids(edited["shots"])))
    with dualdb.connect(migrated_url) as db:
        assert db.projects.get(seed_id("project")).name == "Renamed by hand"


@pytest.mark.postgres_only
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_is_refused_without_allow_remote(migrated_url: str, tmp_path: Path) -> None:
    refused = run("seed", "--url", migrated_url, cwd=tmp_path)
    assert_one_line_error(refused)
    assert refused.returncode == 1
    assert "--allow-remote" in refused.stderr
    web = run("seed", cwd=tmp_path, env={"APP_ENV": "web", "SUPABASE_DB_URL": migrated_url})
    assert_one_line_error(web)
    assert web.returncode == 1
    assert "--allow-remote" in web.stderr
    with dualdb.connect(migrated_url) as db:
        assert set(db.row_counts().values()) == {0}, "a refused seed wrote nothing"
    allowed = run(
        "seed",
        "--allow-remote",
        cwd=tmp_path,
        env={"APP_ENV": "web", "SUPABASE_DB_URL": migrated_url},
    )
    assert allowed.returncode == 0, allowed.stderr
    with dualdb.connect(migrated_url) as db:
        assert db.projects.get(seed_id("project")).name == PROJECT_NAME


def test_seed_the_local_default_database(tmp_path: Path) -> None:
    assert run("migrate", cwd=tmp_path).returncode == 0
    result = run("seed", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with dualdb.connect(str(tmp_path / "local.db")) as db:
        assert db.projects.get(seed_id("project")).name == PROJECT_NAME


def test_seed_needs_a_migrated_database(db_url: str, backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        Path(db_url.removeprefix("sqlite:///")).touch()
    result = run(*seed_args(db_url, backend), cwd=tmp_path)
    assert_one_line_error(result)
    assert "dualdb migrate" in result.stderr
