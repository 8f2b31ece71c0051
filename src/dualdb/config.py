"""Settings and database-URL resolution.

The environment (and ``.env`` / ``.env.local`` in the working directory) chooses the backend:
``APP_ENV=local`` (default) is the SQLite file ``DUALDB_SQLITE_PATH``; ``APP_ENV=web`` is the
Supabase Postgres at ``SUPABASE_DB_URL`` (alias ``DATABASE_URL``).  An explicit URL overrides both.
Secrets are held as :class:`pydantic.SecretStr` and URLs are only ever shown redacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dualdb.backends import Backend, backend_for_scheme, file_backend
from dualdb.errors import ConfigError
from dualdb.target import BackendName, Target

__all__ = ["BackendName", "Settings", "Target", "load_settings", "resolve"]


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


def _parse(raw: str) -> tuple[Backend, URL]:
    text = raw.strip()
    if not text:
        raise ConfigError("the database URL is empty")
    if "://" not in text:
        # A plain file path means a local database file.
        backend = file_backend()
        return backend, URL.create(backend.driver, database=text)
    scheme, rest = text.split("://", 1)
    found = backend_for_scheme(scheme)
    if found is None:
        family = backend_for_scheme(scheme.split("+", 1)[0])
        if family is not None:
            raise ConfigError(
                f"unsupported driver {scheme.lower()!r}: use {family.schemes[-1]}:// "
                f"(dualdb drives {family.library})"
            )
        raise ConfigError(
            f"unsupported database URL scheme {scheme.lower()!r}: "
            "use sqlite:///PATH or postgresql://…"
        )
    try:
        url = make_url(f"{found.driver}://{rest}")
        url.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError):
        raise ConfigError("the database URL could not be parsed") from None
    found.check_url(url)
    return found, url


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
        backend, parsed = _parse(url)
    elif env == "web":
        if s.supabase_db_url is None or not s.supabase_db_url.get_secret_value().strip():
            raise ConfigError(
                "APP_ENV=web needs SUPABASE_DB_URL (or DATABASE_URL): "
                "the Postgres connection string of your Supabase project"
            )
        backend, parsed = _parse(s.supabase_db_url.get_secret_value())
    else:
        backend, parsed = _parse(str(Path(s.sqlite_path)))
    return Target(
        backend=cast(BackendName, backend.name),
        url=backend.driver_url(parsed),
        transaction_pooler=backend.transaction_pooler(parsed, s.transaction_pooler),
        app_env=env,
    )
