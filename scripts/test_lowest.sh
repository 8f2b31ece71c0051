#!/usr/bin/env bash
# `make test-lowest`: the SQLite half of the test suite on the lowest versions pyproject.toml
# allows.  Every runtime dependency is installed at its lower bound (uv's lowest-direct; what
# those require resolves to the newest compatible versions), the dev tools at their usual
# versions without moving any runtime dependency, into a fresh $VENV_LOWEST.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_LOWEST:-.venv-lowest}

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet uv
uv=("$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python")
"${uv[@]}" --resolution lowest-direct -e .
"$VENV/bin/uv" pip freeze --quiet --python "$VENV/bin/python" --exclude-editable \
  >"$VENV/runtime-lowest.txt"
"${uv[@]}" -e '.[dev]' -c "$VENV/runtime-lowest.txt"
echo "test-lowest: installed into $VENV with uv --resolution lowest-direct (dev tools as usual)"

# Each runtime dependency must sit exactly on its lower bound, or the bound is not what ran.
"$VENV/bin/python" - <<'EOF'
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.version import Version

with open("pyproject.toml", "rb") as f:
    lines = tomllib.load(f)["project"]["dependencies"]
ran, wrong = [], []
for req in map(Requirement, lines):
    bounds = [s.version for s in req.specifier if s.operator == ">="]
    installed = version(req.name)
    ran.append(f"{req.name}=={installed}")
    if len(bounds) != 1 or Version(installed) != Version(bounds[0]):
        wrong.append(f"{req}: installed {installed}")
if wrong:
    sys.exit("test-lowest: not on the lower bound (give it one >= that installs):\n  "
             + "\n  ".join(wrong))
print(f"test-lowest: every runtime dependency is on its lower bound: {' '.join(ran)}")
EOF

# The SQLite half (the postgres mark selects every test that runs on PostgreSQL).
"$VENV/bin/python" -m pytest -m "not postgres" -q -p no:cacheprovider
echo "test-lowest: the SQLite half of the test suite passed on the lowest allowed versions"
