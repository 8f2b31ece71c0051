"""A Supabase stand-in on a real PostgreSQL, for the web-mode tests in this folder.

``supabase_url`` yields a throwaway database prepared the way a Supabase project is, then
migrated to head: the API roles ``anon``, ``authenticated`` (``NOLOGIN``) and ``service_role``
(``NOLOGIN BYPASSRLS``); an ``auth`` schema with ``auth.users`` and ``auth.uid()``,
``auth.role()``, ``auth.jwt()`` reading ``request.jwt.claims``; and Supabase's default grants on
``public`` to the API roles (so Row Level Security, not missing privileges, is what keeps rows
apart).  ``supabase_empty_url`` is the same before any migration.

Roles are cluster-wide: they are created only when missing, tolerating parallel runs and other
databases (including migration 0004, which makes the same roles on a bare Postgres).
:func:`ensure_authenticator_role` adds the login role PostgREST connects as (``authenticator``,
``LOGIN NOINHERIT``, a member of the three API roles), for the tests that run a real PostgREST
(``tests/integration/api``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy.engine import make_url

from dualdb.config import resolve
from dualdb.migrations import upgrade
from tests.conftest import (
    _CI,
    PgServer,
    _create_database,
    _drop_database,
    _require_pg,
    _start_cluster,
    _stop_cluster,
)

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


#: The role PostgREST logs in as; it switches to the role named in each request's JWT.
AUTHENTICATOR = "authenticator"

#: Serialises membership grants between parallel runs (concurrent GRANTs of the same role can
#: fail with "tuple concurrently updated"); an arbitrary constant, taken in the admin database.
_ROLE_LOCK = 0x6475616C  # "dual"


def ensure_authenticator_role(admin_url: str) -> None:
    """Create Supabase's ``authenticator`` (``LOGIN NOINHERIT``) if missing, and make it a member
    of ``anon``, ``authenticated`` and ``service_role`` — what PostgREST needs to ``SET ROLE``.

    Creates the API roles first (:func:`ensure_api_roles`).  Idempotent and safe to run from
    parallel test runs against the same cluster.
    """
    ensure_api_roles(admin_url)
    with psycopg.connect(admin_url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ROLE_LOCK,))
        conn.execute(_CREATE_ROLE.format(name=AUTHENTICATOR, options="LOGIN NOINHERIT"))
        for name, _ in API_ROLES:
            member = conn.execute(
                "SELECT pg_has_role(%s, %s, 'MEMBER')", (AUTHENTICATOR, name)
            ).fetchone()
            if not (member and member[0]):
                conn.execute(f"GRANT {name} TO {AUTHENTICATOR}")
        row = conn.execute(
            "SELECT rolcanlogin, rolinherit, rolbypassrls, rolsuper FROM pg_roles "
            "WHERE rolname = %s",
            (AUTHENTICATOR,),
        ).fetchone()
    assert row == (True, False, False, False), (
        f"the role {AUTHENTICATOR} on this PostgreSQL differs from Supabase's "
        f"(login, inherit, bypassrls, superuser = {row}); fix it (ALTER ROLE {AUTHENTICATOR} "
        "LOGIN NOINHERIT NOBYPASSRLS NOSUPERUSER) or point DUALDB_TEST_POSTGRES_URL elsewhere"
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


@pytest.fixture
def fresh_cluster(pg_server: PgServer) -> Iterator[FreshCluster]:
    """A throwaway cluster started from the local PostgreSQL binaries (skipped without them).

    The shared server cannot show what happens when the roles are missing: once anything has
    migrated there, the cluster-wide roles exist.
    """
    _require_pg(pg_server)
    url, problem, base = _start_cluster()
    if url is None:
        if _CI:
            pytest.fail(f"a fresh PostgreSQL cluster is needed here: {problem}", pytrace=False)
        pytest.skip(problem)
    try:
        port = make_url(url).port
        assert port is not None
        yield FreshCluster(port)
    finally:
        if base is not None:
            _stop_cluster(base)
