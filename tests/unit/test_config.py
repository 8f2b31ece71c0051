"""Configuration: backend selection, URL forms, and secrets never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dualdb.config import Settings, resolve
from dualdb.errors import ConfigError


def settings(**env: str) -> Settings:
    return Settings.model_validate(env)


def test_default_is_local_sqlite_file() -> None:
    target = resolve(settings=settings())
    assert target.backend == "sqlite"
    assert Path(target.url.database or "") == Path("./local.db")


def test_sqlite_path_setting_is_used() -> None:
    target = resolve(settings=settings(DUALDB_SQLITE_PATH="/tmp/other.db"))
    assert target.url.database == "/tmp/other.db"


def test_web_uses_supabase_db_url_with_psycopg() -> None:
    target = resolve(
        settings=settings(
            APP_ENV="web", SUPABASE_DB_URL="postgres://u:pw@db.example.com:5432/postgres"
        )
    )
    assert target.backend == "postgresql"
    assert target.url.drivername == "postgresql+psycopg"
    assert target.url.host == "db.example.com"


def test_database_url_is_an_alias() -> None:
    target = resolve(settings=settings(APP_ENV="web", DATABASE_URL="postgresql://u@h/db"))
    assert target.url.database == "db"


@pytest.mark.parametrize("value", ["prod", "WEBB", ""])
def test_unknown_app_env_is_a_clear_error(value: str) -> None:
    with pytest.raises(ConfigError, match="APP_ENV must be 'local' or 'web'"):
        resolve(settings=settings(APP_ENV=value))


def test_web_without_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="SUPABASE_DB_URL"):
        resolve(settings=settings(APP_ENV="web"))


@pytest.mark.parametrize(
    ("url", "backend", "database"),
    [
        ("sqlite:///rel/path.db", "sqlite", "rel/path.db"),
        ("sqlite:////abs/path.db", "sqlite", "/abs/path.db"),
        ("plain/file.db", "sqlite", "plain/file.db"),
        ("postgresql://u:p@localhost:5432/app", "postgresql", "app"),
        ("postgres://u:p@localhost/app", "postgresql", "app"),
        ("postgresql+psycopg://u@localhost/app", "postgresql", "app"),
    ],
)
def test_url_forms(url: str, backend: str, database: str) -> None:
    target = resolve(url, settings=settings())
    assert target.backend == backend
    assert target.url.database == database


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql+asyncpg://u@h/db",
        "sqlite://",
        "   ",
        "http://x",
        "postgresql://u:pw@host:abc/db",
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        resolve(url, settings=settings())


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql+asyncpg://u@h/db",
            "unsupported driver 'postgresql+asyncpg': use postgresql://",
        ),
        ("sqlite+aiosqlite:///x.db", "unsupported driver 'sqlite+aiosqlite': use sqlite://"),
        ("MySQL://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("sqlite://", "a SQLite URL needs a file path"),
    ],
)
def test_a_refused_url_says_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        resolve(url, settings=settings())


def test_explicit_url_overrides_environment() -> None:
    target = resolve(
        "sqlite:///x.db", settings=settings(APP_ENV="web", SUPABASE_DB_URL="postgresql://h/d")
    )
    assert target.backend == "sqlite"


@pytest.mark.parametrize(
    ("url", "pooler"),
    [
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:5432/postgres", False),
        ("postgresql://u:p@db.x.supabase.co:5432/postgres?pgbouncer=true", True),
    ],
)
def test_transaction_pooler_detection(url: str, pooler: bool) -> None:
    target = resolve(url, settings=settings())
    assert target.transaction_pooler is pooler
    assert "pgbouncer" not in target.url.query


def test_explicit_pooler_setting_wins() -> None:
    target = resolve("postgresql://u@h:5432/d", settings=settings(DUALDB_TRANSACTION_POOLER="true"))
    assert target.transaction_pooler is True


def test_secrets_never_shown() -> None:
    s = settings(
        APP_ENV="web",
        SUPABASE_DB_URL="postgresql://postgres:hunter2secret@db.x.supabase.co:5432/postgres",
        SUPABASE_JWT_SECRET="jwt-secret-value",
        SUPABASE_ANON_KEY="anon-key-value",
        SUPABASE_SERVICE_ROLE_KEY="service-key-value",
    )
    target = resolve(settings=s)
    for shown in (repr(s), str(s), repr(target), str(target), target.redacted):
        for secret in ("hunter2secret", "jwt-secret-value", "anon-key-value", "service-key-value"):
            assert secret not in shown
    assert target.redacted == "postgresql://postgres:***@db.x.supabase.co:5432/postgres"


def test_dotenv_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("DUALDB_SQLITE_PATH", raising=False)
    (tmp_path / ".env").write_text("DUALDB_SQLITE_PATH=from-env-file.db\nAPP_ENV=local\n")
    (tmp_path / ".env.local").write_text("DUALDB_SQLITE_PATH=from-env-local.db\n")
    assert resolve().url.database == "from-env-local.db"


@pytest.mark.parametrize("key", ["password", "sslpassword", "PASSWORD"])
def test_secrets_in_the_query_string_are_hidden_too(key: str) -> None:
    """libpq accepts ``?password=…``: redaction must not stop at the userinfo part."""
    target = resolve(
        f"postgresql://u@db.x.supabase.co:5432/postgres?{key}=hunter2secret&sslmode=require"
    )
    assert target.url.query[key] == "hunter2secret"  # still handed to the driver
    for shown in (target.redacted, repr(target), str(target)):
        assert "hunter2secret" not in shown
        assert f"{key}=***" in shown and "sslmode=require" in shown
