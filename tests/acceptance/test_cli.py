"""The ``dualdb`` console script, run as a user would, on both backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dualdb import migrations
from dualdb.database import connect
from dualdb.schema import TABLES
from tests.integration.integrity_support import rules_off

# The console script installed beside this interpreter (the venv's), else the one on PATH.
_BESIDE = Path(sys.executable).parent / "dualdb"
DUALDB = str(_BESIDE) if _BESIDE.exists() else shutil.which("dualdb")


def dualdb(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert DUALDB is not None, "the dualdb console script is not installed (pip install -e .)"
    ours = ("APP_ENV", "SUPABASE", "DATABASE_URL", "DUALDB_SQLITE")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    full_env.update(env or {})
    return subprocess.run(
        [DUALDB, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")


def test_migrate_in_an_empty_folder_creates_local_db(tmp_path: Path) -> None:
    result = dualdb("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied 0001" in result.stdout and "applied 0002" in result.stdout
    assert (tmp_path / "local.db").is_file()
    check = dualdb("check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    status = dualdb("status", "--json", cwd=tmp_path)
    data = json.loads(status.stdout)
    head = migrations.head_revision()
    assert data == {
        "backend": "sqlite",
        "url": "sqlite:///local.db",
        "current": head,
        "head": head,
        "pending": [],
        "up_to_date": True,
        "rows": {t.name: 0 for t in TABLES},
    }


def test_sqlite_path_env_var_is_honoured(tmp_path: Path) -> None:
    result = dualdb("migrate", cwd=tmp_path, env={"DUALDB_SQLITE_PATH": "data.db"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data.db").is_file() and not (tmp_path / "local.db").exists()


def test_cli_on_both_backends(db_url: str, tmp_path: Path) -> None:
    status = dualdb("status", "--url", db_url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    # The table wraps long cells at the terminal's width: compare the words.
    assert ", ".join(migrations.revisions()) in " ".join(status.stdout.split())
    assert dualdb("check", "--url", db_url, cwd=tmp_path).returncode == 1
    assert dualdb("migrate", "0001", "--url", db_url, cwd=tmp_path).returncode == 0
    half = dualdb("status", "--url", db_url, "--json", cwd=tmp_path).stdout
    assert json.loads(half)["pending"] == migrations.revisions()[1:]
    assert dualdb("migrate", "--url", db_url, cwd=tmp_path).returncode == 0
    assert dualdb("check", "--url", db_url, cwd=tmp_path).returncode == 0
    down = dualdb("downgrade", "base", "--url", db_url, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert f"Reverted {len(migrations.revisions())} migration(s)" in down.stdout


def test_status_redacts_the_password(tmp_path: Path) -> None:
    result = dualdb(
        "status",
        cwd=tmp_path,
        env={
            "APP_ENV": "web",
            "SUPABASE_DB_URL": "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/postgres",
        },
    )
    assert_one_line_error(result)
    assert "s3cr3t-pw" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["status"], {"APP_ENV": "staging"}, "APP_ENV must be 'local' or 'web'"),
        (["status"], {"APP_ENV": "web"}, "SUPABASE_DB_URL"),
        (["status", "--url", "mysql://x@h/db"], {}, "unsupported database URL scheme"),
        (["migrate", "nope"], {}, "Can't locate revision"),
        (["downgrade", "zzz"], {}, "zzz"),
        (["migrate", "--url", "sqlite:////no/such/folder/x.db"], {}, "does not exist"),
        (["migrate", "--url", "postgresql://u:p@127.0.0.1:6543/postgres"], {}, "session pooler"),
        (["generate", "-m", " "], {}, "needs a message"),
        (["sql", "--from", "bad rev"], {}, "not a revision"),
        # Text that looks like rich markup is printed as it is, not interpreted.
        (["migrate", "[/x]"], {}, "'[/x]'"),
        (["migrate", "zz[bold]"], {}, "zz[bold]"),
        (["status", "--url", "postgresql://u:p@127.0.0.1:abc/db"], {}, "could not be parsed"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = dualdb(*args, cwd=tmp_path, env=env)
    assert_one_line_error(result)
    assert needle in result.stderr


def test_unreachable_postgres_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    result = dualdb("status", "--url", "postgresql://u:pw@127.0.0.1:1/db", cwd=tmp_path)
    assert time.monotonic() - start < 15
    assert_one_line_error(result)
    assert "cannot use the database" in result.stderr


def test_sql_renders_offline_postgres_sql(tmp_path: Path) -> None:
    result = dualdb("sql", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE tasks" in result.stdout and "JSONB" in result.stdout
    assert "INSERT INTO alembic_version" in result.stdout
    out = tmp_path / "all.sql"
    assert dualdb("sql", "--to", "0001", "-o", str(out), cwd=tmp_path).returncode == 0
    assert "ADD COLUMN attempts" not in out.read_text()


def test_sql_from_a_database_renders_only_what_is_pending(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'half.db'}"
    assert dualdb("migrate", "0001", "--url", db, cwd=tmp_path).returncode == 0
    result = dualdb("sql", "--url", db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE tasks" not in result.stdout
    assert "ADD COLUMN attempts" in result.stdout
    assert "INSERT INTO alembic_version" not in result.stdout  # starts from 0001, not base


def test_check_data_and_repair(migrated_url: str, tmp_path: Path) -> None:
    """`check --data` lists what is broken (exit 1), `repair --dry-run` shows the fix and writes
    nothing, `repair` applies it, and then both are clean (exit 0)."""
    with connect(migrated_url) as db:
        user = db.users.create()
        project = db.projects.create("P", user.id)
        first = db.tasks.enqueue(project.id, "first", {})
        second = db.tasks.enqueue(project.id, "second", {}, depends_on=[first.id])
    with rules_off(migrated_url) as raw:
        raw.run("UPDATE tasks SET unmet_dependencies = 0 WHERE id = %s", second.id)

    broken = dualdb("check", "--data", "--url", migrated_url, cwd=tmp_path)
    assert broken.returncode == 1, broken.stderr
    assert "schema matches the models" in broken.stdout
    assert "counters (1, repair fixes):" in broken.stderr and str(second.id) in broken.stderr
    assert "Traceback" not in broken.stderr
    dry = dualdb("repair", "--dry-run", "--url", migrated_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "nothing was written" in dry.stdout and "counters_recomputed (1)" in dry.stdout
    assert dualdb("check", "--data", "--url", migrated_url, cwd=tmp_path).returncode == 1
    fixed = dualdb("repair", "--url", migrated_url, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "in one transaction" in fixed.stdout and str(second.id) in fixed.stdout
    clean = dualdb("check", "--data", "--url", migrated_url, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "OK: the data keeps every rule" in clean.stdout
    again = dualdb("repair", "--url", migrated_url, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to repair" in again.stdout
    # Plain `check` still compares the schema only.
    assert "data" not in dualdb("check", "--url", migrated_url, cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["repair", "--url", "missing.db"], "does not exist: run `dualdb migrate`"),
        (["repair", "--dry-run", "--url", "missing.db"], "does not exist"),
        (["check", "--data", "--stale-after", "0", "--url", "missing.db"], "--stale-after"),
        (["check", "--stale-after", "5", "--url", "missing.db"], "only applies with --data"),
        (["repair", "--url", "postgresql://u:pw@127.0.0.1:1/db"], "cannot use the database"),
    ],
)
def test_check_data_and_repair_fail_in_one_line(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    result = dualdb(*args, cwd=tmp_path)
    assert_one_line_error(result)
    assert needle in result.stderr
    assert not (tmp_path / "missing.db").exists()
