"""The studio's ASGI app: sqladmin on Starlette, over one :class:`~dualdb.Database`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from sqladmin import Admin
from sqlalchemy.orm import sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dualdb.database import Database
from dualdb.engine import READ_ONLY
from dualdb.errors import DualdbError
from dualdb.studio import formatting as fmt
from dualdb.studio.views import VIEWS, StudioContext, TableView

#: Where the studio lives inside the app ("/" redirects there).
BASE_URL = "/studio"
TEMPLATES = Path(__file__).parent / "templates"
#: Host names a loopback-bound studio answers to (anything else is refused, see below).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WRITE_FLAGS = ("can_create", "can_edit", "can_delete")


@dataclass(frozen=True)
class TableSummary:
    """A table on the index page."""

    name: str
    identity: str
    rows: int
    writable: bool


class _StudioAdmin(Admin):
    """sqladmin's Admin with the studio's index page (backend, mode, rows per table)."""

    def __init__(self, app: Starlette, *, context: StudioContext, **kwargs: Any) -> None:
        self.context = context
        super().__init__(app, **kwargs)

    async def index(self, request: Request) -> Response:
        """Backend, redacted URL, mode, and every table with its row count."""
        counts = await anyio.to_thread.run_sync(self.context.db.row_counts)
        tables = [
            TableSummary(
                name=view.table.name,
                identity=view.identity,
                rows=counts[view.table.name],
                writable=view.can_create or view.can_edit or view.can_delete,
            )
            for view in self.views
            if isinstance(view, TableView)
        ]
        target = self.context.db.target
        return await self.templates.TemplateResponse(
            request,
            "dualdb_studio/index.html",
            {
                "title": "Tables",
                "tables": tables,
                "backend": target.backend,
                "url": target.redacted,
                "read_only": self.context.read_only,
            },
        )


class _GuardMiddleware:
    """Refuse requests for foreign host names and cross-site writes.

    The studio has no login: it relies on being reachable from this machine only.  Two
    browser attacks get around that for a server on 127.0.0.1, and both are refused here:
    DNS rebinding (a web page whose host name resolves to 127.0.0.1: its requests carry that
    foreign name in ``Host``) and cross-site request forgery (a page elsewhere posting a form
    to the studio: the browser says where from in ``Origin``/``Referer``).
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
                await PlainTextResponse("unknown host name", status_code=403)(scope, receive, send)
                return
            if scope["method"] not in _SAFE_METHODS:
                source = headers.get("origin") or headers.get("referer")
                if source and _origin(source) != f"{scope.get('scheme', 'http')}://{host}":
                    await PlainTextResponse("cross-site request refused", status_code=403)(
                        scope, receive, send
                    )
                    return
        await self.app(scope, receive, send)


def _hostname(host_header: str) -> str:
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _QuietDualdbErrors(logging.Filter):
    """Drop sqladmin's traceback log for errors the DAL raised on purpose.

    sqladmin logs every failed create/edit/delete with its traceback, then shows the message
    on the page.  A refused write (``Conflict``, ``InvalidInput``, …) is the user's input, not
    a server fault: the page says it, the console need not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DualdbError)


def _quiet_sqladmin() -> None:
    logger = logging.getLogger("sqladmin.application")
    if not any(isinstance(f, _QuietDualdbErrors) for f in logger.filters):
        logger.addFilter(_QuietDualdbErrors())


def create_app(
    db: Database,
    *,
    read_only: bool,
    allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES,
    title: str = "dualdb studio",
) -> Starlette:
    """The studio as an ASGI app over ``db`` (which the caller keeps open, then closes).

    ``read_only`` removes every create/edit/delete page and button (and the write routes
    answer 403).  ``allowed_hosts`` are the host names the app answers to (``None``: any,
    for a studio deliberately exposed beyond this machine).
    """
    read_engine = db.engine.execution_options(
        # Deferred BEGIN on SQLite (no write lock for reads); READ ONLY transactions on
        # Postgres (ignored by SQLite) — reset when the connection goes back to the pool.
        **{READ_ONLY: True, "postgresql_readonly": True}
    )
    context = StudioContext(db=db, read_engine=read_engine, read_only=read_only)
    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    async def home(request: Request) -> Response:
        return RedirectResponse(request.url_for("admin:index"))

    app = Starlette(routes=[Route("/", home)])
    admin = _StudioAdmin(
        app,
        context=context,
        session_maker=sessionmaker(bind=read_engine),
        base_url=BASE_URL,
        title=f"{title} (read-only)" if read_only else title,
        templates_dir=str(TEMPLATES),
    )
    admin.templates.env.globals.update(status_badge=fmt.status_badge, utc=fmt.utc)
    for base in VIEWS:
        attrs: dict[str, Any] = {
            "studio": context,
            **{flag: getattr(base, flag) and not read_only for flag in _WRITE_FLAGS},
        }
        # A subclass per app: sqladmin stores its state on the view class, so two apps (two
        # databases, or read-only and not) must not share one.
        admin.add_view(type(base.__name__, (base,), attrs))
    _quiet_sqladmin()
    app.add_middleware(_GuardMiddleware, allowed_hosts=hosts)
    return app
