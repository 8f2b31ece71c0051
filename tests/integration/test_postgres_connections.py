"""Supabase-ready Postgres connections: transaction pooler, dropped connections, sslmode.

What reaches psycopg is read with SQLAlchemy's ``do_connect`` event (the exact keyword
arguments of ``psycopg.connect``), and behaviour is checked on a real server.  Postgres only:
none of this exists on SQLite.
"""

from __future__ import annotations

import multiprocessing as mp
import select
import threading
from datetime import UTC
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc

import dualdb
from dualdb import migrations
from dualdb import scope as scope_module
from dualdb.config import Settings, Target, resolve
from dualdb.engine import create_engine, ping
from dualdb.errors import DatabaseUnavailable, MigrationError
from dualdb.hotpath import Statement
from dualdb.scope import SPARES, Scope, release_pinned
from tests.conftest import PgServer
from tests.integration.driver_trace import driver_statements

POSTGRES_ONLY = [
    pytest.mark.postgres_only,
    pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]),
]


def postgres_only(fn: Any) -> Any:
    for mark in reversed(POSTGRES_ONLY):
        fn = mark(fn)
    return fn


def connect_kwargs(target: Target) -> dict[str, Any]:
    """The keyword arguments the engine for ``target`` hands to ``psycopg.connect``."""
    engine = create_engine(target)
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def record(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    try:
        with engine.connect():
            pass
    except exc.DBAPIError:
        pass  # nothing listens there; the arguments were recorded before the attempt
    finally:
        engine.dispose()
    assert seen, "the engine never tried to connect"
    return seen


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def prepared_statements_after_repeats(target: Target) -> tuple[object, int]:
    """Run one statement ten times; (psycopg's prepare_threshold, server-side prepared count)."""
    engine = create_engine(target)
    try:
        with engine.connect() as conn:
            for _ in range(10):
                conn.execute(sa.text("SELECT 1 WHERE 1 = :x"), {"x": 1})
            threshold = conn.connection.dbapi_connection.prepare_threshold  # type: ignore[union-attr]
            count = conn.execute(sa.text("SELECT count(*) FROM pg_prepared_statements")).scalar()
        return threshold, int(count or 0)
    finally:
        engine.dispose()


# --- transaction pooler ----------------------------------------------------------------------


def test_port_6543_means_no_prepared_statements() -> None:
    target = resolve("postgresql://postgres:pw@127.0.0.1:6543/postgres")
    assert target.transaction_pooler
    assert connect_kwargs(target)["prepare_threshold"] is None


def test_session_pooler_and_direct_urls_keep_prepared_statements() -> None:
    target = resolve("postgresql://postgres:pw@127.0.0.1:1/postgres")
    assert not target.transaction_pooler
    assert "prepare_threshold" not in connect_kwargs(target)  # psycopg's default applies


@postgres_only
def test_prepared_statements_are_off_behind_the_pooler_on_a_real_server(db_url: str) -> None:
    direct = resolve(db_url)
    threshold, prepared = prepared_statements_after_repeats(direct)
    assert (threshold, prepared > 0) == (5, True)  # the control: psycopg prepares by default

    flagged = resolve(with_query(db_url, "pgbouncer=true"))
    assert flagged.transaction_pooler and "pgbouncer" not in flagged.url.query
    assert prepared_statements_after_repeats(flagged) == (None, 0)

    forced = resolve(db_url, settings=Settings.model_validate({"DUALDB_TRANSACTION_POOLER": "1"}))
    assert forced.transaction_pooler
    assert prepared_statements_after_repeats(forced) == (None, 0)


@postgres_only
def test_sessions_are_in_utc_except_behind_the_transaction_pooler(migrated_url: str) -> None:
    """Direct and session-pooler connections are set to UTC (instants then arrive as
    ``datetime.UTC``, kept as they are); behind the transaction pooler a session setting
    would leak into other clients' server connections, so the server's zone stays, and the
    records are converted to the same UTC instants.  (The pooler half through a real
    PgBouncer: ``test_pgbouncer.py``.)"""
    server_zone = "America/Los_Angeles"  # not UTC, so the conversion is visible
    with psycopg.connect(migrated_url.replace("+psycopg", ""), autocommit=True) as admin:
        dbname = admin.info.dbname
        admin.execute(f"ALTER DATABASE {dbname} SET TimeZone = '{server_zone}'")
    made: list[tuple[str, Any]] = []
    for url in (migrated_url, with_query(migrated_url, "pgbouncer=true")):
        with dualdb.connect(url) as db:
            with db.engine.connect() as conn:
                zone = conn.exec_driver_sql("SHOW TimeZone").scalar_one()
            user = db.users.create()
            project = db.projects.create("zones", user.id)
            again = db.projects.get(project.id)
            assert again == project and again.created_at.tzinfo is UTC
            made.append((zone, project.created_at))
    assert [zone for zone, _ in made] == ["UTC", server_zone]


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("postgresql://u:p@127.0.0.1:6543/postgres", {}),
        ("postgresql://u:p@127.0.0.1:5432/postgres?pgbouncer=true", {}),
        ("postgresql://u:p@127.0.0.1:5432/postgres", {"DUALDB_TRANSACTION_POOLER": "true"}),
    ],
)
def test_migration_commands_refuse_the_transaction_pooler(url: str, env: dict[str, str]) -> None:
    target = resolve(url, settings=Settings.model_validate(env))
    for run in (
        lambda: migrations.upgrade(target),
        lambda: migrations.downgrade(target, "base"),
        lambda: migrations.generate(target, "x"),
    ):
        with pytest.raises(MigrationError, match=r"session pooler .* or the direct connection"):
            run()


def test_an_explicit_setting_can_deny_pooler_mode_on_port_6543() -> None:
    settings = Settings.model_validate({"DUALDB_TRANSACTION_POOLER": "false"})
    assert not resolve("postgresql://u@127.0.0.1:6543/db", settings=settings).transaction_pooler


# --- dropped connections ---------------------------------------------------------------------


def _kill_pooled_connection(engine: sa.Engine, pg_server: PgServer) -> list[int]:
    """End, from outside, every connection ``engine`` has open, as a restart would: those in
    its pool and those dualdb's one-statement calls keep between them (``scope._Spares``),
    whichever the next call takes.  One is opened first if there is none."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert pg_server.admin_url is not None
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        pids = [
            int(pid)
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (engine.url.database, "dualdb"),
            )
        ]
    for pid in pids:
        _terminate(pg_server, pid)
    return pids


def _kill_pooled_connection_of(conn: sa.Connection, pg_server: PgServer) -> None:
    """End ``conn``'s server process from outside (as a restart or an admin would)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    _terminate(pg_server, int(dbapi.info.backend_pid))  # type: ignore[attr-defined]


def _terminate(pg_server: PgServer, pid: int) -> None:
    assert pg_server.admin_url is not None
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(100):  # termination is asynchronous
            gone = admin.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,)
            ).fetchone()
            if gone and gone[0]:
                break
            admin.execute("SELECT pg_sleep(0.02)")


@postgres_only
def test_an_explicit_isolation_level_gets_no_begin_of_ours(migrated_url: str) -> None:
    """Only the engine's default gets dualdb's explicit BEGIN: a caller's AUTOCOMMIT stays
    outside any transaction (VACUUM, CREATE INDEX CONCURRENTLY), and REPEATABLE READ is begun
    by psycopg at that level."""
    engine = create_engine(resolve(migrated_url))
    try:
        with engine.connect() as conn:
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            auto.exec_driver_sql("VACUUM tasks")  # refused inside a transaction block
        with engine.connect() as conn:
            rr = conn.execution_options(isolation_level="REPEATABLE READ")
            with rr.begin():
                level = rr.exec_driver_sql("SHOW transaction_isolation").scalar()
            assert level == "repeatable read"
    finally:
        engine.dispose()


@postgres_only
def test_a_connection_killed_server_side_is_replaced(db_url: str, pg_server: PgServer) -> None:
    engine = create_engine(resolve(db_url))
    try:
        dead = _kill_pooled_connection(engine, pg_server)
        ping(engine)  # the dead connection fails at BEGIN: replaced, and the read done again
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() not in dead
    finally:
        engine.dispose()


@postgres_only
def test_calls_after_the_server_killed_the_pooled_connection_succeed(
    migrated_url: str, pg_server: PgServer
) -> None:
    """Reads (one statement, no BEGIN), writes and sessions: each replaces the dead connection."""
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="kill@example.invalid")
        project = db.projects.create("before", user.id)

        _kill_pooled_connection(db.engine, pg_server)
        assert db.projects.get(project.id).name == "before"  # a one-statement read

        _kill_pooled_connection(db.engine, pg_server)
        # A one-statement write: the dead connection is seen before the write is sent.
        assert db.projects.update(project.id, name="after").name == "after"

        _kill_pooled_connection(db.engine, pg_server)
        task = db.tasks.create(project.id, "render", {})
        _kill_pooled_connection(db.engine, pg_server)
        assert db.tasks.claim("w1") == db.tasks.get(task.id)  # a queue verb: the same

        _kill_pooled_connection(db.engine, pg_server)
        with db.session() as s:
            shot = s.shots.create(project.id, "opening")

        _kill_pooled_connection(db.engine, pg_server)
        with db.scope.read():
            assert db.shots.get(shot.id).name == "opening"
        assert db.projects.get(project.id).name == "after"


@postgres_only
def test_a_write_after_a_restart_ended_every_pooled_connection_succeeds(
    migrated_url: str, pg_server: PgServer
) -> None:
    """A restart ends every pooled connection, not one: the write that finds its connection
    dead drops the others with it, and its retry does not meet another dead one."""
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="restart@example.invalid")
        project = db.projects.create("before", user.id)
        with db.engine.connect() as a, db.engine.connect() as b:
            for c in (a, b):
                c.exec_driver_sql("SELECT 1")
        assert db.engine.pool.checkedin() == 2  # type: ignore[attr-defined]
        pids = _kill_pooled_connection(db.engine, pg_server)  # and the spare the calls kept
        assert len(pids) == 3, pids
        assert db.projects.update(project.id, name="after").name == "after"
        assert db.tasks.claim("w1") is None  # a worker verb on the pool that remains
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() not in pids


def test_a_server_out_of_reach_is_database_unavailable_on_the_hot_path() -> None:
    """Nothing listens there: a read and a write on the driver's connection raise the same
    typed error as SQLAlchemy's own path, not the driver's."""
    engine = create_engine(resolve("postgresql://postgres@127.0.0.1:1/postgres"))
    try:
        scope = Scope(engine)
        one = Statement(sa.select(sa.literal_column("1")), engine.dialect)
        with pytest.raises(DatabaseUnavailable):
            scope.rows(one, {})
        with pytest.raises(DatabaseUnavailable):
            scope.write_rows(one, {})
    finally:
        engine.dispose()


@postgres_only
def test_a_write_whose_connection_dies_mid_transaction_is_not_retried(
    migrated_url: str, pg_server: PgServer
) -> None:
    """The INSERT ran, then the server ended the connection: DatabaseUnavailable, and the
    row is not there (the server rolled the transaction back) — never written twice.

    The connection dies inside the INSERT itself: a trigger (of this test's only) counts the
    attempt in a sequence, which no rollback undoes, and terminates its own session.
    """
    with psycopg.connect(migrated_url.replace("+psycopg", ""), autocommit=True) as setup:
        setup.execute("CREATE SEQUENCE insert_attempts")
        setup.execute(
            "CREATE FUNCTION die_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN PERFORM nextval('insert_attempts'); "
            "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
        )
        setup.execute(
            "CREATE TRIGGER die_after_insert AFTER INSERT ON projects "
            "FOR EACH ROW WHEN (NEW.name = 'half') EXECUTE FUNCTION die_after_insert()"
        )
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="mid@example.invalid")
        with pytest.raises(DatabaseUnavailable):
            db.projects.create("half", user.id)
        with psycopg.connect(migrated_url.replace("+psycopg", ""), autocommit=True) as check:
            attempts = check.execute("SELECT last_value FROM insert_attempts").fetchone()
        assert attempts == (1,)  # tried once, not again on a fresh connection
        assert db.projects.count() == 0
        assert [p.name for p in db.projects.list().items] == []

        # The same inside a session: the session's earlier write goes with it.
        with pytest.raises(DatabaseUnavailable), db.session() as s:
            s.users.create(email="first@example.invalid")
            _kill_pooled_connection_of(s.connection, pg_server)
            s.projects.create("second", user.id)
        assert db.users.count() == 1
        assert db.projects.count() == 0
        assert db.projects.create("later", user.id).name == "later"


@postgres_only
def test_a_connection_with_a_notification_waiting_is_kept(migrated_url: str) -> None:
    """Something to read on an idle pooled connection is not always a dead server: here a
    notification.  The write asks the server once (``SELECT 1``), then runs on the same
    connection."""
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="notify@example.invalid")
        project = db.projects.create("before", user.id)
        # Every connection in the pool, where the write will take the one that listens.
        release_pinned(db.engine)
        with driver_statements(db) as seen:
            with db.engine.connect() as conn:
                conn.exec_driver_sql("LISTEN dualdb_test_channel")
                conn.commit()  # LISTEN takes effect at commit
                dbapi = conn.connection.dbapi_connection
                assert dbapi is not None
                pid = dbapi.info.backend_pid  # type: ignore[attr-defined]
                socket = dbapi.pgconn.socket  # type: ignore[attr-defined]
            assert db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
            with psycopg.connect(migrated_url.replace("+psycopg", ""), autocommit=True) as other:
                other.execute("NOTIFY dualdb_test_channel, 'hello'")
            assert select.select([socket], [], [], 10)[0]  # the notification has arrived
            db.projects.update(project.id, name="after")
            # The write's connection, kept for the next call: the one that listens.
            ((spare, _),) = db.scope._leases._free  # type: ignore[attr-defined]
            assert spare.dbapi_connection.info.backend_pid == pid
        # LISTEN's transaction; the check, then the write.
        assert [s.split(" ", 1)[0] for s in seen] == [
            "BEGIN",
            "LISTEN",
            "COMMIT",
            "SELECT",
            "UPDATE",
        ], seen
        assert seen[3] == "SELECT 1", seen
        assert db.projects.get(project.id).name == "after"


@postgres_only
def test_no_ping_per_checkout(db_url: str, pg_server: PgServer) -> None:
    """Control for the tests above: the killed connection really was dead, and checking a
    connection out does not ping it (a bare connection outside dualdb's Scope sees it dead)."""
    engine = create_engine(resolve(db_url))
    try:
        _kill_pooled_connection(engine, pg_server)
        with pytest.raises(exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def _server_connections(url: str, settled: list[int] | None = None) -> list[int]:
    """The backend pids of dualdb's connections to ``url``'s database, seen by the server;
    with ``settled``, once they are those (a closed connection's backend takes a moment to
    exit: the server is asked again, up to 10 s)."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
        for _ in range(500):
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'dualdb' AND pid <> pg_backend_pid() ORDER BY pid"
            ).fetchall()
            pids = [int(pid) for (pid,) in rows]
            if settled is None or pids == sorted(settled):
                break
            admin.execute("SELECT pg_sleep(0.02)")
    return pids


@postgres_only
def test_one_statement_calls_keep_a_few_connections_between_them(migrated_url: str) -> None:
    """Calls that are one statement give their connection to the next one (scope._Spares):
    one thread works on one connection; many threads use the pool, and keep at most
    ``SPARES`` once they are done; ``close()`` gives every one back."""
    with dualdb.connect(migrated_url) as db:
        pool: Any = db.engine.pool
        user = db.users.create(email="spares@example.invalid")
        project = db.projects.create("spares", user.id)
        for i in range(20):
            assert db.projects.get(project.id).id == project.id
            db.projects.update(project.id, name=f"n{i}")
        assert pool.checkedout() == 1 and pool.checkedin() == 0
        assert len(_server_connections(migrated_url)) == 1

        start = threading.Barrier(6)
        failures: list[BaseException] = []

        def work() -> None:
            try:
                start.wait(timeout=30)
                for i in range(30):
                    db.projects.get(project.id)
                    db.projects.update(project.id, name=f"t{i}")
            except BaseException as err:  # reported below
                failures.append(err)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures
        assert 1 <= pool.checkedout() <= SPARES
    assert pool.checkedout() == 0  # closed: none kept
    assert _server_connections(migrated_url, settled=[]) == []


@postgres_only
def test_a_spare_goes_back_to_the_pool_after_a_while(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection does not go round the spares for ever: once it was checked out
    ``SPARE_S`` ago it goes back to the pool, whose checkout applies ``pool_recycle`` and
    the pool's invalidations — when it is given back, and when it has waited that long."""
    with dualdb.connect(migrated_url) as db:
        pool: Any = db.engine.pool
        leases: Any = db.scope._leases
        user = db.users.create(email="spare-age@example.invalid")
        assert pool.checkedout() == 1
        ((parked, _),) = leases._free
        monkeypatch.setattr(scope_module, "SPARE_S", 0.0)
        got = leases.get()  # the parked one is too old: back to the pool, a checkout instead
        assert got is not parked and pool.checkedout() == 1
        leases.put(got)  # too old as well: back to the pool
        assert leases._free == [] and pool.checkedout() == 0 and pool.checkedin() == 1
        assert db.users.get(user.id) == user


@postgres_only
def test_spares_go_back_when_the_database_closes_or_the_engine_is_disposed(
    migrated_url: str,
) -> None:
    """Also a connection in use at that moment: it is not kept when it is given back."""
    with dualdb.connect(migrated_url) as db:
        leases: Any = db.scope._leases
        user = db.users.create(email="spare-close@example.invalid")
        assert len(leases._free) == 1
        db.engine.dispose()
        assert leases._free == []
        assert db.users.get(user.id) == user
        in_use = leases.get()
        db.close()
        leases.put(in_use)
        assert leases._free == []
    assert _server_connections(migrated_url, settled=[]) == []


@postgres_only
def test_a_connection_left_in_a_transaction_is_not_kept_as_a_spare(migrated_url: str) -> None:
    """A call interrupted before its end may leave a transaction open: its connection goes
    back through the pool's reset (a rollback), never straight to the next call."""
    with dualdb.connect(migrated_url) as db:
        pool: Any = db.engine.pool
        user = db.users.create(email="at-rest@example.invalid")
        leases: Any = db.scope._leases
        connection = leases.get()
        connection.dbapi_connection.execute("BEGIN")
        connection.dbapi_connection.execute("UPDATE users SET email = 'x@example.invalid'")
        leases.put(connection)
        assert list(leases._free) == [] and pool.checkedout() == 0
        assert db.users.get(user.id).email == "at-rest@example.invalid"  # rolled back


def _spare_in_child(db: dualdb.Database, key: str, out: Any) -> None:
    name = db.users.get(key).email  # the hot path, in the child
    leases: Any = db.scope._leases
    out.put((name, [c.dbapi_connection.info.backend_pid for c, _ in leases._free]))


@postgres_only
def test_a_forked_child_never_uses_its_parents_spare(migrated_url: str) -> None:
    """A connection two processes share mixes their messages: a child starts with none."""
    with dualdb.connect(migrated_url) as db:
        user = db.users.create(email="fork@example.invalid")
        assert db.users.get(user.id) == user
        (parent_pid,) = _server_connections(migrated_url)
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_spare_in_child, args=(db, str(user.id), out))
        child.start()
        email, child_spares = out.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0 and email == "fork@example.invalid"
        assert len(child_spares) == 1 and parent_pid not in child_spares
        assert db.users.get(user.id) == user  # the parent's spare still works
        assert _server_connections(migrated_url, settled=[parent_pid]) == [parent_pid]


# --- sslmode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["require", "verify-full", "disable"])
def test_sslmode_passes_through_from_the_url(mode: str) -> None:
    url = f"postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres?sslmode={mode}"
    target = resolve(url)
    assert target.url.query["sslmode"] == mode
    assert target.redacted.endswith(f"?sslmode={mode}") and "pw" not in target.redacted
    local = resolve(f"postgresql://postgres:pw@127.0.0.1:1/postgres?sslmode={mode}")
    assert connect_kwargs(local)["sslmode"] == mode


@postgres_only
def test_sslmode_reaches_the_server(db_url: str, pg_server: PgServer) -> None:
    assert pg_server.admin_url is not None
    with psycopg.connect(pg_server.admin_url) as admin:
        ssl_on = admin.execute("SHOW ssl").fetchone() == ("on",)
    engine = create_engine(resolve(with_query(db_url, "sslmode=require")))
    try:
        if ssl_on:
            with engine.connect() as conn:
                assert conn.connection.dbapi_connection.pgconn.ssl_in_use  # type: ignore[union-attr]
        else:
            # The server has no SSL: libpq refuses rather than silently going plain text.
            with pytest.raises(DatabaseUnavailable, match="SSL"):
                ping(engine)
    finally:
        engine.dispose()
    plain = create_engine(resolve(with_query(db_url, "sslmode=disable")))
    try:
        with plain.connect() as conn:
            assert not conn.connection.dbapi_connection.pgconn.ssl_in_use  # type: ignore[union-attr]
    finally:
        plain.dispose()
