"""``dualdb studio``: a web UI to browse and edit either database (like Drizzle Studio).

Built on sqladmin (Starlette + uvicorn).  Every table is listed, browsable with pagination,
sorting, search and a detail view; rows can be created, edited and deleted unless the studio
is read-only.  Reads go through an ORM mapping of the canonical Core tables
(:mod:`dualdb.studio.models`); writes go through the DAL repositories, so the studio refuses
what the DAL refuses.  Extra views: a shot's generations in position order and a task's
dependency graph.

:func:`serve` runs it (the command line); :func:`running` runs it in a background thread
(tests, embedding); :func:`create_app` is the ASGI app itself.
"""

from dualdb.studio.app import create_app
from dualdb.studio.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    check_address,
    default_read_only,
    running,
    serve,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "check_address",
    "create_app",
    "default_read_only",
    "running",
    "serve",
]
