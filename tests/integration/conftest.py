"""Fixtures shared by the integration tests (the backend fixtures live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dualdb
from tests.integration.dal_support import World, build_world


@pytest.fixture
def db(migrated_url: str) -> Iterator[dualdb.Database]:
    """A connected database at the migration head (SQLite file or Postgres)."""
    with dualdb.connect(migrated_url) as database:
        yield database


@pytest.fixture
def world(db: dualdb.Database) -> World:
    """Two users with a project each, a shot, tasks and a generation."""
    return build_world(db)
