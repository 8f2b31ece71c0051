"""Every ``python`` example in docs/dal.md and docs/queue.md runs, in order, against a fresh
migrated SQLite file.

``run_page`` runs one page: its blocks share one namespace (the page reads like a notebook), and
the database comes from the environment exactly as a user's would: ``APP_ENV=local`` and
``DUALDB_SQLITE_PATH``.  Each page's test then checks that the examples did what the page says.
"""

from __future__ import annotations

import inspect
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dualdb.queue import TaskQueue
from dualdb.repositories.base import Repository

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "dal.md"
README = DOCS.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: The queue's verbs: documented in docs/queue.md (and tested by its examples), not dal.md.
QUEUE_VERBS = frozenset(
    name for name, _ in inspect.getmembers(TaskQueue, callable) if not name.startswith("_")
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def run_blocks(path: Path, namespace: dict[str, Any]) -> int:
    """Execute the blocks of ``path`` in order; a failure names the block's line."""
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    for line, code in blocks:
        # Pad so tracebacks point at the real line of the Markdown file.
        source = "\n" * (line - 1) + code
        exec(compile(source, str(path), "exec"), namespace)
    return len(blocks)


@pytest.fixture
def local_env(sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrated SQLite file selected through the environment, in an empty working folder."""
    db = tmp_path / "docs.db"
    shutil.copyfile(sqlite_template, db)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no stray .env is read
    for name in ("SUPABASE_DB_URL", "DATABASE_URL", "SUPABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_ENV", "local")
    monkeypatch.setenv("DUALDB_SQLITE_PATH", str(db))
    return db


@dataclass
class PageRun:
    """What running a page's examples left behind."""

    namespace: dict[str, Any]
    blocks: int
    printed: str


@pytest.fixture
def run_page(local_env: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[str], PageRun]:
    """``run_page("queue.md")`` runs the python blocks of docs/queue.md in order, in a fresh
    namespace, against the fresh migrated SQLite file of ``local_env``."""

    def run(name: str) -> PageRun:
        path = DOCS / name
        namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
        blocks = run_blocks(path, namespace)
        return PageRun(namespace, blocks, capsys.readouterr().out)

    return run


def test_every_dal_example_runs(run_page: Callable[[str], PageRun]) -> None:
    page = run_page("dal.md")
    assert page.blocks >= 20
    assert "does not exist: run `dualdb migrate --url" in page.printed
    assert "nan is not valid JSON" in page.printed


def test_every_queue_example_runs(run_page: Callable[[str], PageRun]) -> None:
    page = run_page("queue.md")
    assert page.blocks >= 1
    ns = page.namespace
    db, t1, t2 = ns["db"], ns["t1"], ns["t2"]
    # The claim took t1 (t2 waits for it); completing it released t2 and, as t1's params name
    # a shot, placed the generation it made on that shot.
    assert ns["task"].id == t1.id
    assert db.tasks.get(t1.id).status == "Complete"
    counts = db.tasks.counts(ns["project_id"])
    assert (counts["Pending"], counts["Queued"], counts["Complete"]) == (0, 1, 1)
    assert db.tasks.claim(worker_id="check").id == t2.id
    [placed] = db.shots.placements(ns["shot_id"])
    assert db.generations.get(placed.generation_id).tasks == [t1.id]
    # Held, released, failed with a retry, claimed again, given back, cancelled.
    held = db.tasks.get(ns["held"].id)
    assert (held.status, held.attempts, held.error) == ("Cancelled", 1, "not needed")


def test_every_queue_verb_is_documented() -> None:
    """A queue verb missing from docs/queue.md's examples fails here (add one that runs)."""
    code = "\n".join(c for _, c in python_blocks((DOCS / "queue.md").read_text(encoding="utf-8")))
    calls = {verb for verb in QUEUE_VERBS if re.search(rf"^[^#]*\.{verb}\(", code, re.M)}
    assert calls == QUEUE_VERBS, f"add examples of {sorted(QUEUE_VERBS - calls)} to docs/queue.md"


def test_every_repository_operation_is_documented() -> None:
    """A public repository method missing from docs/dal.md fails here.

    Fix: add an example of it to docs/dal.md (queue verbs belong in docs/queue.md).
    """
    code = "\n".join(c for _, c in python_blocks(DOC.read_text(encoding="utf-8")))
    missing = []
    classes = [c for c in Repository.__subclasses__() if c.__module__.startswith("dualdb.")]
    assert len(classes) >= 6
    for cls in sorted(classes, key=lambda c: c.__name__):
        for attr, member in inspect.getmembers(cls, callable):
            if attr.startswith("_"):
                continue
            module = getattr(member, "__module__", "") or ""
            if attr in QUEUE_VERBS or not module.startswith("dualdb.repositories"):
                continue
            if f".{attr}(" not in code:
                missing.append(f"{cls.__name__}.{attr}")
    assert not missing, f"add examples of {missing} to docs/dal.md"
    for op in ("dualdb.connect(", "db.session()", "next_cursor", "create_many(", "seed("):
        assert op in code, op


def test_readme_dal_example_runs_and_links_the_docs(
    local_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = README.read_text(encoding="utf-8")
    assert "(docs/dal.md)" in text, "link docs/dal.md from README.md's Documentation list"
    section = text.split("### Data-access layer", 1)[1].split("\n## ", 1)[0]
    [(_, code)] = python_blocks(section)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, "README.md (Data-access layer)", "exec"), namespace)
    assert capsys.readouterr().out.strip() == "name"
    db = namespace["db"]
    placed = db.shots.placements(namespace["shot"].id)
    g0, g1, g2 = (g.id for g in namespace["gens"])
    assert [(p.generation_id, p.position) for p in placed] == [(g2, 0), (g0, 1), (g1, 2)]
