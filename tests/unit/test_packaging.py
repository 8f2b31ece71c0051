"""The package works as published: what it imports is declared, and its version is in one place.

``pip install dualdb`` brings exactly ``[project].dependencies`` (and what they require), so
every third-party module dualdb imports must come from there — not from the ``dev`` extra or
whatever else happens to be installed in the test environment.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dualdb

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "dualdb"
PYPROJECT = ROOT / "pyproject.toml"

#: Not importable on their own: Alembic runs them (env.py needs its context), or they run the CLI.
NOT_IMPORTABLE = ("dualdb.migrations.versions", "dualdb.migrations.env", "dualdb.__main__")


def _project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _declared() -> list[Requirement]:
    return [Requirement(line) for line in _project()["dependencies"]]


def _distributions(module: str) -> list[str]:
    """The installed distributions providing top-level ``module`` (type stubs left out)."""
    names = metadata.packages_distributions().get(module, [])
    return [n for n in names if not canonicalize_name(n).startswith("types-")]


def _add_line(dist: str) -> str:
    return (
        f'add "{dist}>={metadata.version(dist)}" to [project].dependencies in pyproject.toml '
        "(the version installed here; lower it only as far as `make test-lowest` passes)"
    )


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> the ``file:line`` places in src/dualdb that import it."""
    local = set(sys.stdlib_module_names) | {"dualdb", "__future__"}
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in local:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.setdefault(top, []).append(where)
    return found


def test_the_walk_sees_the_imports_it_must_check() -> None:
    # A guard on the check below: a walk that found nothing would pass vacuously.
    imports = _third_party_imports()
    assert {"sqlalchemy", "alembic", "typer", "sqladmin", "wtforms", "anyio"} <= imports.keys()
    assert "json" not in imports and "dualdb" not in imports


def test_every_third_party_import_is_declared() -> None:
    declared = {canonicalize_name(r.name) for r in _declared()}
    problems = []
    for module, places in sorted(_third_party_imports().items()):
        dists = _distributions(module)
        if not dists:
            problems.append(f"{places[0]}: imports {module!r}, which no installed package provides")
        elif not any(canonicalize_name(d) in declared for d in dists):
            dist = dists[0]
            problems.append(f"{places[0]}: imports {module!r} from {dist}: {_add_line(dist)}")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def _required_closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution ``pip install`` brings for ``requirements`` (with extras, markers)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            lines = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed: test_every_third_party_import_is_declared says so if needed
        for line in lines:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return {name for name, _ in seen}


_LOAD_EVERY_MODULE = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
import dualdb
for info in pkgutil.walk_packages(dualdb.__path__, "dualdb."):
    if not info.name.startswith(tuple(sys.argv[1:])):
        importlib.import_module(info.name)
print(json.dumps(sorted({name.split(".")[0] for name in set(sys.modules) - before})))
"""


def test_every_module_loaded_at_runtime_is_required() -> None:
    # What the import statements of src/ cannot show: a dependency's own imports that need one
    # of its extras (sqladmin imports sqlalchemy.ext.asyncio, which imports greenlet).
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD_EVERY_MODULE, *NOT_IMPORTABLE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    modules = set(json.loads(loaded.stdout)) - set(sys.stdlib_module_names) - {"dualdb"}
    assert {"sqladmin", "uvicorn", "greenlet"} <= modules  # dualdb.studio was imported
    required = _required_closure(_declared())
    problems = []
    for module in sorted(modules):
        dists = _distributions(module)  # none: a private extension module, not a package
        if dists and not any(canonicalize_name(d) in required for d in dists):
            problems.append(
                f"importing dualdb loads {module!r} from {dists[0]}, which nothing in "
                f"[project].dependencies requires: {_add_line(dists[0])}"
            )
    assert not problems, "undeclared runtime dependencies:\n" + "\n".join(problems)


def test_the_version_is_written_once() -> None:
    project = _project()
    assert "version" not in project
    assert "version" in project.get("dynamic", [])


def test_installed_metadata_matches_dualdb_version() -> None:
    assert metadata.version("dualdb") == dualdb.__version__
