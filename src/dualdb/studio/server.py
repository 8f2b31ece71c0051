"""Running the studio: the safety checks (address, mode), a listening socket, uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from dualdb.backends import backend_for
from dualdb.database import Database
from dualdb.errors import ConfigError
from dualdb.studio.app import LOOPBACK_NAMES, create_app
from dualdb.target import Target

#: The port Drizzle Studio uses too (``local.drizzle.studio`` talks to 4983).
DEFAULT_PORT = 4983
DEFAULT_HOST = "127.0.0.1"
#: How long :func:`running` waits for the server to start or stop.
START_TIMEOUT_S = 15.0


def default_read_only(target: Target) -> bool:
    """Read-only unless the target is a local SQLite file: Postgres (the ``web`` side, maybe
    production) or ``APP_ENV=web`` open read-only unless ``--read-write`` is given."""
    return backend_for(target.backend).remote or target.app_env == "web"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"cannot resolve --host {host!r}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_address(host: str, port: int, *, allow_remote_host: bool) -> None:
    """Refuse a port out of range, and a non-loopback ``host`` unless explicitly allowed."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (0 picks a free port), not {port}")
    if not host.strip():
        raise ConfigError("--host is empty: use 127.0.0.1")
    if not allow_remote_host and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host}: the studio has no login, so anyone who can reach "
            "it could read the database (and edit it unless read-only); use --host 127.0.0.1, "
            "or pass --allow-remote-host if you really mean it"
        )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), or a one-line ConfigError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"cannot resolve --host {host!r}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening now, not when uvicorn starts: a browser opened on the printed URL at once
        # waits in the backlog instead of being refused.
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(is a studio already running there? pick another --port)"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _allowed_hosts(host: str, allow_remote_host: bool) -> frozenset[str] | None:
    # Exposed on purpose: any Host header (the user put it on the network and knows why).
    if allow_remote_host and not is_loopback(host):
        return None
    return LOOPBACK_NAMES | {host.lower()}


def serve(
    target: Target,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    read_only: bool | None = None,
    allow_remote_host: bool = False,
    announce: Callable[[str], object] = print,
) -> None:
    """Serve the studio for ``target`` until interrupted (Ctrl+C).

    ``read_only=None`` picks :func:`default_read_only`.  Raises :class:`ConfigError` for a
    refused address or a busy port, and what :func:`dualdb.connect` raises (schema not at
    head, database unreachable) — all before anything listens.
    """
    check_address(host, port, allow_remote_host=allow_remote_host)
    mode = default_read_only(target) if read_only is None else read_only
    with Database(target) as db:
        sock = listen(host, port)
        try:
            app = create_app(
                db, read_only=mode, allowed_hosts=_allowed_hosts(host, allow_remote_host)
            )
            access = "read-only" if mode else "read-write"
            announce(f"dualdb studio: {url_of(sock)}  ({target.redacted}, {access})")
            if not is_loopback(host):
                announce(f"warning: listening on {host}, reachable from other machines, no login")
            announce("Press Ctrl+C to stop.")
            server = uvicorn.Server(
                uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            )
            # uvicorn shuts down gracefully on Ctrl+C, then re-raises the signal it caught.
            with contextlib.suppress(KeyboardInterrupt):
                server.run(sockets=[sock])
        finally:
            sock.close()
    announce("Studio stopped.")


@contextmanager
def running(
    db: Database,
    *,
    read_only: bool,
    host: str = DEFAULT_HOST,
    port: int = 0,
) -> Iterator[str]:
    """Serve the studio for ``db`` from a background thread; yields its URL, stops on exit.

    For tests and for embedding in another process; :func:`serve` is the command line's.
    """
    check_address(host, port, allow_remote_host=False)
    sock = listen(host, port)
    app = create_app(db, read_only=read_only, allowed_hosts=_allowed_hosts(host, False))
    # log_config=None: leave the host process's logging alone.
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="dualdb-studio", daemon=True
    )
    thread.start()
    try:
        for _ in range(int(START_TIMEOUT_S / 0.01)):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("the studio server did not start")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)
        sock.close()
