"""Web-mode secrets never appear in the output of the console script (Postgres only: web mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.acceptance.test_cli import dualdb

SECRETS = {
    "SUPABASE_JWT_SECRET": "jwt-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "SUPABASE_ANON_KEY": "anon-key-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "SUPABASE_SERVICE_ROLE_KEY": "service-key-f0e1d2c3b4a5968778695a4b3c2d1e0f",
}
PASSWORD = "db-password-5e6f7a8b9c0d"


@pytest.mark.postgres_only
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["check"], ["migrate"]])
def test_web_mode_output_shows_no_secret(
    migrated_url: str, tmp_path: Path, args: list[str]
) -> None:
    # The test server trusts local connections, so a password in the URL is carried, not checked.
    url = make_url(migrated_url).set(password=PASSWORD).render_as_string(hide_password=False)
    env = {"APP_ENV": "web", "SUPABASE_DB_URL": url, **SECRETS}
    result = dualdb(*args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert "postgresql://postgres:***@127.0.0.1" in shown or args == ["check"]
    for secret in (PASSWORD, *SECRETS.values()):
        assert secret not in shown
