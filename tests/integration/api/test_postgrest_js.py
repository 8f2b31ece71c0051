"""Supabase's own client library against the real PostgREST: ``tests/api/client.mjs``.

The script, run with ``node``, reads ``tasks`` as user A with ``@supabase/postgrest-js`` and
tries to queue a task in B's project (refused by Row Level Security) and in A's own (allowed);
then it runs the queue's verbs with ``rpc()`` — enqueue with a dependency, release, cancel with
its cascade — and is refused running a task or enqueueing into B's project.
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
        "OWN_TASK_ID": str(a.task),
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

    held = out["held"]
    assert held["status"] == 200 and held["error"] is None, held
    assert (held["rows"]["status"], held["rows"]["dependant_on"]) == ("Pending", [str(a.task)])
    assert held["rows"]["unmet_dependencies"] == 1 and held["rows"]["worker_id"] is None
    assert out["released"]["status"] == 200 and out["released"]["rows"]["status"] == "Queued"
    again = out["releasedAgain"]
    assert again["error"] == {
        "code": "23000",
        "message": "conflict: the task is Queued, not Pending",
    }
    assert out["rpcIntoOther"]["status"] == 403, out["rpcIntoOther"]
    assert out["rpcIntoOther"]["error"]["code"] == "42501"
    assert out["runIt"]["status"] == 403, out["runIt"]
    cancelled = out["cancelled"]
    assert cancelled["status"] == 200, cancelled
    ids = [row["id"] for row in cancelled["rows"]]
    assert ids[0] == str(a.task) and set(ids) == {
        str(a.task),
        str(a.waiting_task),
        held["rows"]["id"],
    }
    assert {row["status"] for row in cancelled["rows"]} == {"Cancelled"}
    assert cancelled["rows"][0]["error"] == "not needed"
