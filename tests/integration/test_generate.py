"""``dualdb generate`` writes a migration that itself runs on both dialects.

The model change is made in a scratch copy of the package, so the real history is untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dualdb
from dualdb import migrations

PACKAGE = Path(dualdb.__file__).resolve().parent
HEAD = migrations.head_revision()
NEXT = f"{int(HEAD) + 1:04d}"

MODEL_CHANGE = """

shots.append_column(sa.Column("description", sa.Text(), nullable=True))

notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", UUID(), primary_key=True, server_default=new_uuid()),
    sa.Column("project_id", UUID(), sa.ForeignKey("projects.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("body", JSONB(), nullable=False),
    sa.Column("tags", UUIDArray(), nullable=False, server_default=empty_uuid_array()),
    sa.Column("created_at", Timestamp(), nullable=False, server_default=utcnow()),
    sa.Column("kind", sa.Text(), nullable=False, server_default="plain"),
    sa.CheckConstraint("kind IN ('plain', 'pinned')", name="kind"),
    sa.Index(None, "project_id", "created_at"),
)
"""


def run(scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(scratch / "src"), "APP_ENV": "local"}
    return subprocess.run(
        [sys.executable, "-m", "dualdb", *args],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    scratch = tmp_path_factory.mktemp("scratch")
    shutil.copytree(
        PACKAGE, scratch / "src" / "dualdb", ignore=shutil.ignore_patterns("__pycache__")
    )
    with open(scratch / "src" / "dualdb" / "schema.py", "a", encoding="utf-8") as f:
        f.write(MODEL_CHANGE)
    base_db = f"sqlite:///{scratch / 'gen.db'}"
    assert run(scratch, "migrate", "--url", base_db).returncode == 0
    result = run(scratch, "generate", "-m", "add notes and shot descriptions", "--url", base_db)
    assert result.returncode == 0, result.stderr
    versions = scratch / "src" / "dualdb" / "migrations" / "versions"
    new = sorted(versions.glob(f"{NEXT}_*.py"))
    assert len(new) == 1, result.stdout
    assert str(new[0]) in result.stdout.replace("\n", "")
    return scratch, new[0]


def test_generated_file_avoids_the_autogenerate_traps(generated: tuple[Path, Path]) -> None:
    _, path = generated
    text = path.read_text()
    assert "import dualdb.types" in text
    assert "dualdb.types.UUID()" in text and "dualdb.types.JSONB()" in text
    assert "server_default=dualdb.types.utcnow()" in text
    assert "server_default=dualdb.types.empty_uuid_array()" in text
    assert "DEFAULT now()" not in text and "server_default=sa.text(" not in text
    assert "strftime" not in text and "gen_random_uuid" not in text  # nothing dialect-compiled
    assert "batch_alter_table('shots'" in text or 'batch_alter_table("shots"' in text
    assert "ck_notes_kind" in text
    assert f"revision: str = '{NEXT}'" in text


def test_generated_migration_applies_and_checks_clean(
    generated: tuple[Path, Path], db_url: str
) -> None:
    scratch, _ = generated
    up = run(scratch, "migrate", "--url", db_url)
    assert up.returncode == 0, up.stderr
    assert f"applied {NEXT}" in up.stdout
    check = run(scratch, "check", "--url", db_url)
    assert check.returncode == 0, check.stderr
    down = run(scratch, "downgrade", HEAD, "--url", db_url)
    assert down.returncode == 0, down.stderr
    drift = run(scratch, "check", "--url", db_url)
    assert drift.returncode == 1
    assert "table notes is in the models but not in the database" in drift.stderr


def test_generate_with_no_change_writes_nothing(generated: tuple[Path, Path]) -> None:
    scratch, _ = generated
    db = f"sqlite:///{scratch / 'gen.db'}"
    assert run(scratch, "migrate", "--url", db).returncode == 0
    again = run(scratch, "generate", "-m", "nothing", "--url", db)
    assert again.returncode == 0, again.stderr
    assert "No changes" in again.stdout
    versions = scratch / "src" / "dualdb" / "migrations" / "versions"
    assert len(list(versions.glob("*.py"))) == len(migrations.revisions()) + 1


def test_generate_refuses_a_database_behind_head(tmp_path: Path) -> None:
    scratch = tmp_path
    shutil.copytree(
        PACKAGE, scratch / "src" / "dualdb", ignore=shutil.ignore_patterns("__pycache__")
    )
    result = run(scratch, "generate", "-m", "x", "--url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.returncode == 1
    assert "run `dualdb migrate` first" in result.stderr
    assert "Traceback" not in result.stderr
