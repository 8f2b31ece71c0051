"""A Supabase stand-in on a real PostgreSQL, for the web-mode tests in this folder.

``supabase_url`` yields a throwaway database prepared the way a Supabase project is, then
migrated to head: the API roles ``anon``, ``authenticated`` (``NOLOGIN``) and ``service_role``
(``NOLOGIN BYPASSRLS``); an ``auth`` schema with ``auth.users`` and ``auth.uid()``,
``auth.role()``, ``auth.jwt()`` reading ``request.jwt.claims``; and Supabase's default grants on
``public`` to the API roles (so Row Level Security, not missing privileges, is what keeps rows
apart).  ``supabase_empty_url`` is the same before any migration.

Roles are cluster-wide: they are created only when missing, tolerating parallel runs and other
databases (including migration 0004, which makes the same roles on a bare Postgres).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dualdb.config import resolve
from dualdb.migrations import upgrade
from tests.conftest import _CI, PgServer, _create_database, _drop_database, _require_pg

#: (name, attributes) of Supabase's API roles.
API_ROLES = (
    ("anon", "NOLOGIN NOINHERIT"),
    ("authenticated", "NOLOGIN NOINHERIT"),
    ("service_role", "NOLOGIN NOINHERIT BYPASSRLS"),
)

_CREATE_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
        CREATE ROLE {name} {options};
    END IF;
EXCEPTION
    -- Another run created it between the check and the CREATE.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$
"""

#: What a Supabase project has in its database before the app's first migration.
SUPABASE_DATABASE_SETUP = (
    "CREATE SCHEMA auth",
    """CREATE TABLE auth.users (
        id uuid PRIMARY KEY,
        aud varchar(255),
        role varchar(255),
        email varchar(255) UNIQUE,
        raw_app_meta_data jsonb,
        raw_user_meta_data jsonb,
        created_at timestamptz DEFAULT now(),
        updated_at timestamptz
    )""",
    # The definitions Supabase Auth installs (current claims first, older per-claim settings).
    """CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
        SELECT nullif(coalesce(
            current_setting('request.jwt.claim.sub', true),
            (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
        ), '')::uuid
    $$""",
    """CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
        SELECT nullif(coalesce(
            current_setting('request.jwt.claim.role', true),
            (current_setting('request.jwt.claims', true)::jsonb ->> 'role')
        ), '')::text
    $$""",
    """CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
    $$""",
    "GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role",
    "GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role",
    "GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES "
    "TO postgres, anon, authenticated, service_role",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS "
    "TO postgres, anon, authenticated, service_role",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES "
    "TO postgres, anon, authenticated, service_role",
)


def ensure_api_roles(admin_url: str) -> None:
    """Create Supabase's API roles on the cluster if missing; fail if one exists but differs."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, options in API_ROLES:
            conn.execute(_CREATE_ROLE.format(name=name, options=options))
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles "
            "WHERE rolname IN ('anon', 'authenticated', 'service_role')"
        ).fetchall()
    found = {name: (login, bypass) for name, login, bypass in rows}
    want = {"anon": (False, False), "authenticated": (False, False), "service_role": (False, True)}
    assert found == want, (
        f"the Supabase API roles on this PostgreSQL differ from Supabase's: {found}; "
        "fix them (ALTER ROLE … NOLOGIN / BYPASSRLS) or point DUALDB_TEST_POSTGRES_URL elsewhere"
    )


def prepare_supabase_database(url: str) -> None:
    """Give the (empty) database at ``url`` the auth schema and grants of a Supabase project."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for statement in SUPABASE_DATABASE_SETUP:
            conn.execute(statement)


def _new_supabase_database(server: PgServer, template: str | None = None) -> str:
    assert server.admin_url is not None
    if template is not None:
        return _create_database(server, template=template)
    ensure_api_roles(server.admin_url)
    name = _create_database(server)
    prepare_supabase_database(server.url_for(name))
    return name


@pytest.fixture(scope="session")
def supabase_template(pg_server: PgServer) -> Iterator[str | None]:
    """A Supabase stand-in database at the migration head, cloned for each test."""
    if pg_server.admin_url is None:
        yield None
        return
    name = _new_supabase_database(pg_server)
    try:
        upgrade(resolve(pg_server.url_for(name)))
        yield name
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def supabase_url(pg_server: PgServer, supabase_template: str | None) -> Iterator[str]:
    """URL of a fresh Supabase stand-in database at the migration head."""
    _require_pg(pg_server)
    assert supabase_template is not None
    name = _new_supabase_database(pg_server, template=supabase_template)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def supabase_empty_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh Supabase stand-in database with no migration applied."""
    _require_pg(pg_server)
    name = _new_supabase_database(pg_server)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop_database(pg_server, name)


@dataclass
class FreshCluster:
    """A brand-new PostgreSQL cluster: no Supabase roles, nothing shared with other runs."""

    port: int

    def url_for(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """The URL of database ``dbname`` on this cluster, as ``user`` (trust auth)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fresh_cluster(pg_server: PgServer) -> Iterator[FreshCluster]:
    """Start a throwaway cluster from the local PostgreSQL binaries (skipped without them).

    The shared server cannot show what happens when the roles are missing: once anything has
    migrated there, the cluster-wide roles exist.
    """
    _require_pg(pg_server)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = str(found[-1]) if found else shutil.which("initdb")
    if initdb is None:
        pytest.skip("no initdb binary: cannot start a fresh PostgreSQL cluster")
    bindir = Path(initdb).parent
    # Not under pytest's tmp_path: its parents are private to this user, and the server runs
    # as ``postgres`` when we are root.
    base = Path(tempfile.mkdtemp(prefix="dualdb-fresh-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        for path in (base, sock):
            shutil.chown(path, "postgres")
        base.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        try:
            subprocess.run(
                [*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-N"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            subprocess.run(
                [*pg_ctl, "-w", "-l", str(base / "log"), "-o", options, "start"],
                check=True,
                capture_output=True,
                timeout=120,
            )
        except (subprocess.SubprocessError, OSError) as err:
            if _CI:
                pytest.fail(f"could not start a fresh PostgreSQL cluster: {err}", pytrace=False)
            pytest.skip(f"could not start a fresh PostgreSQL cluster: {err}")
        yield FreshCluster(port)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
