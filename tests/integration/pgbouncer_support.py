"""A throwaway PgBouncer in transaction mode, in front of the test PostgreSQL.

Supabase's transaction pooler (port 6543) is PgBouncer/Supavisor in ``pool_mode =
transaction``: each transaction of a client may run on a different server connection, and
several clients take turns on the same one.  The ``pgbouncer`` fixture
(``tests/integration/conftest.py``) starts Debian's ``pgbouncer`` (``apt-get install
pgbouncer``) that way, so the tests go through the real thing rather than a flagged direct URL.
Without the binary those tests are skipped — except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from sqlalchemy.engine import make_url

from benchmarks.pickup import stop
from tests.conftest import _CI

#: Server connections per (database, user): fewer than the clients the tests open, so
#: clients really share server connections.
POOL_SIZE = 2
#: Bounded readiness poll: a real connect through PgBouncer, every 50 ms, for up to 15 s.
READY_TIMEOUT_S = 15.0
READY_INTERVAL_S = 0.05
INSTALL_HINT = "apt-get install pgbouncer"


def missing(reason: str) -> NoReturn:
    """A clear skip outside CI; a failure under CI, which requires the real pooler."""
    if _CI:
        pytest.fail(f"CI requires a real PgBouncer, but {reason}", pytrace=False)
    pytest.skip(f"PgBouncer tests skipped: {reason}")


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` binary (Debian puts it in /usr/sbin, off a non-root PATH)."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if os.access(found, os.X_OK) else None


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: ``127.0.0.1:port``, transaction mode, ``pool_size`` server
    connections per database."""

    port: int
    user: str
    pool_size: int
    log: Path

    def url_for(self, dbname: str) -> str:
        """The URL a user of Supabase's transaction pooler gives dualdb: through PgBouncer,
        flagged ``?pgbouncer=true`` (port 6543 would say the same; this port is a free one)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}?pgbouncer=true"

    def driver_url(self, dbname: str) -> str:
        """The same, for psycopg itself (``pgbouncer`` is not a libpq option)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_pgbouncer(binary: str, server_url: str) -> Iterator[PgBouncer]:
    """Start ``binary`` in front of the PostgreSQL of ``server_url``; stop it afterwards.

    Its ini and auth file go to a temp dir of their own.  It listens on a free 127.0.0.1
    port with no Unix socket, so it neither needs nor collides with the system service
    Debian's package may have started (port 6432).
    """
    server = make_url(server_url)
    user = server.username or "postgres"
    base = Path(tempfile.mkdtemp(prefix="dualdb-pgbouncer-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        ini, auth = base / "pgbouncer.ini", base / "userlist.txt"
        # Any database name goes to the same-named database on the test server.  Clients log in
        # without a password (auth_type = trust, the user must still be in the auth file);
        # PgBouncer logs in to the server with the auth file's password, if the server wants one.
        auth.write_text(f'"{user}" "{server.password or ""}"\n')
        port = _free_port()
        ini.write_text(
            "[databases]\n"
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"  # no socket file: nothing to collide with
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "reserve_pool_size = 0\n"  # never more than POOL_SIZE server connections
            "max_client_conn = 200\n"
            f"admin_users = {user}\n"
        )
        args = [binary]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root: it switches to postgres, who must read the files.
            for path in (base, ini, auth):
                shutil.chown(path, "postgres")
            args += ["-u", "postgres"]
        log = base / "pgbouncer.log"
        with log.open("w") as out:  # opened here: its log needs no write access for postgres
            proc = subprocess.Popen([*args, str(ini)], stdout=out, stderr=subprocess.STDOUT)
        bouncer = PgBouncer(port=port, user=user, pool_size=POOL_SIZE, log=log)
        _wait_until_ready(proc, bouncer)
        yield bouncer
    finally:
        if proc is not None:
            # SIGTERM: an immediate shutdown up to PgBouncer 1.22 (Debian 12 has 1.18); from
            # 1.23 on it waits for clients, so a client left open is killed after 5 s.
            stop(proc, 5)
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_ready(proc: subprocess.Popen[bytes], bouncer: PgBouncer) -> None:
    """Poll a real connect (and a query, so a server connection too) until it works."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    problem = "no attempt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited ({proc.returncode}) at startup:\n{bouncer.log.read_text()}"
            )
        try:
            with psycopg.connect(
                bouncer.driver_url("postgres"), connect_timeout=2, autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as err:
            problem = str(err).strip() or type(err).__name__
        time.sleep(READY_INTERVAL_S)  # between connection attempts: not refused yet
    raise RuntimeError(
        f"pgbouncer did not accept connections within {READY_TIMEOUT_S} s ({problem}):\n"
        f"{bouncer.log.read_text()}"
    )
