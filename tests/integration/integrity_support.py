"""Writing data that breaks the queue's rules, as a careless program could (not a test module).

The database refuses such writes, so :func:`rules_off` opens a plain driver connection that
gets around every rule for one transaction, then puts the rules back:

* SQLite: ``sqlite3`` with foreign keys off (the default of every other program) and the
  triggers of migration 0006 dropped; they are created again from the migration's own SQL
  (the module loaded with importlib) before the commit.
* Postgres: ``ALTER TABLE … DISABLE TRIGGER ALL`` on every table (ALL, not USER: the foreign
  keys' triggers too, to leave orphans behind), ``ENABLE TRIGGER ALL`` before the commit.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

from dualdb.migrations import MIGRATIONS_DIR
from dualdb.schema import TABLES
from dualdb.types import format_timestamp


def migration(stem: str) -> ModuleType:
    """A migration, loaded from its file ``versions/<stem>.py`` (migration modules are not
    importable by name)."""
    path = MIGRATIONS_DIR / "versions" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"dualdb_migration_{stem[:4]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def migration_0006() -> ModuleType:
    """Migration 0006, which made the queue's rules."""
    return migration("0006_queue_rules_in_the_database")


@dataclass(frozen=True)
class J:
    """A JSON value to write (``jsonb`` on Postgres, JSON text on SQLite)."""

    value: Any


@dataclass(frozen=True)
class Raw:
    """SQL text for each engine, for values only one engine's syntax can write."""

    sqlite: str
    postgresql: str


class Writer:
    """Plain SQL on one driver connection; ``%s`` placeholders on both engines."""

    def __init__(self, backend: str, conn: Any) -> None:
        self.backend = backend
        self.conn = conn

    def _value(self, value: Any) -> Any:
        if self.backend == "postgresql":
            return Jsonb(value.value) if isinstance(value, J) else value
        if isinstance(value, J):
            return json.dumps(value.value)
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, datetime):
            return format_timestamp(value)
        if isinstance(value, list):
            return json.dumps([str(v) for v in value])
        return value

    def run(self, sql: str | Raw, *params: Any) -> int:
        """Run ``sql``; the number of rows it changed."""
        text = sql if isinstance(sql, str) else getattr(sql, self.backend)
        values = [self._value(p) for p in params]
        if self.backend == "sqlite":
            return int(self.conn.execute(text.replace("%s", "?"), values).rowcount)
        return int(self.conn.execute(text, values).rowcount)


@contextmanager
def rules_off(url: str, *, check_constraints: bool = True) -> Iterator[Writer]:
    """A :class:`Writer` whose writes bypass triggers and foreign keys; committed on exit.

    ``check_constraints=False`` also lets SQLite write rows that break a CHECK constraint
    (``PRAGMA ignore_check_constraints``); on Postgres drop the constraint instead.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            if not check_constraints:
                conn.execute("PRAGMA ignore_check_constraints=ON")
            conn.execute("BEGIN IMMEDIATE")
            # The rules' triggers as the database has them now (0006's, as later migrations
            # left them), put back as they were.
            names = [name for _table, name in migration_0006().TRIGGERS]
            saved = [
                conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)
                ).fetchone()[0]
                for name in names
            ]
            for name in names:
                conn.execute(f"DROP TRIGGER {name}")
            yield Writer("sqlite", conn)
            for sql in saved:
                conn.execute(sql)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    pg_url = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(pg_url) as pg:
        for table in TABLES:
            pg.execute(f"ALTER TABLE {table.name} DISABLE TRIGGER ALL")
        yield Writer("postgresql", pg)
        for table in TABLES:
            pg.execute(f"ALTER TABLE {table.name} ENABLE TRIGGER ALL")
