"""Throwaway databases to benchmark: a temp SQLite file, a Postgres database created and dropped.

Both are brought to the migration head by dualdb's own migrations, so dualdb and the raw
driver run on exactly the schema users get.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from dualdb.config import resolve
from dualdb.migrations import upgrade

#: Where Postgres is looked for when neither ``--pg-url`` nor the env variable says.
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The same variable the test suite reads: an admin URL on a server we may create databases on.
PG_URL_ENV = "DUALDB_TEST_POSTGRES_URL"


def pg_admin_url(explicit: str | None = None) -> str:
    """The admin URL: ``explicit``, else ``$DUALDB_TEST_POSTGRES_URL``, else 127.0.0.1:5432."""
    return explicit or os.environ.get(PG_URL_ENV) or DEFAULT_PG_ADMIN_URL


def migrate(url: str) -> None:
    """Apply dualdb's migrations up to head."""
    upgrade(resolve(url))


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``, as dualdb resolves ``url``."""
    return resolve(url).backend


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///…`` URL."""
    path = resolve(url).url.database
    if not path:
        raise ValueError(f"not a SQLite file URL: {url}")
    return path


def psycopg_dsn(url: str) -> str:
    """The libpq connection string psycopg takes for a ``postgresql[+driver]://…`` URL."""
    parsed = resolve(url).url
    base = parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    params = {k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()}
    return make_conninfo(base, **params) if params else base


def without_commit_flush(url: str) -> str:
    """``url`` with ``synchronous_commit=off`` for its sessions (Postgres; SQLite unchanged).

    For the claim-cost tables only: a commit's WAL flush costs the same whatever the table
    holds, and on a shared disk its noise would hide what does change with the table.
    """
    if backend_of(url) == "sqlite":
        return url
    return (
        make_url(url)
        .update_query_dict({"options": "-c synchronous_commit=off"})
        .render_as_string(hide_password=False)
    )


@contextmanager
def sqlite_database() -> Iterator[str]:
    """A migrated SQLite file in a temp folder (removed afterwards); yields its URL."""
    with tempfile.TemporaryDirectory(prefix="dualdb-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        migrate(url)
        yield url


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A migrated throwaway Postgres database (dropped afterwards); yields its URL."""
    name = f"dualdb_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
