"""Row Level Security: ownership policies on every table; the version table closed to the API.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Postgres only; on SQLite this migration changes nothing (the data-access layer applies the
same ownership rules there).

On Postgres, for the Supabase API roles (``anon``, ``authenticated``, ``service_role``):

* Row Level Security is enabled on every table, with one policy per table for
  ``authenticated``: a user reaches their own ``users`` row, their own ``projects``
  (``user_id = auth.uid()``) and everything under them — ``tasks``, ``generations`` and
  ``shots`` through ``project_id``, ``shot_generations`` through its shot *and* its generation,
  ``task_dependencies`` through both of its tasks.  ``anon`` has no policy and sees nothing;
  ``service_role`` has ``BYPASSRLS``.  The table owner (the role that runs migrations) is not
  subject to RLS, as on Supabase.
* ``alembic_version`` is neither readable nor writable by ``anon``/``authenticated`` (and not
  writable by ``service_role``), with RLS enabled and no policy as a second lock.
* ``TRUNCATE``, ``REFERENCES`` and ``TRIGGER`` are revoked from ``anon``/``authenticated``:
  ``TRUNCATE`` ignores RLS.

On a bare Postgres (no Supabase), the missing pieces are created so the same policies apply
everywhere: the three roles (``NOLOGIN``; ``service_role`` with ``BYPASSRLS``, which needs a
superuser) and a minimal ``auth`` schema with ``auth.uid()``, ``auth.role()`` and ``auth.jwt()``
reading ``request.jwt.claims`` as Supabase's do.  Objects this migration creates carry the
comment :data:`STAND_IN`; the downgrade removes exactly those, so Supabase's own ``auth`` schema
is never touched.  Roles are cluster-wide and may serve other databases: they are kept.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Comment marking the auth stand-ins this migration created (the downgrade drops only those).
STAND_IN = "dualdb stand-in for Supabase auth (migration 0004)"

#: ``(SELECT …)`` makes Postgres evaluate ``auth.uid()`` once per statement, not once per row.
UID = "(SELECT auth.uid())"


def _project_owned(column: str) -> str:
    return f"EXISTS (SELECT 1 FROM projects p WHERE p.id = {column} AND p.user_id = {UID})"


def _task_owned(column: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM tasks t JOIN projects p ON p.id = t.project_id "
        f"WHERE t.id = {column} AND p.user_id = {UID})"
    )


#: Table → the ownership rule, used both as USING (rows seen, updated, deleted) and as
#: WITH CHECK (rows written), so a row can neither be read in nor moved into someone else's
#: project.  Parents first.
POLICIES: dict[str, str] = {
    "users": f"id = {UID}",
    "projects": f"user_id = {UID}",
    "tasks": _project_owned("tasks.project_id"),
    # Both ends: a user may not make their task wait on (and so observe) someone else's task.
    "task_dependencies": (
        f"{_task_owned('task_dependencies.task_id')} "
        f"AND {_task_owned('task_dependencies.dependency_id')}"
    ),
    "generations": _project_owned("generations.project_id"),
    "shots": _project_owned("shots.project_id"),
    # Both ends: a user may not attach someone else's generation to their own shot.
    "shot_generations": (
        "EXISTS (SELECT 1 FROM shots s JOIN projects p ON p.id = s.project_id "
        f"WHERE s.id = shot_generations.shot_id AND p.user_id = {UID}) "
        "AND EXISTS (SELECT 1 FROM generations g JOIN projects p ON p.id = g.project_id "
        f"WHERE g.id = shot_generations.generation_id AND p.user_id = {UID})"
    ),
}

TABLES = ", ".join(POLICIES)
VERSION_TABLE = "alembic_version"


def _policy_name(table: str) -> str:
    return f"{table}_owner"


# Roles are cluster-wide: another database (or a parallel migration) may create them at the
# same moment, which surfaces as unique_violation rather than duplicate_object.
_ROLE = """
DO $dualdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{name}') THEN
        BEGIN
            CREATE ROLE {name} {options};
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role {name} is missing and this user may not create it'
                    USING HINT = 'create the Supabase roles first (docs/supabase.md)';
        END;
    END IF;
END
$dualdb$
"""

# Same definitions as Supabase's (claims from PostgREST's request.jwt.claims, falling back to
# the older per-claim settings), created only when absent.
_AUTH_STAND_IN = f"""
DO $dualdb$
BEGIN
    IF to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
        COMMENT ON SCHEMA auth IS '{STAND_IN}';
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
            SELECT nullif(coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
            ), '')::uuid
        $fn$;
        COMMENT ON FUNCTION auth.uid() IS '{STAND_IN}';
    END IF;
    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $fn$
            SELECT nullif(coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
            ), '')::text
        $fn$;
        COMMENT ON FUNCTION auth.role() IS '{STAND_IN}';
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $fn$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $fn$;
        COMMENT ON FUNCTION auth.jwt() IS '{STAND_IN}';
    END IF;
END
$dualdb$
"""

_DROP_AUTH_STAND_IN = f"""
DO $dualdb$
BEGIN
    IF obj_description(to_regprocedure('auth.uid()'), 'pg_proc') = '{STAND_IN}' THEN
        DROP FUNCTION auth.uid();
    END IF;
    IF obj_description(to_regprocedure('auth.role()'), 'pg_proc') = '{STAND_IN}' THEN
        DROP FUNCTION auth.role();
    END IF;
    IF obj_description(to_regprocedure('auth.jwt()'), 'pg_proc') = '{STAND_IN}' THEN
        DROP FUNCTION auth.jwt();
    END IF;
    IF obj_description(to_regnamespace('auth'), 'pg_namespace') = '{STAND_IN}' THEN
        BEGIN
            DROP SCHEMA auth;
        EXCEPTION
            -- Someone put their own objects in it since: keep it.
            WHEN dependent_objects_still_exist THEN NULL;
        END;
    END IF;
END
$dualdb$
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(_ROLE.format(name="anon", options="NOLOGIN NOINHERIT"))
    op.execute(_ROLE.format(name="authenticated", options="NOLOGIN NOINHERIT"))
    op.execute(_ROLE.format(name="service_role", options="NOLOGIN NOINHERIT BYPASSRLS"))
    op.execute(_AUTH_STAND_IN)

    # Supabase grants these by default; a bare Postgres needs them for the policies to matter.
    op.execute("GRANT USAGE ON SCHEMA public TO authenticated, service_role")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLES} TO authenticated, service_role")
    op.execute(f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON {TABLES} FROM anon, authenticated")
    for table, rule in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {_policy_name(table)} ON {table} AS PERMISSIVE FOR ALL "
            f"TO authenticated USING ({rule}) WITH CHECK ({rule})"
        )

    # The ledger: only the migrating role (its owner) reads and writes it.
    op.execute(f"REVOKE ALL ON {VERSION_TABLE} FROM PUBLIC, anon, authenticated")
    op.execute(
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {VERSION_TABLE} "
        "FROM service_role"
    )
    op.execute(f"ALTER TABLE {VERSION_TABLE} ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE {VERSION_TABLE} DISABLE ROW LEVEL SECURITY")
    for table in reversed(POLICIES):
        op.execute(f"DROP POLICY IF EXISTS {_policy_name(table)} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    # Fail closed: without RLS, tables reachable by the API roles would expose every row
    # (Supabase's default grants give anon and authenticated everything), so they lose access.
    # The version table stays closed too.
    op.execute(f"REVOKE ALL ON {TABLES} FROM anon, authenticated")
    op.execute(_DROP_AUTH_STAND_IN)
