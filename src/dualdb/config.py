"""Settings and database-URL resolution.

The environment (and ``.env`` / ``.env.local`` in the working directory) chooses the backend:
``APP_ENV=local`` (default) is the SQLite file ``DUALDB_SQLITE_PATH``; ``APP_ENV=web`` is the
Supabase Postgres at ``SUPABASE_DB_URL`` (alias ``DATABASE_URL``).  An explicit URL overrides both.
Secrets are held as :class:`pydantic.SecretStr` and URLs are only ever shown redacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dualdb.errors import ConfigError

Backend = Literal["sqlite", "postgresql"]

#: Transaction-pooler port of Supabase (PgBouncer/Supavisor in transaction mode).
TRANSACTION_POOLER_PORT = 6543
#: libpq connection parameters that are secrets when given in the URL's query string.
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


class Settings(BaseSettings):
    """Process settings, read from the environment, ``.env`` and ``.env.local``."""

    model_config = SettingsConfigDict(
        env_file=(".env", ".env.local"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    app_env: str = Field(default="local", validation_alias=AliasChoices("APP_ENV"))
    sqlite_path: str = Field(
        default="./local.db", validation_alias=AliasChoices("DUALDB_SQLITE_PATH")
    )
    supabase_db_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_DB_URL", "DATABASE_URL")
    )
    supabase_url: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_URL"))
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_JWT_SECRET")
    )
    supabase_anon_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_ANON_KEY")
    )
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY")
    )
    transaction_pooler: bool | None = Field(
        default=None, validation_alias=AliasChoices("DUALDB_TRANSACTION_POOLER")
    )


def load_settings() -> Settings:
    """Read :class:`Settings`, turning validation problems into one-line :class:`ConfigError`."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None


@dataclass(frozen=True)
class Target:
    """A resolved database: which backend, the SQLAlchemy URL, and how to show it."""

    backend: Backend
    url: URL = field(repr=False)
    transaction_pooler: bool = False
    app_env: str = "local"

    @property
    def redacted(self) -> str:
        """The URL as users write it (``sqlite:///…``, ``postgresql://…``), password hidden.

        libpq also takes secrets as query parameters (``?password=…``): those are hidden too.
        """
        url = self.url
        hidden = [k for k in url.query if k.lower() in _SECRET_QUERY_KEYS]
        if hidden:
            url = url.update_query_dict(dict.fromkeys(hidden, "***"))
        text = url.render_as_string(hide_password=True)
        text = text.replace("=%2A%2A%2A", "=***")
        return text.replace("sqlite+pysqlite://", "sqlite://", 1).replace(
            "postgresql+psycopg://", "postgresql://", 1
        )

    def __repr__(self) -> str:
        return f"Target(backend={self.backend!r}, url={self.redacted!r})"


def _parse(raw: str) -> URL:
    text = raw.strip()
    if not text:
        raise ConfigError("the database URL is empty")
    if "://" not in text:
        # A plain file path means a SQLite file.
        return URL.create("sqlite+pysqlite", database=text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("postgres", "postgresql"):
        text = "postgresql+psycopg://" + text.split("://", 1)[1]
    elif scheme.startswith("postgresql+") and scheme != "postgresql+psycopg":
        raise ConfigError(
            f"unsupported Postgres driver {scheme!r}: use postgresql:// (dualdb drives psycopg 3)"
        )
    elif scheme == "sqlite":
        text = "sqlite+pysqlite://" + text.split("://", 1)[1]
    elif scheme not in ("sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://…"
        )
    try:
        url = make_url(text)
        url.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError):
        raise ConfigError("the database URL could not be parsed") from None
    if url.get_backend_name() == "sqlite" and not url.database:
        raise ConfigError("a SQLite URL needs a file path: sqlite:///path/to/file.db")
    return url


def _is_transaction_pooler(url: URL, explicit: bool | None) -> bool:
    if explicit is not None:
        return explicit
    flag = str(url.query.get("pgbouncer", "")).lower()
    return url.port == TRANSACTION_POOLER_PORT or flag in ("1", "true", "yes")


def resolve(url: str | None = None, settings: Settings | None = None) -> Target:
    """Resolve the database to use: the explicit ``url`` if given, else the environment.

    Raises :class:`ConfigError` for an unknown ``APP_ENV``, ``web`` without a URL, or a URL that
    is not SQLite or Postgres.
    """
    s = settings if settings is not None else load_settings()
    env = s.app_env.strip().lower()
    if env not in ("local", "web"):
        raise ConfigError(f"APP_ENV must be 'local' or 'web', not {s.app_env!r}")
    if url is not None:
        parsed = _parse(url)
    elif env == "web":
        if s.supabase_db_url is None or not s.supabase_db_url.get_secret_value().strip():
            raise ConfigError(
                "APP_ENV=web needs SUPABASE_DB_URL (or DATABASE_URL): "
                "the Postgres connection string of your Supabase project"
            )
        parsed = _parse(s.supabase_db_url.get_secret_value())
    else:
        parsed = _parse(str(Path(s.sqlite_path)))
    backend: Backend = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
    pooler = backend == "postgresql" and _is_transaction_pooler(parsed, s.transaction_pooler)
    if "pgbouncer" in parsed.query:
        # Not a libpq option: psycopg would reject it.
        parsed = parsed.difference_update_query(["pgbouncer"])
    return Target(backend=backend, url=parsed, transaction_pooler=pooler, app_env=env)
