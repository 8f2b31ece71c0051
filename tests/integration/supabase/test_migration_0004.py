"""Migration 0004 (Row Level Security) on a Supabase stand-in, a bare Postgres and a cluster
that has never seen the Supabase roles; and through ``dualdb sql``.  Postgres only: on SQLite
0004 is a no-op, which the history tests in ``tests/integration`` cover on both backends.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from dualdb import migrations
from dualdb.auth import Claims, act_as_user
from dualdb.config import resolve
from dualdb.engine import create_engine
from dualdb.errors import MigrationError
from dualdb.schema import TABLES, projects, users
from tests.acceptance.test_cli import dualdb
from tests.integration.supabase.conftest import FreshCluster

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]

STAND_IN = "dualdb stand-in for Supabase auth (migration 0004)"
PUBLIC_TABLES = {t.name for t in TABLES}


def catalog(url: str) -> dict[str, object]:
    """What 0004 touches, read from the catalogs."""
    with psycopg.connect(url) as conn:
        rls = dict(
            conn.execute(
                "SELECT c.relname, c.relrowsecurity FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ).fetchall()
        )
        policies = {
            (t, p, tuple(roles))
            for t, p, roles in conn.execute(
                "SELECT tablename, policyname, roles FROM pg_policies WHERE schemaname = 'public'"
            ).fetchall()
        }
        auth = conn.execute(
            "SELECT obj_description(to_regnamespace('auth'), 'pg_namespace'), "
            "to_regnamespace('auth') IS NOT NULL, to_regprocedure('auth.uid()') IS NOT NULL, "
            "obj_description(to_regprocedure('auth.uid()'), 'pg_proc'), "
            "to_regclass('auth.users') IS NOT NULL"
        ).fetchone()
    assert auth is not None
    return {
        "rls": rls,
        "policies": policies,
        "auth_comment": auth[0],
        "auth_schema": auth[1],
        "auth_uid": auth[2],
        "auth_uid_comment": auth[3],
        "auth_users": auth[4],
    }


def assert_protected(info: dict[str, object]) -> None:
    rls = info["rls"]
    assert isinstance(rls, dict)
    assert {t for t, on in rls.items() if on} == PUBLIC_TABLES | {"alembic_version"}
    assert info["policies"] == {(t, f"{t}_owner", ("authenticated",)) for t in PUBLIC_TABLES}


def assert_unprotected(info: dict[str, object]) -> None:
    rls = info["rls"]
    assert isinstance(rls, dict)
    assert not any(rls.values())
    assert info["policies"] == set()


def test_every_table_is_protected_by_row_level_security(supabase_url: str) -> None:
    """Guard: a table added to the schema without RLS and a policy fails here."""
    info = catalog(supabase_url)
    rls = info["rls"]
    assert isinstance(rls, dict)
    unprotected = sorted(t for t, on in rls.items() if not on)
    policies = info["policies"]
    assert isinstance(policies, set)
    without_policy = sorted(PUBLIC_TABLES - {t for t, _, _ in policies})
    assert (unprotected, without_policy) == ([], []), (
        f"tables without RLS: {unprotected}; tables without an ownership policy: "
        f"{without_policy}.\nFix: in the migration that creates the table, on Postgres, "
        "`ALTER TABLE … ENABLE ROW LEVEL SECURITY` and `CREATE POLICY <table>_owner … TO "
        "authenticated USING (<owned through projects.user_id = auth.uid()>) WITH CHECK (…)` "
        "(see migrations/versions/0004_row_level_security.py), and cover it in test_rls.py."
    )
    assert_protected(info)


def test_migrations_on_a_supabase_database_keep_its_auth_schema(supabase_empty_url: str) -> None:
    target = resolve(supabase_empty_url)
    assert migrations.upgrade(target) == migrations.revisions()
    assert migrations.check(target) == []
    info = catalog(supabase_empty_url)
    assert_protected(info)
    # Supabase's own auth objects were used, not replaced.
    assert info["auth_comment"] is None and info["auth_uid_comment"] is None

    since_0003 = migrations.revisions()[migrations.revisions().index("0003") + 1 :]
    assert migrations.downgrade(target, "0003") == since_0003[::-1]
    after = catalog(supabase_empty_url)
    assert_unprotected(after)
    assert (after["auth_schema"], after["auth_uid"], after["auth_users"]) == (True, True, True)
    assert migrations.check(target) != []  # behind head: says to migrate

    assert migrations.upgrade(target) == since_0003
    assert migrations.check(target) == []
    assert_protected(catalog(supabase_empty_url))


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_bare_postgres_gets_auth_stand_ins_and_the_same_policies(
    migrated_url: str, backend: str
) -> None:
    """``migrated_url`` is a plain Postgres database: no auth schema was there before 0004."""
    info = catalog(migrated_url)
    assert_protected(info)
    assert info["auth_comment"] == STAND_IN and info["auth_uid_comment"] == STAND_IN
    assert info["auth_users"] is False

    engine = create_engine(resolve(migrated_url))
    a, b = uuid.uuid4(), uuid.uuid4()
    try:
        with engine.begin() as conn:
            conn.execute(users.insert(), [{"id": a}, {"id": b}])
            conn.execute(
                projects.insert(), [{"name": "A", "user_id": a}, {"name": "B", "user_id": b}]
            )
        with engine.begin() as conn:
            act_as_user(conn, Claims.for_user_id(a))
            assert conn.execute(sa.text("SELECT auth.role()")).scalar() == "authenticated"
            assert conn.execute(sa.text("SELECT auth.jwt() ->> 'sub'")).scalar() == str(a)
            assert conn.execute(sa.select(projects.c.name)).scalars().all() == ["A"]
        # No Supabase default grants on a bare Postgres: anon has no table privileges at all.
        with engine.connect() as conn, pytest.raises(exc.ProgrammingError), conn.begin():
            conn.exec_driver_sql("SET LOCAL ROLE anon")
            conn.execute(sa.select(projects.c.id))
    finally:
        engine.dispose()

    target = resolve(migrated_url)
    migrations.downgrade(target, "0003")
    after = catalog(migrated_url)
    assert_unprotected(after)
    assert after["auth_schema"] is False  # the stand-in is gone again
    migrations.upgrade(target)
    assert migrations.check(target) == []
    assert_protected(catalog(migrated_url))


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_downgrade_keeps_objects_someone_added_to_the_stand_in_schema(
    migrated_url: str, backend: str
) -> None:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE auth.sessions (id uuid PRIMARY KEY)")
    migrations.downgrade(resolve(migrated_url), "0003")
    after = catalog(migrated_url)
    assert after["auth_schema"] is True and after["auth_uid"] is False
    migrations.upgrade(resolve(migrated_url))
    assert_protected(catalog(migrated_url))


def test_offline_sql_renders_the_policies_and_applies_as_one_history(
    supabase_empty_url: str, tmp_path: Path
) -> None:
    """``dualdb sql`` + psql (or ``supabase db push``) ends where ``dualdb migrate`` does."""
    result = dualdb("sql", "-o", str(tmp_path / "all.sql"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "all.sql").read_text()
    assert "CREATE POLICY projects_owner ON projects" in script
    assert "ALTER TABLE alembic_version ENABLE ROW LEVEL SECURITY" in script
    assert "UPDATE alembic_version SET version_num='0004' WHERE" in script
    with psycopg.connect(supabase_empty_url, autocommit=True) as conn:
        conn.execute(script)
    target = resolve(supabase_empty_url)
    assert migrations.status(target).up_to_date
    assert migrations.check(target) == []
    assert_protected(catalog(supabase_empty_url))


def test_a_fresh_cluster_gets_the_roles_and_a_non_superuser_can_then_migrate(
    fresh_cluster: FreshCluster,
) -> None:
    admin = fresh_cluster.url_for()
    with psycopg.connect(admin, autocommit=True) as conn:
        missing = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon','authenticated','service_role')"
        ).fetchone()
        assert missing == (0,)
        conn.execute("CREATE ROLE app LOGIN")
        conn.execute("CREATE DATABASE app_db OWNER app")
        conn.execute("CREATE DATABASE super_db")

    # A non-superuser cannot create service_role (BYPASSRLS): a clear error, nothing applied.
    as_app = resolve(fresh_cluster.url_for("app_db", user="app"))
    with pytest.raises(MigrationError, match="role anon is missing and this user may not"):
        migrations.upgrade(as_app)
    assert migrations.status(as_app).current is None

    # A superuser's migration creates them, as Supabase has them.
    migrations.upgrade(resolve(fresh_cluster.url_for("super_db")))
    with psycopg.connect(admin) as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles "
            "WHERE rolname IN ('anon','authenticated','service_role') ORDER BY rolname"
        ).fetchall()
    assert roles == [
        ("anon", False, False),
        ("authenticated", False, False),
        ("service_role", False, True),
    ]

    # Now the app's own role migrates its database; with membership in `authenticated` (as
    # Supabase's `postgres` has) it can scope transactions to a user.
    migrations.upgrade(as_app)
    assert migrations.check(as_app) == []
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("GRANT authenticated TO app")
    engine = create_engine(as_app)
    uid = uuid.uuid4()
    try:
        with engine.begin() as conn:
            conn.execute(users.insert().values(id=uid))
            conn.execute(projects.insert().values(name="mine", user_id=uid))
            conn.execute(projects.insert().values(name="other", user_id=uid))
            conn.execute(users.insert().values(id=uuid.uuid4()))
        with engine.begin() as conn:
            act_as_user(conn, Claims.for_user_id(uuid.uuid4()))
            assert conn.execute(sa.select(sa.func.count()).select_from(projects)).scalar() == 0
        with engine.begin() as conn:
            act_as_user(conn, Claims.for_user_id(uid))
            assert conn.execute(sa.select(sa.func.count()).select_from(projects)).scalar() == 2
            assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 1
    finally:
        engine.dispose()
    migrations.downgrade(as_app, "base")
    assert migrations.status(as_app).current is None


def test_the_stand_in_fixture_is_what_0004_expects(supabase_empty_url: str) -> None:
    """The stand-in really is a Supabase-shaped database (else the tests above prove little)."""
    info = catalog(supabase_empty_url)
    assert (info["auth_schema"], info["auth_uid"], info["auth_users"]) == (True, True, True)
    assert info["auth_comment"] is None
    with psycopg.connect(supabase_empty_url) as conn:
        acl = conn.execute(
            "SELECT d.defaclacl::text FROM pg_default_acl d "
            "JOIN pg_namespace n ON n.oid = d.defaclnamespace "
            "WHERE n.nspname = 'public' AND d.defaclobjtype = 'r'"
        ).fetchone()
    # Supabase's default grants: new tables in public are open to the API roles (so RLS is
    # what stands between them and the rows).
    assert acl is not None and all(f"{r}=arwdDxt" in acl[0] for r in ("anon", "authenticated"))
