"""The CLI's documentation cannot drift from the CLI.

- README.md's "CLI reference" table has a row for every command and no other; its rows, with
  the sentence above the table ("Every command takes …"), name every option that
  ``dualdb <command> --help`` shows and no option the command lacks.  Its "One CLI" list names
  every command.
- docs/studio.md's option table names every option of ``dualdb studio`` and no other.
- Anywhere in README.md and docs/*.md, a command line in code (an inline span, or a line of a
  shell block) names a real command and only options that command has.
- Every command's ``--help`` shows an example, and each example line parses as that command.

Commands and options come from the Click command behind the Typer app
(``typer.main.get_command``: its ``commands``, and each command's ``params`` with their
``opts``), not from parsing help text.  They are read by attribute, not by class: newer Typers
drive a vendored copy of Click (``typer._click``), older ones Click itself.
"""

from __future__ import annotations

import inspect
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dualdb.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: Pages with an option table (first column: the options) for one command.
OPTION_TABLES = {ROOT / "docs" / "studio.md": "studio"}

COMMANDS: dict[str, Any] = dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SPAN = re.compile(r"`([^`]+)`")
OPTION = re.compile(r"(?<![\w/.:-])--?[A-Za-z][\w-]*")
#: "dualdb <command> …" in a shell line, but not ".venv/bin/dualdb" or "dualdb.connect"; up to a
#: backtick, for plain blocks that quote code (docs/structure.md's tree).
SHELL_COMMAND = re.compile(r"(?<![\w./-])dualdb ([a-z][\w-]*)([^`]*)")
#: Code spans that start with "dualdb " but quote text, not a command line.
NOT_COMMAND_LINES = {
    "dualdb stand-in for Supabase auth (migration 0004)",  # the comment 0004 marks objects with
}
EXAMPLES_HEADING = re.compile(r"^Examples?:$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def visible_options(cmd: Any) -> list[Any]:
    """The options ``--help`` lists, ``--help`` itself included."""
    ctx = cmd.context_class(cmd, info_name=cmd.name)
    return [p for p in cmd.get_params(ctx) if p.param_type_name == "option" and not p.hidden]


def arguments(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "argument"]


def option_names(cmd: Any) -> dict[str, Any]:
    """Each name of each option: ``-m`` and ``--message``, ``--read-only`` and ``--read-write``."""
    return {n: p for p in visible_options(cmd) for n in (*p.opts, *p.secondary_opts)}


def usage_tokens(cmd: Any, usage: str) -> tuple[list[str], list[str]]:
    """The option names and positional placeholders of a documented usage line.

    ``[--from REV] [--once \\| --drain] [REV]`` gives ``(["--from", "--once", "--drain"],
    ["[REV]"])``: a value after an option that takes one is the option's.
    """
    names = option_names(cmd)
    tokens = iter(usage.replace("\\|", " ").replace("|", " ").split())
    options: list[str] = []
    positionals: list[str] = []
    for token in tokens:
        bare = token.strip("[]")
        if not bare.startswith("-"):
            positionals.append(token)
            continue
        options.append(bare)
        option = names.get(bare)
        if option is not None and not option.is_flag and not token.endswith("]"):
            next(tokens, None)  # its value: S, REV, MOD:FN, 4983
    return options, positionals


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def command_lines(path: Path) -> Iterator[tuple[str, str, str]]:
    """``(where, command, rest)`` of every ``dualdb <command> …`` written as code in ``path``.

    Inline spans may run over several lines; in a shell block each line counts, without its
    ``# comment``.  Python blocks are not read (their strings are messages, not commands).
    """
    text = path.read_text(encoding="utf-8")
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_LANGUAGES:
            continue
        first = line_of(text, block.start(2))
        for offset, line in enumerate(block.group(2).splitlines()):
            for found in SHELL_COMMAND.finditer(re.sub(r"\s#.*", "", line)):
                yield f"{path.name}:{first + offset}", found.group(1), found.group(2)
    # Blank the blocks out (keeping line numbers) so their backticks open no span.
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in SPAN.finditer(prose):
        code = " ".join(span.group(1).split())
        words = code.split(maxsplit=2)
        if len(words) >= 2 and words[0] == "dualdb" and code not in NOT_COMMAND_LINES:
            rest = words[2] if len(words) == 3 else ""
            yield f"{path.name}:{line_of(prose, span.start())}", words[1], rest


def readme_reference() -> tuple[str, list[tuple[int, str, str]]]:
    """The CLI reference section of README.md and its rows: ``(line, command, usage)``."""
    text = README.read_text(encoding="utf-8")
    assert "\n## CLI reference\n" in text, "README.md needs its '## CLI reference' section"
    start = text.index("\n## CLI reference\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    rows = [
        (line_of(text, start + m.start()), m.group(1), m.group(2))
        for m in re.finditer(r"^\| `dualdb ([a-z][\w-]*)([^`]*)` \|", section, re.MULTILINE)
    ]
    return section, rows


def test_readme_cli_reference_matches_every_commands_help() -> None:
    section, rows = readme_reference()
    assert len(COMMANDS) >= 10
    where = "README.md's CLI reference"
    common_sentence = re.search(r"Every command takes ([^;]*);", section)
    assert common_sentence, f"{where}: keep the sentence 'Every command takes `--url` …;'"
    common = OPTION.findall(common_sentence.group(1))
    problems: list[str] = []
    for option in sorted({"--url", "--help"} - set(common)):
        problems.append(f"{where}: name `{option}` in the sentence 'Every command takes …;'")
    documented: dict[str, set[str]] = {name: set(common) for name in COMMANDS}
    for line, name, usage in rows:
        cmd = COMMANDS.get(name)
        if cmd is None:
            problems.append(f"README.md:{line}: remove the row of `dualdb {name}`: no such command")
            continue
        options, positionals = usage_tokens(cmd, usage)
        documented[name].update(options)
        if not set(options) <= option_names(cmd).keys():
            continue  # reported below; the unknown option's value would read as an argument
        # Optional arguments in [brackets], required ones bare: `migrate [REV]`, `downgrade REV`.
        args = arguments(cmd)
        shape = ["[ARG]" if p.startswith("[") else "ARG" for p in positionals]
        if shape != ["ARG" if a.required else "[ARG]" for a in args]:
            wanted = [a.name.upper() if a.required else f"[{a.name.upper()}]" for a in args]
            problems.append(
                f"README.md:{line}: show the arguments of `dualdb {name}` as {wanted or 'none'} "
                f"(optional ones in brackets), not {positionals or 'none'}"
            )
    for name in COMMANDS.keys() - {name for _, name, _ in rows}:
        problems.append(f"{where}: add a row for `dualdb {name}` (see `dualdb {name} --help`)")
    for name, cmd in COMMANDS.items():
        names = option_names(cmd)
        for option in common:
            if option not in names:
                problems.append(
                    f"{where}: 'Every command takes {option}', but `dualdb {name}` does not: "
                    f"drop it from that sentence and document it per command"
                )
        for option in visible_options(cmd):
            if not documented[name] & {*option.opts, *option.secondary_opts}:
                spelled = "/".join(option.opts + option.secondary_opts)
                problems.append(
                    f"{where}: add `{spelled}` to the row of `dualdb {name}` "
                    f"(--help says: {option.help})"
                )
        for option in sorted(documented[name] - names.keys() - set(common)):
            problems.append(
                f"{where}: remove `{option}` from the row of `dualdb {name}`: "
                f"`dualdb {name} --help` has no such option"
            )
    assert not problems, "\n".join(problems)


def test_readme_one_cli_list_names_every_command() -> None:
    text = README.read_text(encoding="utf-8")
    lists = re.findall(r"`dualdb ([a-z][\w-]*(?: \| [a-z][\w-]*)+)`", text)
    assert len(lists) == 1, f"README.md should list the commands once as `dualdb a | b …`: {lists}"
    listed = lists[0].split(" | ")
    missing = [n for n in COMMANDS if n not in listed]
    unknown = [n for n in listed if n not in COMMANDS]
    assert not missing and not unknown, (
        f"README.md's 'One CLI' list: add {missing}, remove {unknown} (no such commands)"
    )


@pytest.mark.parametrize("page", OPTION_TABLES, ids=lambda p: p.name)
def test_option_tables_match_the_commands_help(page: Path) -> None:
    name = OPTION_TABLES[page]
    cmd = COMMANDS[name]
    text = page.read_text(encoding="utf-8")
    table = re.search(r"^\| option \|.*\n\|[-| ]+\|\n((?:\|.*\n)+)", text, re.MULTILINE)
    assert table, f"{page.name}: keep the '| option | …' table of `dualdb {name}`'s options"
    first_cells = [row.split(" | ")[0] for row in table.group(1).splitlines()]
    documented = {o for cell in first_cells for o in OPTION.findall(cell)}
    names = option_names(cmd)
    missing = [
        "/".join(o.opts + o.secondary_opts)
        for o in visible_options(cmd)
        if not documented & {*o.opts, *o.secondary_opts} and o.name != "help"
    ]
    unknown = sorted(documented - names.keys())
    assert not missing and not unknown, (
        f"{page.name}'s option table of `dualdb {name}`: add rows for {missing}, "
        f"remove {unknown} (`dualdb {name} --help` has no such option)"
    )


def test_every_command_line_in_the_docs_exists() -> None:
    problems = []
    seen = 0
    for page in PAGES:
        for where, name, rest in command_lines(page):
            seen += 1
            cmd = COMMANDS.get(name)
            if cmd is None:
                problems.append(
                    f"{where}: `dualdb {name}` is not a command ({', '.join(COMMANDS)}): "
                    "fix or remove the mention"
                )
                continue
            unknown = [o for o in OPTION.findall(rest) if o not in option_names(cmd)]
            if unknown:
                problems.append(
                    f"{where}: `dualdb {name}` has no option {unknown} (see `dualdb {name} "
                    "--help`): fix the docs, or add the option"
                )
    assert seen >= 40, seen
    assert not problems, "\n".join(problems)


def paragraphs(cmd: Any) -> list[str]:
    return inspect.cleandoc(cmd.help or "").split("\n\n")


def examples(cmd: Any) -> list[str]:
    """The command lines (``$ dualdb …``) of the ``Example(s):`` paragraph of a command's help."""
    for paragraph in paragraphs(cmd):
        lines = paragraph.splitlines()
        if lines and EXAMPLES_HEADING.match(lines[0]):
            return lines[1:]
    return []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_commands_help_shows_an_example_that_parses(name: str) -> None:
    cmd = COMMANDS[name]
    lines = examples(cmd)
    assert lines, (
        f"`dualdb {name} --help` shows no example: end the docstring of `{name}` in "
        "src/dualdb/cli.py with a paragraph 'Examples:' and a line `$ dualdb "
        f"{name} …` per example"
    )
    # As a user sees it: rendered by Typer (rich markup) in an 80-column terminal.
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    shown = ANSI.sub("", result.output)
    for line in lines:
        args = shlex.split(line, comments=True)
        assert args[:3] == ["$", "dualdb", name], (
            f"`{name}`'s Examples paragraph has a line that is not `$ dualdb {name} …`: {line!r}"
        )
        assert line in shown, (
            f"`dualdb {name} --help` does not show the example line as written (wrapped past "
            f"80 columns, or eaten as rich markup?): {line!r}\n{shown}"
        )
        try:
            with cmd.make_context(f"dualdb {name}", args[3:]):
                pass
        except Exception as exc:  # the Click in use raises its own UsageError
            pytest.fail(f"`dualdb {name}`'s example does not parse: {line!r}: {exc}")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_commands_prose_paragraphs_are_one_line(name: str) -> None:
    """With rich markup, help keeps a paragraph's line breaks (``dualdb --help``'s list of
    commands too, which shows the first paragraph): a prose line broken in the source shows
    broken in the terminal.  The terminal wraps long lines itself."""
    prose = [p for p in paragraphs(COMMANDS[name]) if not EXAMPLES_HEADING.match(p.split("\n")[0])]
    assert prose[0], f"`{name}` has no help: give it a docstring"
    broken = [p for p in prose if "\n" in p]
    assert not broken, (
        f"write each prose paragraph of `{name}`'s docstring on one line (start a new paragraph "
        f"instead of breaking one): {broken}"
    )
