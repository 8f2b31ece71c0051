"""A resolved database: which backend, the SQLAlchemy URL, and how to show it.

:func:`dualdb.config.resolve` makes one from the environment or a URL; the backends build
their engines from it.  It lives apart from the settings so that the backends can name it
without importing the resolution (which asks the backends which URL is theirs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import URL

__all__ = ["BackendName", "Target"]

#: The name of a backend (its SQLAlchemy dialect).
BackendName = Literal["sqlite", "postgresql"]
#: libpq connection parameters that are secrets when given in the URL's query string.
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


@dataclass(frozen=True)
class Target:
    """A resolved database: which backend, the SQLAlchemy URL, and how to show it."""

    backend: BackendName
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
