"""Supabase's own client library against the real PostgREST: ``tests/api/client.mjs``.

The script, run with ``node``, reads ``tasks`` as user A with ``@supabase/postgrest-js`` and
tries to queue a task in B's project (refused by Row Level Security) and in A's own (allowed).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.api.conftest import API_DIR, Api, Owners

pytestmark = [pytest.mark.postgres_only, pytest.mark.postgres]

CLIENT = API_DIR / "client.mjs"


def test_postgrest_js_reads_own_tasks_and_is_refused_someone_elses_project(
    node: str, postgrest: Api, owners: Owners
) -> None:
    a, b = owners.a, owners.b
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "POSTGREST_URL": postgrest.url,
        "USER_TOKEN": postgrest.user_token(a.user),
        "OWN_PROJECT_ID": str(a.project),
        "OTHER_PROJECT_ID": str(b.project),
    }
    run = subprocess.run(
        [node, str(CLIENT)], cwd=API_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"node exited {run.returncode}:\n{run.stderr}"
    out = json.loads(run.stdout)

    assert out["read"]["status"] == 200 and out["read"]["error"] is None, out["read"]
    assert {row["id"] for row in out["read"]["rows"]} == {str(a.task), str(a.waiting_task)}

    assert out["intoOther"]["status"] == 403, out["intoOther"]
    assert out["intoOther"]["error"]["code"] == "42501"
    assert "row-level security" in out["intoOther"]["error"]["message"]

    assert out["intoOwn"]["status"] == 201, out["intoOwn"]
    [created] = out["intoOwn"]["rows"]
    assert created["project_id"] == str(a.project)
