"""The hot path's connections: pinned per thread on SQLite, leased per call on Postgres.

:mod:`dualdb.hotpath` runs statements on the driver's connection.  On SQLite each thread keeps
one pooled connection between calls (a checkout costs more than the lookup); these tests hold
the promises that come with that: any number of threads at once, and every connection closed
when the database is.  Open SQLite connections are counted as the process's open handles of
the database file.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

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
        # The threads ended: their connections went back, and the pool keeps five idle ones
        # at most.  (Counted by the pool: SQLite keeps a closed connection's file handle
        # open while other connections of the process hold locks on the file, for reuse.)
        assert db.engine.pool.checkedin() <= 5  # type: ignore[attr-defined]
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
    name = db.users.get(key).email  # the hot path: this thread's first connection here
    gc.collect()  # whatever the child dropped of its parent's is collected now
    with db.session() as s:  # a second connection, from the pool: never the parent's
        assert s.users.get(key).email == name
        opened = _open_handles(db) - inherited
    out.put((opened, name))


@pytest.mark.sqlite_only
def test_a_forked_child_opens_a_connection_of_its_own(db: dualdb.Database) -> None:
    user = db.users.create(email="fork@example.invalid")
    assert db.users.get(user.id) == user  # this thread now keeps a connection
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(db, str(user.id), out))
    child.start()
    opened, email = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and email == "fork@example.invalid"
    # The child read through connections it opened (two: the pinned one and the session's),
    # never through its parent's, which it inherited as open files and which two processes
    # must never share.
    assert opened >= 2
    assert db.users.get(user.id) == user  # the parent's connection still works


@pytest.mark.sqlite_only
def test_a_database_dropped_unclosed_is_collected(db: dualdb.Database) -> None:
    """Nothing dualdb keeps per engine (the threads' pinned connections) keeps it alive.

    SQLite only: only its connections are pinned (and psycopg warns, rightly, about a
    Postgres connection collected unclosed)."""
    db.users.create()
    url = db.target.url.render_as_string(hide_password=False)
    gone: list[weakref.ref[sa.Engine]] = []
    for _ in range(3):
        other = dualdb.connect(url)
        # A hot-path read (on SQLite this thread then keeps a connection of the engine).
        # Not inside an assert: pytest would keep the repository alive in its locals.
        count = other.users.count()
        gone.append(weakref.ref(other.engine))
        del other
    gc.collect()
    assert count == 1
    assert [ref() for ref in gone] == [None, None, None]
