"""The ``dualdb`` command line.  Each command is a thin wrapper over one library call.

Every failure is one line on stderr and a non-zero exit status; set ``DUALDB_DEBUG=1`` to see
the traceback of an unexpected error.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from dualdb import integrity, migrations
from dualdb.config import resolve
from dualdb.database import Database, connect
from dualdb.errors import (
    ConfigError,
    DatabaseUnavailable,
    DualdbError,
    InvalidInput,
    SchemaOutOfDate,
)
from dualdb.seed import seed as seed_database
from dualdb.target import Target
from dualdb.transfer import ON_CONFLICT, OnConflict, TransferResult
from dualdb.transfer import copy as copy_data
from dualdb.transfer import dump as dump_data
from dualdb.transfer import load as load_data
from dualdb.transfer.core import ProgressCallback

app = typer.Typer(
    name="dualdb",
    help="One schema and one migration history on SQLite (local) and Supabase Postgres (web).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Pinned (Typer's default has changed before): help paragraphs keep their line breaks, so
    # each command's "Examples:" lines show as written (and prose paragraphs are one line).
    rich_markup_mode="rich",
)
# Markup off by default: URLs, revisions and messages can contain "[...]"; only the styled
# prefixes below opt in, with everything interpolated escaped.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (sqlite:///file.db, a file path, or postgresql://…). "
        "Default: from APP_ENV / DUALDB_SQLITE_PATH / SUPABASE_DB_URL.",
        show_default=False,
    ),
]

F = TypeVar("F", bound=Callable[..., Any])

_SECRETS: set[str] = set()
#: The longest interval a worker option takes (a year): longer ones overflow timedelta.
MAX_SECONDS = 365 * 24 * 3600


def _scrub(text: str) -> str:
    for secret in _SECRETS:
        # Messages never embed the URL; this is a second line of defence, and replacing a
        # one- or two-letter password would garble every message.
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _target(url: str | None) -> Target:
    target = resolve(url)
    if target.url.password:
        _SECRETS.add(str(target.url.password))
    return target


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(_scrub(message))}", markup=True, soft_wrap=True)
    return typer.Exit(code=1)


def handle_errors(fn: F) -> F:
    """Turn any error into one line on stderr and exit status 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except DualdbError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted") from None
        except Exception as exc:
            if os.environ.get("DUALDB_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _fail(
                f"unexpected {type(exc).__name__}: {first} (set DUALDB_DEBUG=1 for details)"
            ) from None

    return wrapper  # type: ignore[return-value]


def _progress(line: str) -> None:
    out.print(f"  [green]✓[/] {escape(line)}", markup=True)


@app.command()
@handle_errors
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
) -> None:
    """Apply pending migrations (up to REVISION, default head).

    Examples:
    $ dualdb migrate
    $ dualdb migrate 0005 --url sqlite:///scratch.db
    """
    target = _target(url)
    out.print(f"Migrating {target.backend} database {target.redacted} to {revision}…")
    applied = migrations.upgrade(target, revision, progress=_progress)
    if applied:
        out.print(f"Applied {len(applied)} migration(s); now at {applied[-1]}.")
    else:
        out.print("Nothing to apply: the database is already up to date.")
    for problem in migrations.auth_problems(target):
        err.print(f"[bold yellow]warning:[/] {escape(problem)}", markup=True)


@app.command()
@handle_errors
def downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go down to ('base' for empty).")],
    url: UrlOption = None,
) -> None:
    """Revert migrations down to REVISION ('base' empties the database).

    Examples:
    $ dualdb downgrade 0005
    $ dualdb downgrade base --url sqlite:///scratch.db
    """
    target = _target(url)
    out.print(f"Downgrading {target.backend} database {target.redacted} to {revision}…")
    reverted = migrations.downgrade(target, revision, progress=_progress)
    out.print(f"Reverted {len(reverted)} migration(s).")


@app.command()
@handle_errors
def status(
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the backend, redacted URL, current revision, head and pending migrations.

    At the head it also counts the rows of every table.

    Examples:
    $ dualdb status
    $ dualdb status --json --url "$SUPABASE_DB_URL"
    """
    st = migrations.status(_target(url))
    if as_json:
        data = st.as_dict()
        if st.up_to_date:
            with connect(url) as db:
                data["rows"] = db.row_counts()
        out.print_json(json.dumps(data))
        return
    table = Table(show_header=False, box=None)
    table.add_row("backend", st.backend)
    table.add_row("url", st.url)
    table.add_row("current", st.current or "(none: not migrated)")
    table.add_row("head", st.head)
    table.add_row("pending", ", ".join(st.pending) if st.pending else "none")
    out.print(table)
    if st.up_to_date:
        with connect(url) as db:
            rows = Table("table", "rows", title="Rows per table", title_justify="left")
            for name, count in db.row_counts().items():
                rows.add_row(name, str(count))
            out.print(rows)


StaleAfterOption = Annotated[
    float | None,
    typer.Option(
        "--stale-after",
        help="Report In Progress tasks whose heartbeat is older than this many seconds "
        f"(default {integrity.DEFAULT_STALE_AFTER.total_seconds():g}).",
        show_default=False,
    ),
]


def _stale_after(value: float | None) -> timedelta:
    if value is None:
        return integrity.DEFAULT_STALE_AFTER
    return _seconds("--stale-after", value)


def _print_drift(redacted: str, problems: Sequence[str]) -> None:
    err.print(f"[bold red]Schema drift[/] in {escape(redacted)}:", markup=True)
    for line in problems:
        err.print(f"  - {line}", markup=False, soft_wrap=True)
    err.print(
        "Fix: `dualdb migrate` applies pending migrations; after changing the models run "
        "`dualdb generate -m 'what changed'`."
    )


def _ids(ids: Sequence[str], count: int) -> str:
    more = count - len(ids)
    return ", ".join(ids) + (f" (and {more} more)" if more > 0 else "")


def _print_findings(findings: Sequence[integrity.Finding]) -> None:
    for f in findings:
        fixed = ", repair fixes" if f.repairable else ""
        err.print(f"  - {f.rule} ({f.count}{fixed}): {f.description}", soft_wrap=True)
        err.print(f"      {_ids(f.ids, f.count)}", soft_wrap=True)
        if f.advice:
            err.print(f"      what to do: {f.advice}", soft_wrap=True)


@app.command()
@handle_errors
def check(
    url: UrlOption = None,
    data: Annotated[
        bool,
        typer.Option(
            "--data",
            help="Also audit the data: every rule of the queue the rows break (exit 1 if any).",
        ),
    ] = False,
    stale_after: StaleAfterOption = None,
) -> None:
    """Compare the live schema with the models (with --data, audit the rows too).

    Exit 1 on any difference or broken rule, listing each.

    Examples:
    $ dualdb check
    $ dualdb check --data --stale-after 300
    """
    target = _target(url)
    if not data:
        if stale_after is not None:
            raise InvalidInput("--stale-after", "only applies with --data")
        problems = migrations.check(target)
        if not problems:
            out.print(f"OK: the {target.backend} schema matches the models.")
            return
        _print_drift(target.redacted, problems)
        raise typer.Exit(code=1)
    report = integrity.audit(target, stale_after=_stale_after(stale_after))
    if report.schema:
        _print_drift(target.redacted, report.schema)
    else:
        out.print(f"OK: the {target.backend} schema matches the models.")
    if not report.audited:
        err.print("Data not audited: the database is not at the migration head (see above).")
    elif report.findings:
        err.print(f"[bold red]Data rules broken[/] in {escape(target.redacted)}:", markup=True)
        _print_findings(report.findings)
        err.print(
            "Fix: `dualdb repair --dry-run` shows what `dualdb repair` would change; the "
            "other rules need a decision (docs/queue.md, 'Auditing and repairing the data')."
        )
    else:
        out.print(f"OK: the data keeps every rule ({len(report.rules)} checked).")
    if not report.clean:
        raise typer.Exit(code=1)


@app.command()
@handle_errors
def repair(
    url: UrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    delete_orphans: Annotated[
        bool,
        typer.Option(
            "--delete-orphans",
            help="Also delete rows whose parent is gone (as ON DELETE CASCADE would have).",
        ),
    ] = False,
    stale_after: StaleAfterOption = None,
) -> None:
    """Recompute edges and counters, cancel tasks that can never run, make missing generations.

    All in one transaction (--dry-run rolls it back); exit 1 when rules stay broken.

    Examples:
    $ dualdb repair --dry-run
    $ dualdb repair --delete-orphans
    """
    target = _target(url)
    report = integrity.repair(
        target,
        dry_run=dry_run,
        delete_orphans=delete_orphans,
        stale_after=_stale_after(stale_after),
    )
    where = escape(target.redacted)
    if report.changes:
        if dry_run:
            out.print(f"Dry run on {where}: repair would change (nothing was written):")
        else:
            out.print(f"Repaired {where} in one transaction:")
        for c in report.changes:
            out.print(f"  - {c.fix} ({c.count}): {c.description}", soft_wrap=True)
            out.print(f"      {_ids(c.ids, c.count)}", soft_wrap=True)
    else:
        out.print(f"Nothing to repair in {where}.")
    if report.skipped:
        err.print("Not repaired (the database refused these rows; fix their other problems first):")
        for line in report.skipped:
            err.print(f"  - {line}", soft_wrap=True)
    if report.remaining.findings:
        err.print("[bold red]Still broken[/]" + (" after it" if dry_run else "") + ":", markup=True)
        _print_findings(report.remaining.findings)
        raise typer.Exit(code=1)
    out.print("OK: the data keeps every rule" + (" after it." if dry_run else "."))


@app.command()
@handle_errors
def generate(
    message: Annotated[str, typer.Option("--message", "-m", help="What the migration does.")],
    url: UrlOption = None,
) -> None:
    """Autogenerate a migration from the difference between the models and the database.

    Example:
    $ dualdb generate -m "add shots.notes"
    """
    path = migrations.generate(_target(url), message)
    if path is None:
        out.print("No changes: the models and the database already agree.")
    else:
        out.print(f"Wrote {path}")
        out.print("Review it, then run `dualdb migrate` (and the test suite on both backends).")


@app.command("sql")
@handle_errors
def sql_(
    url: UrlOption = None,
    from_rev: Annotated[
        str | None,
        typer.Option("--from", help="Start revision (default: base, or --url's current one)."),
    ] = None,
    to_rev: Annotated[str, typer.Option("--to", help="End revision.")] = "head",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Render the Postgres SQL of the migrations offline (for review or `supabase db push`).

    Examples:
    $ dualdb sql -o all.sql
    $ dualdb sql --url "$SUPABASE_DB_URL" -o pending.sql
    """
    if from_rev is None and url is not None:
        from_rev = migrations.status(_target(url)).current
    text = migrations.render_sql(from_rev, to_rev)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        out.print(f"Wrote {output}")


@app.command()
@handle_errors
def seed(
    url: UrlOption = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow seeding a Postgres (web) database.")
    ] = False,
) -> None:
    """Insert idempotent demo data: the dummy user, a project, shots, generations, tasks.

    Examples:
    $ dualdb seed
    $ dualdb seed --url "$SUPABASE_DB_URL" --allow-remote
    """
    target = _target(url)
    with connect(url) as db:
        result = seed_database(db, allow_remote=allow_remote)
    if result.total:
        made = ", ".join(f"{n} {t}" for t, n in result.created.items())
        out.print(f"Seeded {target.redacted}: {made}.")
    else:
        out.print(f"Already seeded: {target.redacted} has every seed row; nothing changed.")


ProjectOption = Annotated[
    list[str] | None,
    typer.Option(
        "--project",
        help="Only this project, with everything under it and its owner (repeatable). "
        "Default: every row.",
        show_default=False,
    ),
]
OnConflictOption = Annotated[
    str,
    typer.Option(
        "--on-conflict",
        help="A row whose key is in the target with other content: fail (checked before "
        "writing), skip (keep the target's) or overwrite.",
    ),
]
RequeueOption = Annotated[
    bool,
    typer.Option("--requeue-running", help="In Progress tasks arrive Queued, worker cleared."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Count what would be written; write nothing.")
]
AllowRemoteOption = Annotated[
    bool, typer.Option("--allow-remote", help="Allow writing into a Postgres (web) database.")
]
BatchOption = Annotated[
    int, typer.Option("--batch-size", help="Rows per transaction.", min=1, max=100_000)
]


def _on_conflict(value: str) -> OnConflict:
    if value not in ON_CONFLICT:
        raise InvalidInput("--on-conflict", f"must be one of {', '.join(ON_CONFLICT)}")
    return value  # type: ignore[return-value]


def _open(url: str | None, role: str) -> Database:
    """``connect(url)``, its refusal saying which side of a copy it is about."""
    _target(url)
    try:
        return connect(url)
    except (SchemaOutOfDate, DatabaseUnavailable, ConfigError) as exc:
        raise type(exc)(f"{role}: {exc}") from None


@contextmanager
def _progress_bar() -> Iterator[ProgressCallback]:
    """Rows done per table: a rich progress bar on a terminal, a line per batch otherwise."""
    if not out.is_terminal:

        def line(table: str, done: int, total: int) -> None:
            out.print(f"  {table}: {done}/{total}")

        yield line
        return
    with Progress(console=out) as bar:
        ids: dict[str, TaskID] = {}

        def update(table: str, done: int, total: int) -> None:
            if table not in ids:
                ids[table] = bar.add_task(table, total=total)
            bar.update(ids[table], completed=done)

        yield update


def _report(result: TransferResult, verb: str) -> None:
    derived = "task_dependencies"  # kept by the database's triggers: compared, never written
    if not out.is_terminal:  # one whole line per table (a table would cut the checksums)
        for name, t in result.tables.items():
            counts = (
                ""
                if name == derived
                else (
                    f", {t.inserted} inserted, {t.identical} identical, {t.conflicting} conflicting"
                )
            )
            out.print(f"{name}: {t.rows} rows{counts}" + (f", {t.checksum}" if t.checksum else ""))
    else:
        table = Table("table", "rows", "inserted", "identical", "conflicting", "checksum")
        for name, t in result.tables.items():
            cells = (
                ("-", "-", "-")
                if name == derived
                else (str(t.inserted), str(t.identical), str(t.conflicting))
            )
            table.add_row(name, str(t.rows), *cells, t.checksum or "")
        out.print(table)
    if result.dry_run:
        out.print(f"Dry run: nothing was written ({result.inserted} rows would be).")
        return
    out.print(f"{verb} {result.inserted} rows.")
    if result.verified:
        out.print("Verified: every table's row count and checksum match the source.")


@app.command(name="copy")
@handle_errors
def copy_command(
    from_url: Annotated[
        str, typer.Option("--from", help="Source database URL.", show_default=False)
    ],
    to_url: Annotated[
        str | None,
        typer.Option(
            "--to",
            "--url",
            help="Target database URL. Default: the environment's (APP_ENV …).",
            show_default=False,
        ),
    ] = None,
    project: ProjectOption = None,
    on_conflict: OnConflictOption = "fail",
    requeue_running: RequeueOption = False,
    dry_run: DryRunOption = False,
    allow_remote: AllowRemoteOption = False,
    batch_size: BatchOption = 1000,
) -> None:
    """Copy projects (or everything) between any two databases, then verify the copy.

    Both must be at the migration head; a Postgres target needs --allow-remote.

    Rows already in the target unchanged are left alone: rerun an interrupted copy to finish it.

    Examples:
    $ dualdb copy --from sqlite:///local.db --to "$SUPABASE_DB_URL" --allow-remote
    $ dualdb copy --from "$SUPABASE_DB_URL" --to sqlite:///bug.db --project 0190…
    """
    mode = _on_conflict(on_conflict)
    with _open(from_url, "source") as src, _open(to_url, "target") as dst:
        out.print(f"Copying {src.target.redacted} → {dst.target.redacted}…")
        with _progress_bar() as progress:
            result = copy_data(
                src,
                dst,
                projects=project,
                on_conflict=mode,
                requeue_running=requeue_running,
                dry_run=dry_run,
                allow_remote=allow_remote,
                batch_size=batch_size,
                progress=progress,
            )
    _report(result, "Copied")


@app.command()
@handle_errors
def dump(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The archive to write.", show_default=False)
    ],
    url: UrlOption = None,
    project: ProjectOption = None,
    batch_size: BatchOption = 1000,
) -> None:
    """Write projects (or everything) to a portable archive that loads into either backend.

    The format (zip of JSON Lines per table plus a manifest) is described in docs/copy.md.

    Examples:
    $ dualdb dump -o backup.dualdb.zip
    $ dualdb dump --url "$SUPABASE_DB_URL" --project 0190… -o snapshot.zip
    """
    _target(url)
    with connect(url) as db, _progress_bar() as progress:
        result = dump_data(db, output, projects=project, batch_size=batch_size, progress=progress)
    out.print(f"Wrote {result.rows} rows to {output}.")


@app.command()
@handle_errors
def load(
    file: Annotated[Path, typer.Argument(help="An archive written by dualdb dump.")],
    url: UrlOption = None,
    on_conflict: OnConflictOption = "fail",
    requeue_running: RequeueOption = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare every table with the dump afterwards.")
    ] = False,
    dry_run: DryRunOption = False,
    allow_remote: AllowRemoteOption = False,
    batch_size: BatchOption = 1000,
) -> None:
    """Load an archive written by dualdb dump (checked against its manifest first).

    Examples:
    $ dualdb load backup.dualdb.zip --verify
    $ dualdb load snapshot.zip --url "$SUPABASE_DB_URL" --allow-remote --verify
    """
    mode = _on_conflict(on_conflict)
    _target(url)
    with connect(url) as db, _progress_bar() as progress:
        result = load_data(
            db,
            file,
            on_conflict=mode,
            requeue_running=requeue_running,
            verify=verify,
            dry_run=dry_run,
            allow_remote=allow_remote,
            batch_size=batch_size,
            progress=progress,
        )
    _report(result, "Loaded")


def _seconds(option: str, value: float) -> timedelta:
    """A positive, finite number of seconds as a timedelta (InvalidInput naming the option)."""
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise InvalidInput(option, f"must be a number of seconds above 0 and at most {MAX_SECONDS}")
    return timedelta(seconds=value)


@app.command()
@handle_errors
def worker(
    handler: Annotated[
        str,
        typer.Option(help="module:function called with each Task; returns the output location."),
    ] = "dualdb.worker:demo_handler",
    task_type: Annotated[
        list[str] | None, typer.Option("--task-type", help="Only claim this type (repeatable).")
    ] = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            help="Most seconds between claims while idle (it wakes on change before that)."
        ),
    ] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 10.0,
    stale_after: Annotated[
        float | None,
        typer.Option(
            help="Requeue tasks whose heartbeat is older than this many seconds "
            "(default: 6 heartbeats).",
            show_default=False,
        ),
    ] = None,
    maintenance_interval: Annotated[
        float, typer.Option(help="Seconds between maintenance runs (requeue stale tasks).")
    ] = 60.0,
    worker_id: Annotated[str | None, typer.Option(help="Default: host:pid.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Process at most one task.")] = False,
    drain: Annotated[
        bool, typer.Option("--drain", help="Exit when no task is ready instead of polling.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Claim and run tasks with --handler until stopped (SIGTERM/SIGINT finish the current one).

    Examples:
    $ dualdb worker --drain
    $ dualdb worker --handler mypackage.gpu:render --task-type single_image
    """
    from dualdb.worker import Worker, load_handler

    fn = load_handler(handler)
    with connect(url) as db:
        w = Worker(
            db,
            fn,
            worker_id=worker_id,
            task_types=task_type or None,
            poll_interval=_seconds("--poll-interval", poll_interval).total_seconds(),
            heartbeat=_seconds("--heartbeat", heartbeat),
            stale_after=None if stale_after is None else _seconds("--stale-after", stale_after),
            maintenance_interval=_seconds("--maintenance-interval", maintenance_interval),
            on_event=lambda line: out.print(f"  {line}", markup=False),
        )
        w.install_signal_handlers()
        out.print(f"Worker {w.worker_id} on {db.target.redacted}")
        stats = w.run(once=once, drain=drain)
        counts = db.tasks.counts()
    out.print(
        f"Done: {len(stats.completed)} completed, {len(stats.failed)} failed, "
        f"{len(stats.released)} released. Queue: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    )


@app.command()
@handle_errors
def studio(
    url: UrlOption = None,
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on (0: any free port).")
    ] = 4983,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    read_only: Annotated[
        bool | None,
        typer.Option(
            "--read-only/--read-write",
            help="Refuse or allow edits. Default: read-only for Postgres (APP_ENV=web), "
            "read-write for a local SQLite file.",
            show_default=False,
        ),
    ] = None,
    allow_remote_host: Annotated[
        bool,
        typer.Option(
            "--allow-remote-host",
            help="Allow a --host other machines can reach (the studio has no login).",
        ),
    ] = False,
) -> None:
    """Browse and edit the database in a web UI (like Drizzle Studio).

    Examples:
    $ dualdb studio
    $ dualdb studio --url "$SUPABASE_DB_URL" --read-write --port 0
    """
    # Imported here: only this command needs the web stack (sqladmin, Starlette, uvicorn).
    from dualdb.studio import serve

    serve(
        _target(url),
        host=host,
        port=port,
        read_only=read_only,
        allow_remote_host=allow_remote_host,
        announce=lambda line: out.print(line, markup=False),
    )


def main() -> None:
    """Entry point of the ``dualdb`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
