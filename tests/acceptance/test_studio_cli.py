"""``dualdb studio`` run as a user would: the real console script in a subprocess.

Each server is started on a free port (``--port 0``: the command prints the URL it got) and
always stopped — with Ctrl+C (SIGINT), as a user would, and killed if that fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import dualdb
from dualdb.errors import ConfigError
from dualdb.seed import PROJECT_NAME, seed
from dualdb.studio import check_address

_BESIDE = Path(sys.executable).parent / "dualdb"
DUALDB = str(_BESIDE) if _BESIDE.exists() else shutil.which("dualdb")
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20


def _env() -> dict[str, str]:
    ours = ("APP_ENV", "SUPABASE", "DATABASE_URL", "DUALDB_SQLITE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert DUALDB is not None, "the dualdb console script is not installed (pip install -e .)"
    return subprocess.run(
        [DUALDB, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


@contextmanager
def studio(*args: str, cwd: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``dualdb studio ARGS --port 0``; yield its URL and process; stop it with Ctrl+C."""
    assert DUALDB is not None
    # As a context manager Popen closes the pipes and reaps the process on the way out.
    with subprocess.Popen(
        [DUALDB, "studio", *args, "--port", "0"],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()  # "dualdb studio: http://127.0.0.1:PORT/  (…)"
            if not first.startswith("dualdb studio: http://127.0.0.1:"):
                proc.kill()
                pytest.fail(f"the studio did not start: {first}{proc.stderr.read()}")
            yield first.split()[2], proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=START_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture
def seeded_url(migrated_url: str) -> str:
    with dualdb.connect(migrated_url) as db:
        seed(db, allow_remote=True)
    return migrated_url


def test_studio_serves_until_ctrl_c_read_only_by_default_on_postgres(
    seeded_url: str, backend: str, tmp_path: Path
) -> None:
    with studio("--url", seeded_url, cwd=tmp_path) as (url, proc):
        index = get(url)  # "/" redirects to the studio's index
        expected = "read-only" if backend == "postgresql" else "read-write"
        assert f'data-testid="mode">{expected}<' in index
        assert f'data-testid="backend">{backend}<' in index
        assert PROJECT_NAME in get(f"{url}studio/projects/list")
        # Ctrl+C: a clean stop, exit status 0, no traceback.
        proc.send_signal(signal.SIGINT)
        out, errors = proc.communicate(timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, errors
    assert "Studio stopped." in out
    assert "Traceback" not in errors


def test_the_flags_override_the_default_mode(seeded_url: str, backend: str, tmp_path: Path) -> None:
    # The opposite of each backend's default: Postgres needs --read-write to be edited.
    flag, mode = (
        ("--read-write", "read-write") if backend == "postgresql" else ("--read-only", "read-only")
    )
    with studio("--url", seeded_url, flag, cwd=tmp_path) as (url, _proc):
        assert f'data-testid="mode">{mode}<' in get(url)
        assert ("New project" in get(f"{url}studio/projects/list")) == (mode == "read-write")


def test_app_env_web_is_read_only_by_default(seeded_url: str, backend: str, tmp_path: Path) -> None:
    # APP_ENV=web means "the hosted side", even with an explicit --url.
    env_file = tmp_path / ".env"
    env_file.write_text("APP_ENV=web\nSUPABASE_DB_URL=postgresql://unused@127.0.0.1/unused\n")
    with studio("--url", seeded_url, cwd=tmp_path) as (url, _proc):
        assert 'data-testid="mode">read-only<' in get(url)


def test_a_non_loopback_host_is_refused_without_the_flag(migrated_url: str, tmp_path: Path) -> None:
    result = run("studio", "--url", migrated_url, "--host", "0.0.0.0", cwd=tmp_path)
    assert_one_line_error(result, "refusing to listen on 0.0.0.0", "--allow-remote-host")


def test_which_addresses_count_as_this_machine_only() -> None:
    # No database involved: the address check runs before anything is opened.
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_address(host, 4983, allow_remote_host=False)
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        with pytest.raises(ConfigError, match="--allow-remote-host"):
            check_address(host, 4983, allow_remote_host=False)
        check_address(host, 4983, allow_remote_host=True)


def test_an_unmigrated_database_is_one_line(db_url: str, tmp_path: Path) -> None:
    assert_one_line_error(run("studio", "--url", db_url, cwd=tmp_path), "dualdb migrate")


def test_bad_input_is_one_line(migrated_url: str, tmp_path: Path) -> None:
    # A port out of range.
    result = run("studio", "--url", migrated_url, "--port", "70000", cwd=tmp_path)
    assert_one_line_error(result, "--port must be between 0 and 65535")
    # A port already taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run("studio", "--url", migrated_url, "--port", port, cwd=tmp_path)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    # An unreachable database.
    result = run("studio", "--url", "postgresql://postgres@127.0.0.1:1/nope", cwd=tmp_path)
    assert_one_line_error(result, "cannot use the database")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_screenshot_script_photographs_the_studio(seeded_url: str, tmp_path: Path) -> None:
    if not Path("/usr/bin/chromium").exists() and not os.environ.get("CI"):
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium")
    script = ROOT / "scripts" / "studio_screenshot.py"
    result = subprocess.run(
        [sys.executable, str(script), "--url", seeded_url, "--out-dir", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name, min_width in (("studio.png", 2000), ("studio-graph.png", 1300)):
        width, height = _png_size(tmp_path / name)
        assert width >= min_width and height >= 300
        assert f"wrote {tmp_path / name}" in result.stdout
