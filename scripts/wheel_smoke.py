#!/usr/bin/env python3
"""`make wheel-smoke`: dualdb as published, not as checked out.

Builds the sdist and the wheel (``python -m build``: the wheel is built from the sdist), installs
the wheel into a clean venv WITHOUT extras, and runs every CLI command once against a SQLite
file in a temp folder — the studio included, until it answers HTTP 200.  Each step prints one
line of what it checked; the first failure stops the run with exit status 1.

Run it with the Python to test (``make wheel-smoke`` uses ``$(PYTHON)``); stdlib only.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Dev tools that must not come with a plain ``pip install dualdb``.
DEV_ONLY = {"pytest", "hypothesis", "mypy", "ruff", "playwright", "types-wtforms"}
STUDIO_TRIES = 150  # each try waits up to 0.2 s for the process: about 30 s in all
STOP_TIMEOUT_S = 20


class SmokeFailure(Exception):
    """A check failed: the message says which and shows the command's output."""


def say(message: str) -> None:
    print(f"wheel-smoke: {message}", flush=True)


def run(
    cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise SmokeFailure(
            f"`{' '.join(cmd)}` exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


def expect(condition: bool, message: str, output: str = "") -> None:
    if not condition:
        raise SmokeFailure(f"{message}\n{output}".rstrip())


def source_version() -> str:
    tree = ast.parse((ROOT / "src" / "dualdb" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise SmokeFailure("src/dualdb/__init__.py has no __version__")


def build(tmp: Path) -> Path:
    tools = tmp / "build-venv"
    run([sys.executable, "-m", "venv", str(tools)], cwd=tmp)
    run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", "build"], cwd=tmp)
    dist = tmp / "dist"
    run([str(tools / "bin" / "python"), "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    expect(len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {dist}")
    wheel, version = wheels[0], source_version()
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = f"dualdb-{version}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
    needed = [
        f"{info}/licenses/LICENSE",
        "dualdb/py.typed",
        "dualdb/migrations/script.py.mako",
        "dualdb/migrations/env.py",
    ]
    missing = [n for n in needed if n not in names]
    expect(not missing, f"{wheel.name} lacks {missing}")
    expect(f"\nVersion: {version}\n" in metadata, f"METADATA does not say Version: {version}")
    expect("\nLicense-Expression: MIT\n" in metadata, "METADATA lacks License-Expression: MIT")
    migrations = [n for n in names if n.startswith("dualdb/migrations/versions/0")]
    templates = [n for n in names if n.startswith("dualdb/studio/templates/")]
    expect(bool(migrations) and bool(templates), f"{wheel.name} lacks migrations or templates")
    say(
        f"built {sdists[0].name} and {wheel.name} (python -m build, wheel from the sdist): "
        f"Version {version}, License-Expression MIT, LICENSE, {len(migrations)} migrations, "
        f"{len(templates)} studio templates"
    )
    return wheel


def install(tmp: Path, wheel: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp)
    listed = run([str(python), "-m", "pip", "list", "--format=json"], cwd=tmp).stdout
    installed = {d["name"].lower() for d in json.loads(listed)}
    expect(not installed & DEV_ONLY, f"dev tools came with the wheel: {installed & DEV_ONLY}")
    where = run(
        [str(python), "-c", "import dualdb, pathlib; print(pathlib.Path(dualdb.__file__).parent)"],
        cwd=tmp,
    ).stdout.strip()
    package = Path(where)
    expect(venv in package.parents, f"dualdb was imported from {package}, not from the venv")
    say(
        f"installed {wheel.name} into a clean venv without extras: {len(installed)} "
        f"distributions, no dev tools; dualdb imports from {package.relative_to(venv)}"
    )
    return venv, package


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    """Status and body of GET ``url``; an HTTP error status is a failure (not "not up yet")."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        raise SmokeFailure(f"GET {url} answered {err.code}") from None


def smoke(tmp: Path, venv: Path, package: Path) -> None:
    work = tmp / "work"
    work.mkdir()
    db_file = work / "local.db"  # the default: ./local.db in the working directory
    ours = ("APP_ENV", "SUPABASE", "DATABASE_URL", "DUALDB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(PYTHONUNBUFFERED="1", DUALDB_DEMO_SECONDS="0")
    dualdb = str(venv / "bin" / "dualdb")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run([dualdb, *args], cwd=work, env=env)

    def status() -> dict[str, object]:
        result = cli("status", "--json")
        try:
            parsed: dict[str, object] = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise SmokeFailure(f"status --json is not JSON:\n{result.stdout}") from None
        return parsed

    def query(sql: str) -> list[tuple[object, ...]]:
        # Closed at once: sqlite3's own context manager only commits, and a connection left
        # open here would keep the WAL files of the commands run next (their listing is checked).
        with contextlib.closing(sqlite3.connect(db_file)) as conn:
            return list(conn.execute(sql))

    out = cli("migrate").stdout
    st = status()
    expect(db_file.exists() and st["current"] == st["head"], "migrate did not reach head", out)
    head = str(st["head"])
    say(f"migrate: created ./local.db at head {head}")

    out = cli("status").stdout
    expect("sqlite" in out and head in out, "status does not show the backend and head", out)
    say(f"status: shows backend sqlite and revision {head}")

    expect(
        st["backend"] == "sqlite" and st["pending"] == [] and st["up_to_date"] is True,
        "status --json is not up to date on sqlite",
        json.dumps(st),
    )
    say(f"status --json: backend sqlite, current = head = {head}, nothing pending")

    out = cli("check").stdout.strip()
    say(f"check: exit 0, the live schema matches the models ({out!r})")

    out = cli("sql").stdout
    expect("CREATE TABLE tasks" in out and "alembic_version" in out, "sql lacks the DDL", out)
    say(f"sql: rendered the Postgres SQL offline ({out.count('CREATE TABLE')} CREATE TABLE)")

    cli("seed")
    projects = query("SELECT name FROM projects")
    tasks = query("SELECT count(*) FROM tasks")[0][0]
    expect(("My Seeded Project",) in projects and tasks != 0, f"seed gave {projects}, {tasks}")
    say(f"seed: 'My Seeded Project' and {tasks} tasks")

    cli("worker", "--drain")
    statuses = query("SELECT status, count(*) FROM tasks GROUP BY status")
    expect(statuses == [("Complete", tasks)], f"after worker --drain the tasks are {statuses}")
    say(f"worker --drain (DUALDB_DEMO_SECONDS=0): all {tasks} tasks Complete")

    cli("downgrade", "base")
    st = status()
    tables = query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'tasks'")
    expect(st["current"] is None and not tables, f"downgrade base left {st}, {tables}")
    say("downgrade base: no revision, no tasks table")

    cli("migrate")
    st = status()
    expect(st["current"] == head, f"migrate after downgrade reached {st['current']}")
    say(f"migrate (again): back at head {head}")

    package_before, work_before = snapshot(package), snapshot(work)
    out = cli("generate", "-m", "x").stdout
    expect("No changes" in out, "generate on an up-to-date database wrote something", out)
    changed = sorted(set(snapshot(package).items()) ^ set(package_before.items()))
    expect(not changed, "generate touched the installed package", "\n".join(map(str, changed)))
    expect(snapshot(work).keys() == work_before.keys(), "generate wrote into the working folder")
    say("generate -m x: 'No changes', nothing written into site-packages or the working folder")

    cli("seed")  # downgrade base emptied the database: data for the studio to show
    expect(("My Seeded Project",) in query("SELECT name FROM projects"), "re-seed failed")
    say("seed (again): data for the studio")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp / "studio.log"
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [dualdb, "studio", "--port", str(port)], cwd=work, env=env, stdout=sink, stderr=sink
        ) as proc,
    ):
        try:
            index = ""
            for _ in range(STUDIO_TRIES):
                try:
                    code, index = get(url)  # "/" redirects to the studio's index
                    break
                except (urllib.error.URLError, ConnectionError):
                    # Between tries: wait for the process (a crash ends the wait at once).
                    try:
                        proc.wait(timeout=0.2)
                    except subprocess.TimeoutExpired:
                        continue
                    output = log.read_text()
                    raise SmokeFailure(f"the studio exited {proc.returncode}:\n{output}") from None
            else:
                raise SmokeFailure(f"the studio did not answer {url} after {STUDIO_TRIES} tries")
            expect(
                code == 200 and 'data-testid="backend">sqlite<' in index,
                f"GET {url}: {code}, not the studio's index on sqlite",
            )
            code, projects_page = get(f"{url}studio/projects/list")
            expect(
                code == 200 and "My Seeded Project" in projects_page,
                f"GET {url}studio/projects/list: {code}, without the seeded project",
            )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl+C, as a user stops it
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise SmokeFailure("the studio ignored Ctrl+C; killed it") from None
    expect(proc.returncode == 0, f"the studio exited {proc.returncode} on Ctrl+C", log.read_text())
    say(
        f"studio --port {port}: GET / and /studio/projects/list answered 200 "
        "(the seeded project listed); stopped with Ctrl+C, exit 0"
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dualdb-wheel-smoke-") as name:
        tmp = Path(name)
        try:
            wheel = build(tmp)
            venv, package = install(tmp, wheel)
            smoke(tmp, venv, package)
        except (SmokeFailure, subprocess.TimeoutExpired) as err:
            print(f"wheel-smoke: FAILED: {err}", file=sys.stderr, flush=True)
            return 1
    say("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
