"""The DAL's user scope on the Supabase stand-in: RLS does the filtering, the DAL agrees."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import dualdb
from dualdb import PermissionDenied

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
