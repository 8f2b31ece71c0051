"""``python -m benchmarks``: dualdb against the raw driver on SQLite and Postgres, one run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import psycopg
from rich.console import Console

from benchmarks.config import QUICK, BenchConfig
from benchmarks.report import print_result, to_markdown, write_json
from benchmarks.run import run
from benchmarks.targets import PG_URL_ENV, pg_admin_url

#: Size flags: option name → BenchConfig field.
_SIZES = {
    "--get-ops": "get_ops",
    "--projects": "projects",
    "--rounds": "rounds",
    "--tasks": "tasks",
    "--drains": "drains",
    "--small": "small",
    "--large": "large",
    "--blocked": "blocked",
    "--claims": "claims",
    "--chain-length": "chain_length",
    "--fan-in": "fan_in",
    "--iter-rows": "iter_rows",
    "--pickups": "pickups",
    "--copy-rows": "copy_rows",
    "--copies": "copies",
}


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of counts") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be >= 1")
    return values


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _letters(text: str) -> str:
    letters = text.upper()
    if not letters or set(letters) - set("ABCDEFG"):
        raise argparse.ArgumentTypeError("letters among A, B, C, D, E, F, G")
    return letters


def _parser() -> argparse.ArgumentParser:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark dualdb against plain sqlite3/psycopg on the same schema.",
    )
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "both"], default="both", help="(both)"
    )
    parser.add_argument(
        "--pg-url",
        help=f"admin URL of a Postgres server to create a throwaway database on "
        f"(default: ${PG_URL_ENV}, else postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    for flag, name in _SIZES.items():
        parser.add_argument(
            flag, type=_size, dest=name, help=f"(default {getattr(defaults, name)})"
        )
    parser.add_argument(
        "--procs", type=_counts, help="process counts for claim→complete (default 1,2,4,8)"
    )
    parser.add_argument(
        "--bulk", type=_counts, help="tasks per create_many in the bulk insert (10000,100000)"
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=Path("bench-out"),
        help="folder for the PNG plots of C, D and F (default bench-out/)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument(
        "--only",
        type=_letters,
        help="run only these measurements, e.g. AB (default ABCDEFG; see docs/benchmarks.md)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The sizes: ``--quick`` or the defaults, overridden by explicit size flags."""
    base = QUICK if args.quick else BenchConfig()
    changes = {name: getattr(args, name) for name in _SIZES.values() if getattr(args, name)}
    if args.procs:
        changes["procs"] = args.procs
    if args.bulk:
        changes["bulk"] = args.bulk
    if args.only:
        changes["only"] = args.only
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 (with one line on stderr) on failure."""
    args = _parser().parse_args(argv)
    cfg = config_from(args)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    admin = pg_admin_url(args.pg_url)
    err = Console(stderr=True)
    if "postgresql" in backends:
        try:
            psycopg.connect(admin, connect_timeout=5).close()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(
                f"cannot reach PostgreSQL for the benchmark ({first}); pass --pg-url, set "
                f"{PG_URL_ENV}, or use --backend sqlite",
                style="red",
            )
            return 1
    result = run(cfg, backends, admin, progress=lambda m: err.print(f"[dim]… {m}[/dim]"))
    print_result(result)
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        args.markdown.write_text(to_markdown(result) + "\n")
    if not args.no_plots:
        try:
            from benchmarks.plots import write_plots
        except ImportError:
            err.print("no plots: matplotlib is not installed (pip install 'dualdb[bench]')")
        else:
            for path in write_plots(result, args.plots):
                err.print(f"[dim]wrote {path}[/dim]")
    missed = [m for b in result.backends for m in b.missed()]
    err.print(
        f"took {sum(b.seconds for b in result.backends):.0f} s; targets missed: {len(missed)}"
        + (f" ({', '.join(missed)})" if missed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
