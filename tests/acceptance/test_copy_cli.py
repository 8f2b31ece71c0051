"""``dualdb copy`` / ``dump`` / ``load`` run as a user would: promote, pull back, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import dualdb
from dualdb.seed import seed_id
from tests.acceptance.test_cli import DUALDB, assert_one_line_error
from tests.acceptance.test_cli import dualdb as run
from tests.integration.dal_support import snapshot
from tests.integration.transfer_support import TARGETS, MakeDb, content, fresh

__all__ = ["fresh"]


@pytest.mark.postgres
def test_promote_the_seeded_project_to_postgres_and_pull_it_back(
    fresh: MakeDb, tmp_path: Path
) -> None:
    assert run("migrate", cwd=tmp_path).returncode == 0
    assert run("seed", cwd=tmp_path).returncode == 0
    pg = fresh("postgresql")
    project = str(seed_id("project"))

    refused = run("copy", "--from", "sqlite:///local.db", "--to", pg, cwd=tmp_path)
    assert_one_line_error(refused)
    assert "--allow-remote" in refused.stderr
    # The same in web mode, where the environment names the Postgres database.
    web = run(
        "copy",
        "--from",
        "sqlite:///local.db",
        "--to",
        pg,
        cwd=tmp_path,
        env={"APP_ENV": "web", "SUPABASE_DB_URL": pg},
    )
    assert_one_line_error(web)
    with dualdb.connect(pg) as target:
        assert sum(target.row_counts().values()) == 0

    up = run(
        "copy", "--from", "sqlite:///local.db", "--to", pg, "--allow-remote", "--project", project,
        cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "Verified" in up.stdout

    assert run("migrate", "--url", "sqlite:///back.db", cwd=tmp_path).returncode == 0
    down = run("copy", "--from", pg, "--to", "sqlite:///back.db", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "Verified" in down.stdout
    local = dualdb.connect(f"sqlite:///{tmp_path / 'local.db'}")
    back = dualdb.connect(f"sqlite:///{tmp_path / 'back.db'}")
    with local, back, dualdb.connect(pg) as middle:
        assert content(middle) == content(local)
        assert content(back) == content(local)


def test_copy_refusals_are_one_line(tmp_path: Path) -> None:
    assert run("migrate", "--url", "sqlite:///a.db", cwd=tmp_path).returncode == 0
    assert run("migrate", "0008", "--url", "sqlite:///old.db", cwd=tmp_path).returncode == 0
    older = run("copy", "--from", "sqlite:///a.db", "--to", "sqlite:///old.db", cwd=tmp_path)
    assert_one_line_error(older)
    assert "target:" in older.stderr and "dualdb migrate --url sqlite:///old.db" in older.stderr
    missing = run("copy", "--from", "sqlite:///a.db", "--to", "sqlite:///none.db", cwd=tmp_path)
    assert_one_line_error(missing)
    assert not (tmp_path / "none.db").exists()
    bad = run(
        "copy", "--from", "sqlite:///a.db", "--to", "sqlite:///old.db", "--on-conflict", "merge",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(bad)
    (tmp_path / "junk.zip").write_text("not a dump")
    junk = run("load", "junk.zip", "--url", "sqlite:///a.db", cwd=tmp_path)
    assert_one_line_error(junk)
    assert "not a zip" in junk.stderr


def _many_tasks(db: dualdb.Database, n: int) -> None:
    """A project with ``n`` tasks in chains of ten (each waits for the one before)."""
    with db.session() as s:
        user = s.users.create(email="bulk@example.com")
        project = s.projects.create("Bulk", user.id)
        previous = None
        for i in range(n):
            deps = [previous] if previous is not None and i % 10 else []
            previous = s.tasks.enqueue(project.id, "bulk", {"i": i}, depends_on=deps).id


@pytest.mark.parametrize("target", TARGETS)
def test_a_copy_killed_mid_way_is_finished_by_running_it_again(
    target: str, fresh: MakeDb, tmp_path: Path
) -> None:
    src_url, dst_url = fresh("sqlite"), fresh(target)
    total = 3000
    with dualdb.connect(src_url) as src:
        _many_tasks(src, total)
    assert DUALDB is not None
    args = [DUALDB, "copy", "--from", src_url, "--to", dst_url, "--allow-remote"]
    killed_after = None
    with subprocess.Popen(
        [*args, "--batch-size", "50"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # a line per committed batch: kill once some tasks are in
            if line.strip().startswith("tasks:"):
                done = int(line.split(":")[1].split("/")[0])
                if done >= 500:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_after = done
                    break
        proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    with dualdb.connect(dst_url) as dst:
        partial = dst.row_counts()["tasks"]
        assert killed_after <= partial < total  # committed batches stayed, the rest is missing

    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "Verified" in rerun.stdout
    with dualdb.connect(src_url) as src, dualdb.connect(dst_url) as dst:
        assert dst.row_counts() == src.row_counts()
        assert snapshot(dst) == snapshot(src)


@pytest.mark.parametrize("target", TARGETS)
def test_dump_then_load_with_verify(target: str, fresh: MakeDb, tmp_path: Path) -> None:
    assert run("migrate", "--url", "sqlite:///local.db", cwd=tmp_path).returncode == 0
    assert run("seed", "--url", "sqlite:///local.db", cwd=tmp_path).returncode == 0
    dumped = run("dump", "--url", "sqlite:///local.db", "-o", "backup.zip", cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    assert "Wrote 15 rows to backup.zip" in dumped.stdout  # 12 rows and 3 dependency edges
    dst = fresh(target)
    dry = run("load", "backup.zip", "--url", dst, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was written (12 rows would be)" in dry.stdout
    with dualdb.connect(dst) as db:
        assert sum(db.row_counts().values()) == 0

    # A corrupt copy of the dump: one line, nothing written.
    data = (tmp_path / "backup.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) - 200])
    cut = run("load", "cut.zip", "--url", dst, "--allow-remote", cwd=tmp_path)
    assert_one_line_error(cut)
    with dualdb.connect(dst) as db:
        assert sum(db.row_counts().values()) == 0

    loaded = run("load", "backup.zip", "--url", dst, "--allow-remote", "--verify", cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "Loaded 12 rows." in loaded.stdout and "Verified" in loaded.stdout
    with dualdb.connect(dst) as db, dualdb.connect(f"sqlite:///{tmp_path / 'local.db'}") as src:
        assert content(db) == content(src)
