"""The one parametrised database fixture every integration test uses.

``db_url`` yields the URL of a fresh, empty database on each backend: a SQLite file in a temp
folder, and a throwaway PostgreSQL database (created here, dropped afterwards).  ``migrated_url``
yields one already at the migration head (cloned from a template, so it is cheap).

PostgreSQL is found, in order: ``DUALDB_TEST_POSTGRES_URL``; a server on 127.0.0.1:5432;
a throwaway cluster started from local binaries (``initdb``/``pg_ctl``, as the ``postgres`` user
when running as root).  With none of those, the Postgres half is skipped with one loud summary
line — except under CI (``CI`` set), where the run fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from dualdb.config import resolve
from dualdb.migrations import upgrade

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

_DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
_CI = bool(os.environ.get("CI"))


# No per-example deadline: CI shares two cores, and a slow example is not a wrong one.
hypothesis.settings.register_profile("dualdb", deadline=None, print_blob=True)
hypothesis.settings.load_profile("dualdb")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: runs against a real PostgreSQL")


_PG_FIXTURES = frozenset({"db_url", "migrated_url", "pg_server"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every run on PostgreSQL ``postgres`` (also a bare ``"postgresql"`` backend given
    with ``indirect=True``), and keep only the right backend's run of a ``sqlite_only`` /
    ``postgres_only`` test."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "postgresql" and _PG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        wrong = (item.get_closest_marker("sqlite_only") and backend == "postgresql") or (
            item.get_closest_marker("postgres_only") and backend == "sqlite"
        )
        (drop if wrong else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@dataclass
class PgServer:
    """An admin connection string to a PostgreSQL server tests may create databases on."""

    admin_url: str | None
    problem: str | None = None
    cluster_dir: Path | None = None

    def url_for(self, dbname: str) -> str:
        """The URL of database ``dbname`` on this server."""
        assert self.admin_url is not None
        return make_url(self.admin_url).set(database=dbname).render_as_string(hide_password=False)


def _can_connect(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as err:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _initdb() -> str | None:
    """The newest local ``initdb`` (Debian keeps it off PATH, under /usr/lib/postgresql)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return str(found[-1]) if found else shutil.which("initdb")


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _start_cluster() -> tuple[str | None, str, Path | None]:
    initdb = _initdb()
    if initdb is None:
        return None, "no PostgreSQL server reachable and no initdb binary found", None
    bindir = Path(initdb).parent
    base = Path(tempfile.mkdtemp(prefix="dualdb-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix = _as_postgres()
    if prefix:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        base.chmod(0o755)
    with socket.socket() as probe:  # a free port for the throwaway server
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(base / "log"),
                "-o",
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError) as err:
        shutil.rmtree(base, ignore_errors=True)
        return None, f"could not start a throwaway PostgreSQL cluster: {err}", None
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", "", base


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    explicit = os.environ.get("DUALDB_TEST_POSTGRES_URL")
    if explicit:
        problem = _can_connect(explicit)
        yield PgServer(
            None if problem else explicit, problem and f"DUALDB_TEST_POSTGRES_URL: {problem}"
        )
        return
    if _can_connect(_DEFAULT_PG) is None:
        yield PgServer(_DEFAULT_PG)
        return
    url, problem, base = _start_cluster()
    try:
        yield PgServer(url, problem or None, base)
    finally:
        if base is not None:
            _stop_cluster(base)


def _stop_cluster(base: Path) -> None:
    pg_ctl = Path(_initdb() or "pg_ctl").parent / "pg_ctl"
    subprocess.run(
        [*_as_postgres(), str(pg_ctl), "-D", str(base / "data"), "-m", "fast", "stop"],
        capture_output=True,
        check=False,
    )
    shutil.rmtree(base, ignore_errors=True)


_PG_STATE: dict[str, object] = {"ran": 0, "skipped_reason": None, "selected": 0, "deselected": 0}


def _require_pg(server: PgServer) -> None:
    if server.admin_url is None:
        reason = server.problem or "PostgreSQL unavailable"
        _PG_STATE["skipped_reason"] = reason
        if _CI:
            pytest.fail(f"CI requires PostgreSQL, but: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL half skipped: {reason}")


def _create_database(server: PgServer, template: str | None = None) -> str:
    assert server.admin_url is not None
    name = f"dualdb_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _drop_database(server: PgServer, name: str) -> None:
    assert server.admin_url is not None
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[str | None]:
    """A Postgres database at the migration head, cloned for each test that needs one."""
    if pg_server.admin_url is None:
        yield None
        return
    name = _create_database(pg_server)
    upgrade(resolve(pg_server.url_for(name)))
    try:
        yield name
    finally:
        _drop_database(pg_server, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the migration head, copied for each test that needs one."""
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    upgrade(resolve(str(path)))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``"sqlite"`` or ``"postgresql"``."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    pg_server: PgServer = request.getfixturevalue("pg_server")  # only looked for when needed
    _require_pg(pg_server)
    name = _create_database(pg_server)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop_database(pg_server, name)


@pytest.fixture
def migrated_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh database at the migration head on the backend under test."""
    if backend == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    pg_server: PgServer = request.getfixturevalue("pg_server")  # only looked for when needed
    _require_pg(pg_server)
    pg_template: str | None = request.getfixturevalue("pg_template")
    assert pg_template is not None
    name = _create_database(pg_server, template=pg_template)
    try:
        yield pg_server.url_for(name)
    finally:
        _drop_database(pg_server, name)


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_finish(session: pytest.Session) -> None:
    _PG_STATE["selected"] = sum(1 for item in session.items if "postgres" in item.keywords)


def pytest_deselected(items: list[pytest.Item]) -> None:
    deselected = sum(1 for item in items if "postgres" in item.keywords)
    _PG_STATE["deselected"] = int(str(_PG_STATE["deselected"])) + deselected


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _PG_STATE["ran"] = int(str(_PG_STATE["ran"])) + 1


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    reason = _PG_STATE["skipped_reason"]
    ran = _PG_STATE["ran"]
    deselected = _PG_STATE["deselected"]
    if not reason and not _PG_STATE["selected"] and deselected:
        terminalreporter.write_line(
            f"PostgreSQL half: deselected on purpose (-m {config.option.markexpr!r}): "
            f"{deselected} PostgreSQL tests not run, only SQLite was tested"
        )
    elif reason:
        terminalreporter.write_line(
            f"!!! POSTGRES HALF SKIPPED: {reason} — only SQLite was tested !!!", red=True, bold=True
        )
    else:
        terminalreporter.write_line(
            f"PostgreSQL half: {ran} tests passed against a real PostgreSQL"
        )
