"""The hot path's connections: pinned per thread on SQLite, leased per call on Postgres.

:mod:`dualdb.hotpath` runs statements on the driver's connection.  On SQLite each thread keeps
one pooled connection between calls (a checkout costs more than the lookup); these tests hold
the promises that come with that: any number of threads at once, and every connection closed
when the database is.  Open SQLite connections are counted as the process's open handles of
the database file.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import dualdb

THREADS = 40  # well past SQLAlchemy's default pool (5 + 10 overflow)


def _open_handles(db: dualdb.Database) -> int:
    """How many file descriptors of this process point at the SQLite file (0 on Postgres)."""
    if db.backend != "sqlite":
        return 0
    path = Path(str(db.target.url.database)).resolve()
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _points_at(fd, path))


def _points_at(fd: Path, path: Path) -> bool:
    try:
        return Path(os.readlink(fd)) == path
    except OSError:  # closed meanwhile
        return False


def test_many_threads_read_at_once(db: dualdb.Database) -> None:
    user = db.users.create()
    project = db.projects.create("p", user.id)
    start = threading.Barrier(THREADS)
    holding = threading.Barrier(THREADS + 1)
    finish = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            start.wait(timeout=60)
            seen.append(db.projects.get(project.id).name)
            holding.wait(timeout=60)  # every thread is alive, after its read, at once
            finish.wait(timeout=60)
        except BaseException as err:  # reported below, with the thread's own error
            errors.append(err)
            holding.abort()

    threads = [threading.Thread(target=read) for _ in range(THREADS)]
    for t in threads:
        t.start()
    holding.wait(timeout=60)
    during = _open_handles(db)
    finish.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert seen == ["p"] * THREADS
    if db.scope.backend.pin_connections:
        # One pinned connection per thread, all open at once: no pool limit refused any.
        assert during >= THREADS
    db.close()
    assert _open_handles(db) == 0  # close() closes every thread's connection too


def test_close_then_use_again(db: dualdb.Database) -> None:
    user = db.users.create()
    assert db.users.get(user.id) == user
    db.close()
    assert _open_handles(db) == 0
    assert db.users.get(user.id) == user  # it reconnects when used again


def _read_in_child(db: dualdb.Database, key: str, out: Any) -> None:
    inherited = _open_handles(db)
    name = db.users.get(key).email
    out.put((inherited, _open_handles(db), name))


@pytest.mark.sqlite_only
def test_a_forked_child_opens_a_connection_of_its_own(db: dualdb.Database) -> None:
    user = db.users.create(email="fork@example.invalid")
    assert db.users.get(user.id) == user  # this thread now keeps a connection
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(db, str(user.id), out))
    child.start()
    inherited, after, email = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and email == "fork@example.invalid"
    # The child read through a connection it opened, not through its parent's (which it
    # inherited as an open file, and which two processes must never share).
    assert after > inherited
    assert db.users.get(user.id) == user  # the parent's connection still works
