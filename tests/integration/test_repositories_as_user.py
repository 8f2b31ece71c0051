"""The parity suite again, through ``db.for_user(token)``, on SQLite and Postgres.

The same test functions as ``test_repositories.py`` run here with ``db`` acting as the world's
user through a verified access token: on Postgres every transaction runs as ``authenticated``
under Row Level Security, on SQLite the DAL applies the same ownership rules.  Only tests that
stay inside that user's own data are repeated: the others touch a second user's rows on
purpose, or expect ``NotFound`` when *writing* to an id that does not exist — acting as a
user, such a write is ``PermissionDenied`` ("not yours, or does not exist"): under RLS a row
that does not exist and one that is someone else's look the same, and saying which would leak
it.  ``test_scoped_access.py`` covers both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import sqlalchemy as sa

import dualdb
from dualdb.auth import TokenVerifier
from tests.integration.dal_support import World, build_world
from tests.integration.test_repositories import (  # noqa: F401 - collected again here
    SPECS,
    Spec,
    test_add_move_remove_reorder_keep_positions_dense,
    test_bad_cursors_and_limits_are_invalid_input,
    test_create_get_find,
    test_create_many_is_one_batch_and_all_or_nothing,
    test_deleting_a_generation_closes_the_gap_on_its_shots,
    test_deleting_a_shot_removes_its_placements_only,
    test_enqueue_with_dependencies,
    test_generations_for_task,
    test_iter_streams_every_row_across_batches,
    test_list_orders_and_paginates_without_dupes_or_skips,
    test_random_placement_edits_match_a_model,
    test_session_commits_on_success,
    test_session_rolls_back_on_error,
    test_shot_generations_list_paginates_by_shot_then_position,
    test_task_delete_refused_while_unfinished_dependents,
    test_task_params_come_back_exactly_as_create_returned_them,
    test_tasks_list_filters,
)

SECRET = "parity-suite-jwt-secret-long-enough-for-hs256"

#: The repositories whose generic contract a user can exercise on their own rows.
USER_SPECS = [s for s in SPECS if s.name in ("shots", "generations", "tasks")]


class AsUser:
    """``db.for_user(token)`` plus the engine, which the tests use to watch and snapshot."""

    def __init__(self, database: dualdb.Database, scoped: dualdb.ScopedDatabase) -> None:
        self._scoped = scoped
        self.engine: sa.Engine = database.engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scoped, name)


@pytest.fixture
def database(migrated_url: str) -> Iterator[dualdb.Database]:
    with dualdb.connect(migrated_url, verifier=TokenVerifier(jwt_secret=SECRET)) as db:
        yield db


@pytest.fixture
def world(database: dualdb.Database) -> World:
    return build_world(database)


@pytest.fixture
def db(database: dualdb.Database, world: World) -> AsUser:
    token = jwt.encode(
        {
            "sub": str(world.user.id),
            "aud": "authenticated",
            "role": "authenticated",
            "exp": int(time.time()) + 3600,
        },
        SECRET,
        algorithm="HS256",
    )
    scoped = database.for_user(token)
    assert scoped.user_id == world.user.id
    return AsUser(database, scoped)


@pytest.fixture(params=USER_SPECS, ids=[s.name for s in USER_SPECS])
def spec(request: pytest.FixtureRequest) -> Spec:
    value: Spec = request.param
    return value
