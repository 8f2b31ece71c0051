"""Fixtures shared by the integration tests (the backend fixtures live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dualdb
from tests.conftest import PgServer, _require_pg
from tests.integration.dal_support import World, build_world
from tests.integration.pgbouncer_support import (
    INSTALL_HINT,
    PgBouncer,
    find_pgbouncer,
    missing,
    running_pgbouncer,
)


@pytest.fixture
def db(migrated_url: str) -> Iterator[dualdb.Database]:
    """A connected database at the migration head (SQLite file or Postgres)."""
    with dualdb.connect(migrated_url) as database:
        yield database


@pytest.fixture
def world(db: dualdb.Database) -> World:
    """Two users with a project each, a shot, tasks and a generation."""
    return build_world(db)


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """A real PgBouncer in ``pool_mode = transaction`` (Supabase's transaction pooler) in
    front of the test PostgreSQL, on a free 127.0.0.1 port, with ``default_pool_size = 2``:
    clients beyond two share server connections.  ``url_for(dbname)`` is the URL to give
    dualdb.  Skipped when ``pgbouncer`` is not installed (``apt-get install pgbouncer``),
    failed instead under CI; see ``pgbouncer_support.py``."""
    _require_pg(pg_server)
    assert pg_server.admin_url is not None
    binary = find_pgbouncer()
    if binary is None:
        missing(f"pgbouncer is not installed ({INSTALL_HINT})")
    with running_pgbouncer(binary, pg_server.admin_url) as bouncer:
        yield bouncer
