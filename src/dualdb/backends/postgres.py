"""Postgres (Supabase or any other) through psycopg 3: row locks, roles and Row Level Security.

Connections are in psycopg's autocommit mode and every transaction starts with an explicit
``BEGIN`` (the round trip psycopg would make anyway), so a connection the server dropped
shows at ``BEGIN``, before anything was written, where :class:`~dualdb.scope.Scope` replaces
it and starts again — no ping per checkout.  A call that is one statement sends no ``BEGIN``:
before a write, :meth:`PostgresBackend.may_be_dead` looks at the idle connection's socket
(the server's farewell is waiting there) and the scope asks the server only then.  Old
connections are recycled (:data:`PG_POOL_RECYCLE_S`); behind Supabase's transaction pooler
there are no prepared statements.  Scoped sessions switch role per transaction (:func:`act_as_user`,
:func:`act_as_service`, as PostgREST does), and the
workers' queue verbs are the database's own SQL functions (migration 0008).
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Engine

from dualdb.backends.base import (
    AUTOCOMMIT,
    READ_ONLY,
    Backend,
    TransactionHook,
    WorkWaiter,
    insert_errors,
)
from dualdb.claims import AUTHENTICATED_ROLE, SERVICE_ROLE, Claims
from dualdb.hotpath import row_binder
from dualdb.schema import POSTGRES_FUNCTIONS, POSTGRES_TRIGGERS

#: Batches of at least this many rows are written with ``COPY`` (:meth:`PostgresBackend.copy_rows`).
COPY_FROM_ROWS = 1000

if TYPE_CHECKING:
    from dualdb.target import Target

#: Connect timeout (seconds), so an unreachable host fails fast.
PG_CONNECT_TIMEOUT_S = 5
#: The channel migration 0009's triggers notify when a task becomes ready.
TASKS_CHANNEL = "dualdb_tasks"
#: The longest a listening worker blocks in the driver at a time: how soon it sees ``stop``.
_LISTEN_SLICE_S = 0.25
#: Connections older than this (seconds) are closed and replaced at checkout, before a proxy's
#: or server's own limit (or a failover) closes them under a call.
PG_POOL_RECYCLE_S = 1800
#: Transaction-pooler port of Supabase (PgBouncer/Supavisor in transaction mode).
TRANSACTION_POOLER_PORT = 6543
#: A user id no real token carries: what the auth.uid() probe sets and expects back.
_PROBE_SUB = "00000000-0000-4000-8000-00000000a0d1"


_SET_CLAIMS = (
    "SELECT set_config('request.jwt.claims', %(claims)s, true), "
    "set_config('request.jwt.claim.sub', %(sub)s, true), "
    "set_config('request.jwt.claim.role', %(role)s, true)"
)


#: The role's own timeouts (``ALTER ROLE authenticated SET statement_timeout = …``), applied
#: for the transaction as PostgREST applies them after its ``SET ROLE``; a database-specific
#: setting wins over a cluster-wide one.
_ROLE_TIMEOUTS = (
    "SELECT set_config(split_part(c, '=', 1), substr(c, strpos(c, '=') + 1), true) "
    "FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c "
    "WHERE s.setrole = to_regrole(%(role)s) "
    "AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = current_database())) "
    "AND split_part(c, '=', 1) IN "
    "('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout') "
    "ORDER BY s.setdatabase"
)


def _act_as(conn: sa.Connection, claims: str, sub: str, role: str) -> None:
    """The claims, the role and its timeouts: three statements, sent in one round trip
    (psycopg's pipeline mode) where libpq supports it."""
    _require_transaction(conn)
    driver = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    batch = driver.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()
    try:
        with batch:
            driver.execute(_SET_CLAIMS, {"claims": claims, "sub": sub, "role": role})
            driver.execute(f"SET LOCAL ROLE {role}")
            driver.execute(_ROLE_TIMEOUTS, {"role": role})
    except psycopg.Error as err:
        # As SQLAlchemy would have raised it (a dead connection invalidated first, so the
        # pool never hands it out again): Scope retries a connection found dead here.
        dead = conn.dialect.is_disconnect(err, driver, None)  # type: ignore[arg-type]
        if dead:
            conn.invalidate()
        raise exc.DBAPIError.instance(
            _SET_CLAIMS, None, err, psycopg.Error, connection_invalidated=dead, dialect=conn.dialect
        ) from err


def act_as_user(conn: sa.Connection, claims: Claims) -> None:
    """Run the rest of the open Postgres transaction as ``claims``' user, under RLS.

    Sets ``request.jwt.claims`` (read by ``auth.uid()``/``auth.jwt()``; the older per-claim
    settings too, so any version of Supabase's functions agrees), ``SET LOCAL ROLE
    authenticated`` and that role's timeouts (``statement_timeout`` …), as PostgREST does.
    Everything is ``LOCAL``: it ends with the transaction, so a pooled
    connection never carries one user's identity into another's transaction.  Call it right
    after ``BEGIN``: rolling back a SAVEPOINT taken *before* it would undo it.
    """
    _act_as(conn, claims.to_json(), str(claims.user_id), AUTHENTICATED_ROLE)


def act_as_service(conn: sa.Connection) -> None:
    """Run the rest of the open Postgres transaction as ``service_role`` (bypasses RLS)."""
    _act_as(conn, json.dumps({"role": SERVICE_ROLE}), "", SERVICE_ROLE)


def _require_transaction(conn: sa.Connection) -> None:
    if not conn.in_transaction():
        # SET LOCAL outside a transaction is a no-op with a warning: never silently unscoped.
        raise ValueError("act_as_user/act_as_service need an open transaction")


class ListenWaiter(WorkWaiter):
    """Wakes on ``NOTIFY dualdb_tasks`` (migration 0009: a task became ready, whoever wrote it).

    ``LISTEN`` runs on a connection of its own, in autocommit, opened before the worker's
    first claim; notifications that arrive while the worker is busy wait in that connection
    and wake the next :meth:`wait` at once.  The connection may fail (a server restart): the
    wait then reconnects and reports a possible change, since notifications sent meanwhile
    are lost; while it cannot connect it simply waits out the timeout (the worker's claim
    reports the outage and backs off).
    """

    mode = f"LISTEN {TASKS_CHANNEL}"

    def __init__(self, connect: dict[str, Any]) -> None:
        self._connect_args = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._listen()

    def _listen(self) -> bool:
        try:
            conn = psycopg.connect(**self._connect_args, autocommit=True)
        except psycopg.Error:
            return False
        try:
            conn.execute(f"LISTEN {TASKS_CHANNEL}")
        except psycopg.Error:
            conn.close()
            return False
        self._conn = conn
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._conn is None:
                if self._listen():
                    return True  # notifications sent while disconnected are lost: look
                stop.wait(left)
                return False
            try:
                if any(
                    True
                    for _ in self._conn.notifies(timeout=min(left, _LISTEN_SLICE_S), stop_after=1)
                ):
                    # Fold what else has arrived into this wake-up: one claim for them all.
                    for _ in self._conn.notifies(timeout=0):
                        pass
                    return True
            except psycopg.Error:
                self.close()
        return False

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def _readable(socket: int) -> bool:
    """Whether ``socket`` has anything to read, without waiting."""
    if hasattr(select, "poll"):
        poll = select.poll()  # any descriptor number (select() stops at FD_SETSIZE)
        poll.register(socket, select.POLLIN)
        return bool(poll.poll(0))
    return bool(select.select([socket], [], [], 0)[0])  # Windows: no poll()


class PostgresBackend(Backend):
    """PostgreSQL 15+ (Supabase's, or a bare one with the stand-ins of migration 0004)."""

    name = "postgresql"
    row_locks = True
    server_clock = True
    queue_functions = True
    text_storage = False
    remote = True
    extra_triggers = POSTGRES_TRIGGERS
    driver = "postgresql+psycopg"
    library = "psycopg 3"
    schemes = ("postgres", "postgresql")

    def clock(self) -> sa.ColumnElement[Any]:
        # The server's clock (one for every worker machine), as the statement runs; not
        # now(), which is the transaction's start.
        return sa.func.clock_timestamp(type_=sa.DateTime(timezone=True))

    def may_be_dead(self, driver: Any) -> bool:
        # A server (or pooler) that ends a connection says so, a FATAL message, and closes
        # it: an idle connection with anything to read may be dead.  Looking costs a poll of
        # the socket, not a round trip.  (It may also hold a notice or a notification: the
        # caller's check then finds it alive.)  A connection dropped with no word (a network
        # partition) shows only when a statement is sent; a write is then not sent again.
        if driver.closed or driver.broken:
            return True
        try:
            socket = driver.pgconn.socket
        except psycopg.OperationalError:
            return True
        return _readable(socket)

    def at_rest(self, driver: Any) -> bool:
        return bool(driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)

    def transaction_pooler(self, url: URL, explicit: bool | None) -> bool:
        if explicit is not None:
            return explicit
        flag = str(url.query.get("pgbouncer", "")).lower()
        return url.port == TRANSACTION_POOLER_PORT or flag in ("1", "true", "yes")

    def driver_url(self, url: URL) -> URL:
        # ``?pgbouncer=true`` (Prisma's spelling) is not a libpq option: psycopg would reject it.
        return url.difference_update_query(["pgbouncer"]) if "pgbouncer" in url.query else url

    def create_engine(self, target: Target) -> Engine:
        connect_args: dict[str, Any] = {
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "application_name": "dualdb",
        }
        if target.transaction_pooler:
            # PgBouncer/Supavisor in transaction mode cannot keep prepared statements.
            connect_args["prepare_threshold"] = None
        # No pool_pre_ping (a round trip per call): a dead connection shows at the explicit
        # BEGIN below, at a one-statement read, or to may_be_dead before a one-statement
        # write, and Scope replaces it once.
        engine = sa.create_engine(
            target.url,
            pool_recycle=PG_POOL_RECYCLE_S,
            # psycopg sends no BEGIN of its own: the "begin" hook below does, as its own
            # statement, so a dead connection fails there and not at the first real statement.
            isolation_level="AUTOCOMMIT",
            connect_args=connect_args,
        )

        if not target.transaction_pooler:
            # Instants arrive as datetime.UTC (psycopg's zone for a session in "UTC"), which
            # the records keep as they are; in another zone (Debian's "Etc/UTC") each value
            # would be converted, a third of building a page of records.  Every timestamp
            # dualdb writes or formats is zone-independent.  Not behind the transaction
            # pooler: its server connections are shared, and although PgBouncer carries
            # TimeZone per client, a session setting is nothing a transaction pooler must keep.
            @event.listens_for(engine, "connect")
            def _in_utc(dbapi_conn: psycopg.Connection[Any], _record: Any) -> None:
                dbapi_conn.execute("SET TIME ZONE 'UTC'")
                if dbapi_conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    dbapi_conn.commit()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            options = conn.get_execution_options()
            if options.get(AUTOCOMMIT):
                return
            if "isolation_level" in options:
                # An explicit level: psycopg begins the transaction itself (REPEATABLE READ),
                # or the caller wants none at all (AUTOCOMMIT, e.g. VACUUM).
                return
            conn.exec_driver_sql("BEGIN")

        return engine

    def autocommit_read_options(self) -> dict[str, Any]:
        return {READ_ONLY: True, AUTOCOMMIT: True}

    def snapshot_read_options(self) -> dict[str, Any]:
        # READ COMMITTED takes a new snapshot per statement: pages would disagree.
        return {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}

    def work_waiter(self, target: Target, engine: Engine) -> WorkWaiter:
        if target.transaction_pooler:
            # The transaction pooler hands each transaction to any server connection: a
            # LISTEN would be lost.  Poll.
            return WorkWaiter()
        _, params = engine.dialect.create_connect_args(engine.url)
        return ListenWaiter(
            {
                **params,
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "dualdb-listen",
            }
        )

    def refresh_statistics(self, conn: sa.Connection, tables: tuple[str, ...]) -> None:
        # A planner that still believes a table is tiny picks bad plans for what follows.
        for table in tables:
            conn.execute(sa.text(f"ANALYZE {table}"))

    def one_of(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))

    # COPY FROM costs a round trip per buffer instead of per statement batch, and skips
    # building and parsing INSERT statements; below COPY_FROM_ROWS it gains nothing.  The
    # server stores each buffer while the next is being made.
    bulk_rows = COPY_FROM_ROWS
    streams_bulk = True

    def copy_rows(
        self,
        conn: sa.Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Collection[Sequence[Any]],
        meanwhile: Callable[[], object] | None = None,
    ) -> bool:
        if len(rows) < COPY_FROM_ROWS:
            return False
        # The columns' own bind conversions (with the hot path's shortcuts for values already
        # in the driver's form): COPY gets what an INSERT would have bound.
        bind = row_binder(table, columns, conn.dialect)
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, psycopg.Connection)
        # An exception while a row is made ends the COPY with CopyFail (psycopg's exit):
        # the server discards it all, and the exception passes on as it was.
        with (
            insert_errors(statement, psycopg.Error),
            dbapi.cursor() as cur,
            cur.copy(statement) as copy,
        ):
            # Midway, the rows sent so far keep the server busy for longer than a page of
            # the caller's work takes; the rest is sent after it.
            midway = len(rows) // 2
            for i, row in enumerate(rows):
                copy.write_row(bind(row))
                if i == midway and meanwhile is not None:
                    meanwhile()
        return True

    def user_hook(self, claims: Claims) -> TransactionHook:
        def act(conn: sa.Connection) -> None:
            act_as_user(conn, claims)

        return act

    def service_hook(self) -> TransactionHook:
        return act_as_service

    def live_triggers(self, conn: sa.Connection) -> set[tuple[str, str]]:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, t.tgname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            # A trigger that does not fire in ordinary sessions (DISABLE, or ENABLE REPLICA)
            # keeps no rule: as missing.
            "WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') "
            "AND n.nspname = current_schema()"
        )
        return {(str(table), str(name)) for table, name in rows}

    def schema_problems(self, conn: sa.Connection) -> list[str]:
        """The queue's SQL functions (dualdb's own queue calls the workers' verbs)."""
        return [
            f"function {signature} is in the models but not in the database"
            for signature in POSTGRES_FUNCTIONS
            if conn.execute(sa.text("SELECT to_regprocedure(:s)"), {"s": signature}).scalar()
            is None
        ]

    def auth_problems(self, conn: sa.Connection) -> list[str]:
        """Does ``auth.uid()`` read ``request.jwt.claims`` (what PostgREST 9+ sets)?

        An older Supabase definition reads only ``request.jwt.claim.sub``: PostgREST's users
        then see nothing, while dualdb's own scoped sessions (which set both) still work.
        """
        if conn.exec_driver_sql("SELECT to_regprocedure('auth.uid()')").scalar() is None:
            return []
        with conn.begin_nested() as probe:
            # What PostgREST 9+ sets (and nothing else): the whole token in one setting.
            conn.execute(
                sa.text("SELECT set_config('request.jwt.claims', :claims, true)"),
                {"claims": json.dumps({"sub": _PROBE_SUB, "role": "authenticated"})},
            )
            seen = conn.exec_driver_sql("SELECT auth.uid()::text").scalar()
            probe.rollback()
        if seen == _PROBE_SUB:
            return []
        return [
            "auth.uid() ignores request.jwt.claims (an old Supabase definition): PostgREST's "
            "users see none of their rows. Fix: redefine it as in docs/supabase.md "
            '("auth.uid() and request.jwt.claims")'
        ]
