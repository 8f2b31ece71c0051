"""How dualdb treats the SQLite file it shares with other programs.

Meaningful on SQLite only: Postgres has no database-wide write lock and no WAL file to bound.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import dualdb
from dualdb import migrations
from dualdb.backends.sqlite import SQLITE_JOURNAL_SIZE_LIMIT
from dualdb.config import resolve

pytestmark = pytest.mark.sqlite_only

# Another program holds the write lock until told to let go (a line on stdin).
HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO users (id, email, created_at) VALUES "
             "('11111111-1111-1111-1111-111111111111', 'held@example.com', "
             "'2026-01-01T00:00:00.000000Z')")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Another process holds a write transaction on ``path`` for the duration."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
        # Still holding it: everything above ran while the lock was taken.
        assert proc.poll() is None
    finally:
        proc.communicate("\n", timeout=30)


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualdb", *args], capture_output=True, text=True, timeout=120
    )


def test_reading_commands_never_wait_for_a_writer(migrated_url: str) -> None:
    """In WAL mode readers don't need the write lock: connect, status, check and sql read at
    once while another process writes (before, they waited 30 s and failed)."""
    with dualdb.connect(migrated_url) as db:
        db.users.create(email="before@example.com")
    with write_lock_held(_path(migrated_url)):
        with dualdb.connect(migrated_url) as db:
            assert db.users.count() == 1
            assert db.row_counts()["users"] == 1
            assert [u.email for u in db.users.list().items] == ["before@example.com"]
        target = resolve(migrated_url)
        assert migrations.status(target).up_to_date
        assert migrations.check(target) == []
        for args in (["status"], ["check"], ["sql"]):
            done = _cli(*args, "--url", migrated_url)
            assert done.returncode == 0, (args, done.stderr)
        assert "CREATE TABLE" not in _cli("sql", "--url", migrated_url).stdout  # at head


def test_read_only_commands_do_not_create_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    st = _cli("status", "--url", str(missing))
    assert st.returncode == 0, st.stderr
    assert "not migrated" in st.stdout
    ck = _cli("check", "--url", str(missing))
    assert ck.returncode == 1
    assert "does not exist" in ck.stderr
    sql = _cli("sql", "--url", str(missing))
    assert sql.returncode == 0 and "CREATE TABLE" in sql.stdout
    with pytest.raises(dualdb.SchemaOutOfDate, match="does not exist"):
        dualdb.connect(str(missing))
    assert not missing.exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_the_wal_is_bounded_behind_a_long_reader(migrated_url: str) -> None:
    """A reader that holds an old snapshot lets the WAL grow; once it lets go, the WAL goes
    back to ``journal_size_limit`` at the next write, and to nothing at a checkpoint."""
    path = _path(migrated_url)
    wal = Path(path + "-wal")
    blob = "x" * 900_000  # under the 1 MB params limit
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="w@example.com")
        project = db.projects.create("WAL", user.id)
        # Another program (Datasette, the sqlite3 shell) in the middle of a long read.
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM users").fetchall()  # pins its snapshot
            for _ in range(5):
                db.tasks.create_many(
                    [{"project_id": project.id, "task_type": "x", "params": {"b": blob}}] * 10
                )
            assert wal.stat().st_size > SQLITE_JOURNAL_SIZE_LIMIT
            assert db.checkpoint() is False  # never waits for the reader
        finally:
            reader.close()
        db.tasks.enqueue(project.id, "x", {})
        db.tasks.enqueue(project.id, "x", {})
        assert wal.stat().st_size <= SQLITE_JOURNAL_SIZE_LIMIT
        assert db.checkpoint() is True
        assert wal.stat().st_size == 0
        assert db.tasks.count() == 52
