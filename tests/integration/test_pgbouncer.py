"""dualdb through a real PgBouncer in transaction mode (Supabase's transaction pooler).

The ``pgbouncer`` fixture (``tests/integration/conftest.py``) runs one with two server
connections per database, and the tests give dualdb its URL flagged ``?pgbouncer=true``, as
a user of the pooler does.  More clients than that take turns on the same server
connections, so what dualdb must do behind the pooler is checked for real: no prepared
statements (psycopg's would be missing, or already there, on the server connection a later
transaction lands on), nothing session-wide (RLS claims and roles are per transaction), no
LISTEN (the worker polls), and no migrations.  Databases are migrated directly, as users must.

Postgres only: none of this exists on SQLite.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

import dualdb
from benchmarks import pickup
from benchmarks.pickup import until
from dualdb import migrations
from dualdb.config import resolve
from dualdb.errors import MigrationError, NotFound
from tests.conftest import PgServer
from tests.integration.pgbouncer_support import PgBouncer

pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]),
]

#: Client threads: three times the pooler's server connections.
THREADS = 6
#: Calls of each kind per thread: well past psycopg's prepare threshold (5 executions).
ROUNDS = 8


def dbname(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


def server_pids(pg_server: PgServer, name: str) -> set[int]:
    """The server processes connected to database ``name`` (here: PgBouncer's)."""
    assert pg_server.admin_url is not None
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = "
            "'client backend'",
            (name,),
        ).fetchall()
    return {int(pid) for (pid,) in rows}


def revision(direct_url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(direct_url) as conn:
        found = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if found.fetchone() != (True,):
            return []
        return conn.execute("SELECT version_num FROM alembic_version").fetchall()


def public_tables(direct_url: str) -> set[str]:
    with psycopg.connect(direct_url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(name) for (name,) in rows}


# --- migrations ------------------------------------------------------------------------------


def test_migrating_an_empty_database_through_pgbouncer_is_refused(
    db_url: str, pgbouncer: PgBouncer
) -> None:
    target = resolve(pgbouncer.url_for(dbname(db_url)))
    assert target.transaction_pooler and target.url.port == pgbouncer.port
    with pytest.raises(MigrationError, match=r"session pooler .* or the direct connection"):
        migrations.upgrade(target)
    assert public_tables(db_url) == set()  # nothing created


def test_downgrading_through_pgbouncer_is_refused_and_changes_nothing(
    migrated_url: str, pgbouncer: PgBouncer
) -> None:
    before = (revision(migrated_url), public_tables(migrated_url))
    assert before[0] == [(migrations.head_revision(),)]
    target = resolve(pgbouncer.url_for(dbname(migrated_url)))
    refused = r"session pooler .* or the direct connection"
    with pytest.raises(MigrationError, match=refused):
        migrations.downgrade(target, "base")
    with pytest.raises(MigrationError, match=refused):
        migrations.upgrade(target)
    assert (revision(migrated_url), public_tables(migrated_url)) == before


# --- the DAL from many clients ---------------------------------------------------------------


def test_the_dal_and_the_queue_from_many_threads_through_pgbouncer(
    migrated_url: str, pgbouncer: PgBouncer, pg_server: PgServer
) -> None:
    """Projects' create/get/update/list/delete and the queue's enqueue → claim → complete,
    from six threads at once: their statements land on two shared server connections.  With
    psycopg's prepared statements on, this fails ("prepared statement "_pg3_0" does not
    exist" / "already exists")."""
    name = dbname(migrated_url)
    with dualdb.connect(pgbouncer.url_for(name)) as db:
        assert db.target.transaction_pooler
        owner = db.users.create(email="bouncer@example.invalid")
        start = threading.Barrier(THREADS)

        def client(n: int) -> list[uuid.UUID]:
            start.wait(60)  # every thread at once: calls overlap on the shared servers
            kept: list[uuid.UUID] = []
            for i in range(ROUNDS):
                project = db.projects.create(f"p{n}-{i}", owner.id)
                assert db.projects.get(project.id) == project
                renamed = db.projects.update(project.id, name=f"renamed {n}-{i}")
                assert renamed.name == f"renamed {n}-{i}"
                with db.session() as s:  # one transaction of several statements
                    s.shots.create(project.id, "opening")
                    assert s.projects.get(project.id) == renamed
                # The thread's own task type, so its claim takes its own task.
                task = db.tasks.enqueue(project.id, f"type-{n}", {"round": i})
                claimed = db.tasks.claim(f"worker-{n}", [f"type-{n}"])
                assert claimed is not None and claimed.id == task.id
                assert claimed.status == "In Progress"
                done = db.tasks.complete(task.id, f"worker-{n}", f"files/{n}-{i}.png")
                assert (done.status, done.output_location) == ("Complete", f"files/{n}-{i}.png")
                assert renamed in db.projects.list(user_id=owner.id, limit=100).items
                if i % 2:
                    db.projects.delete(project.id)
                    assert db.projects.find(project.id) is None
                else:
                    kept.append(project.id)
            return kept

        with ThreadPoolExecutor(THREADS) as pool:
            kept = [key for found in pool.map(client, range(THREADS)) for key in found]

        assert {p.id for p in db.projects.for_user(owner.id)} == set(kept)
        assert db.projects.count() == len(kept) == THREADS * ROUNDS // 2
        assert db.tasks.counts()["Complete"] == len(kept)  # the deleted ones' went with them
        # More client connections than server connections: they were shared.
        pool_ = db.engine.pool
        clients = pool_.checkedin() + pool_.checkedout()  # type: ignore[attr-defined]
        servers = server_pids(pg_server, name)
        assert clients > pgbouncer.pool_size >= len(servers) >= 1, (clients, servers)


# --- RLS claims and roles --------------------------------------------------------------------


def test_scoped_calls_do_not_leak_to_other_clients_of_the_same_server_connection(
    migrated_url: str, pgbouncer: PgBouncer
) -> None:
    """Users A and B act through dualdb (``request.jwt.claims``, ``SET LOCAL ROLE
    authenticated``) while plain clients read the same settings, all on two shared server
    connections: each scoped transaction sees its own user only, and a plain client never
    sees a user's claims or role."""
    name = dbname(migrated_url)
    with dualdb.connect(pgbouncer.url_for(name)) as db:
        a, b = db.users.create(), db.users.create()
        pa, pb = db.projects.create("a's", a.id), db.projects.create("b's", b.id)
        scoped_pids: set[int] = set()
        probe_pids: set[int] = set()
        start = threading.Barrier(THREADS)

        def as_user(user_id: uuid.UUID, own: uuid.UUID, other: uuid.UUID) -> None:
            me = db.as_user(user_id)
            start.wait(60)
            for i in range(ROUNDS):
                assert [p.id for p in me.projects.list().items] == [own]
                with pytest.raises(NotFound):
                    me.projects.get(other)
                assert me.projects.update(own, name=f"{user_id} {i}").name == f"{user_id} {i}"
                with me.session() as s:  # raw SQL in the user's transaction: RLS applies
                    row = s.connection.exec_driver_sql(
                        "SELECT current_user, current_setting('request.jwt.claim.sub', true), "
                        "(SELECT array_agg(id) FROM projects), pg_backend_pid()"
                    ).one()
                assert tuple(row[:3]) == ("authenticated", str(user_id), [own])
                scoped_pids.add(int(row[3]))

        def plain() -> None:
            start.wait(60)
            with psycopg.connect(  # no prepared statements behind the pooler (see above)
                pgbouncer.driver_url(name), autocommit=True, prepare_threshold=None
            ) as conn:
                for _ in range(ROUNDS * 3):
                    row = conn.execute(
                        "SELECT current_user, current_setting('request.jwt.claims', true), "
                        "current_setting('request.jwt.claim.sub', true), pg_backend_pid()"
                    ).fetchone()
                    assert row is not None
                    # Never set here ('' once a transaction on this server set it locally).
                    assert (row[0], row[1] or "", row[2] or "") == (pgbouncer.user, "", ""), row
                    probe_pids.add(int(row[3]))
            assert db.projects.count() == 2  # unscoped dualdb calls see every row

        with ThreadPoolExecutor(THREADS) as pool:
            futures = [pool.submit(as_user, a.id, pa.id, pb.id) for _ in range(2)]
            futures += [pool.submit(as_user, b.id, pb.id, pa.id) for _ in range(2)]
            futures += [pool.submit(plain) for _ in range(THREADS - 4)]
            for future in futures:
                future.result()
        # The plain clients ran on server connections the users' transactions had used.
        assert len(scoped_pids | probe_pids) <= pgbouncer.pool_size
        assert scoped_pids & probe_pids, (scoped_pids, probe_pids)


# --- the stock worker ------------------------------------------------------------------------


def test_the_stock_worker_polls_through_pgbouncer_and_runs_a_new_task(
    migrated_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """``dualdb worker --url <pooler>``: LISTEN cannot work behind the transaction pooler,
    so it polls (every 0.2 s here), and a task enqueued once it waits is run."""
    url = pgbouncer.url_for(dbname(migrated_url))
    log = tmp_path / "worker.log"
    args = ["--poll-interval", "0.2", "--worker-id", "bouncer"]
    with dualdb.connect(url) as db:
        project = db.projects.create("queue", db.users.create().id)
        with pickup.worker_process(url, log, args, waiting=["waiting for work:"]) as proc:
            started = log.read_text()
            assert "waiting for work: polling" in started, started
            assert f"127.0.0.1:{pgbouncer.port}/" in started
            task = db.tasks.enqueue(project.id, "single_image", {})
            # Every 50 ms: this client shares PgBouncer's two server connections with the worker.
            until(lambda: db.tasks.get(task.id).status == "Complete", 60, "the task", every=0.05)
            assert proc.poll() is None, log.read_text()
        done = db.tasks.get(task.id)
        assert (done.worker_id, done.attempts) == ("bouncer", 1)
        assert done.output_location == f"files/demo/{task.id}.png"


# --- time zone -------------------------------------------------------------------------------


def test_records_are_utc_through_pgbouncer_in_the_servers_zone(
    migrated_url: str, pgbouncer: PgBouncer
) -> None:
    """The pooler half of ``test_sessions_are_in_utc_except_behind_the_transaction_pooler``
    through a real pooler: dualdb sets no session zone, the server's stays, and the records
    are the same UTC instants as read directly."""
    server_zone = "America/Los_Angeles"  # not UTC, so the conversion is visible
    name = dbname(migrated_url)
    with psycopg.connect(migrated_url, autocommit=True) as admin:
        # Before any connection through the pooler: its server connections start in this zone.
        admin.execute(f"ALTER DATABASE {name} SET TimeZone = '{server_zone}'")
    with dualdb.connect(pgbouncer.url_for(name)) as db:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar_one() == server_zone
        project = db.projects.create("zones", db.users.create().id)
        again = db.projects.get(project.id)
        assert again == project and again.created_at.tzinfo is UTC
    with dualdb.connect(migrated_url) as direct:
        assert direct.projects.get(project.id) == project
