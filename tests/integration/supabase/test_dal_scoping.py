"""The DAL's user scope on the Supabase stand-in: RLS does the filtering, the DAL agrees."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.engine import make_url

import dualdb
from dualdb import DatabaseBusy, PermissionDenied, migrations
from dualdb.config import resolve

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_only]


def test_as_user_runs_under_rls_as_authenticated(supabase_url: str) -> None:
    with dualdb.connect(supabase_url) as db:
        alice, bob = db.users.create(), db.users.create()
        mine = db.projects.create("Mine", alice.id)
        theirs = db.projects.create("Theirs", bob.id)
        me = db.as_user(alice.id)
        with me.session() as s:
            role = s.connection.execute(sa.text("SELECT current_user")).scalar()
            uid = s.connection.execute(sa.text("SELECT auth.uid()")).scalar()
            # Raw SQL in the session is filtered by RLS alone, without the DAL's help.
            raw = s.connection.execute(sa.text("SELECT id FROM projects")).scalars().all()
        assert (role, uid) == ("authenticated", alice.id)
        assert raw == [mine.id]
        assert [p.id for p in me.projects.list().items] == [mine.id]
        with pytest.raises(PermissionDenied):
            me.shots.create(theirs.id, "x")
        with db.as_service().session() as s:
            assert s.connection.execute(sa.text("SELECT current_user")).scalar() == "service_role"
            assert s.projects.count() == 2


def test_scoped_sessions_apply_the_roles_timeouts(supabase_url: str) -> None:
    """As PostgREST does after its SET ROLE: the role's statement_timeout holds."""
    name = make_url(supabase_url).database
    with psycopg.connect(supabase_url, autocommit=True) as conn:
        conn.execute(
            psql.SQL("ALTER ROLE authenticated IN DATABASE {} SET statement_timeout = '200ms'")
            .format(psql.Identifier(name))
        )  # fmt: skip
    with dualdb.connect(supabase_url) as db:
        me = db.as_user(db.users.create().id)
        with pytest.raises(DatabaseBusy, match="took too long"), me.session() as s:
            s.connection.execute(sa.text("SELECT pg_sleep(5)"))
        with me.session() as s:
            setting = s.connection.execute(sa.text("SHOW statement_timeout")).scalar()
        assert setting == "200ms"
        with db.as_service().session() as s:  # no setting for service_role here
            assert s.connection.execute(sa.text("SHOW statement_timeout")).scalar() == "0"


OLD_AUTH_UID = (
    "CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS "
    "$$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$"
)


def test_check_and_migrate_detect_an_auth_uid_that_ignores_the_claims(supabase_url: str) -> None:
    target = resolve(supabase_url)
    assert migrations.check(target) == []
    with psycopg.connect(supabase_url, autocommit=True) as conn:
        conn.execute(OLD_AUTH_UID)
    [problem] = migrations.check(target)
    assert problem.startswith("auth.uid() ignores request.jwt.claims"), problem
    done = subprocess.run(
        [sys.executable, "-m", "dualdb", "migrate", "--url", supabase_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: auth.uid() ignores request.jwt.claims" in done.stderr
