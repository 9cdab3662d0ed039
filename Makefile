# The whole set-up is `make dev` (the whole Burn product on an embedded Postgres) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/e2e/node_modules/.installed

.PHONY: dev syncd-dev test test-ui lint typecheck pytest bench fuzz install js ui chromium nginx clean mutation
UI_DIR := web/ui
UI_STAMP := $(UI_DIR)/node_modules/.installed
UI_BUILT := $(UI_DIR)/dist/index.html
UI_SOURCES := $(wildcard $(UI_DIR)/src/*) $(UI_DIR)/index.html $(UI_DIR)/vite.config.ts $(UI_DIR)/tsconfig.json

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(NODE_STAMP): tests/e2e/package.json tests/e2e/package-lock.json
	cd tests/e2e && npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)

js: $(NODE_STAMP)

# The browser app (web/ui): pinned dependencies from its lockfile, type-checked, built into dist/.
$(UI_STAMP): $(UI_DIR)/package.json $(UI_DIR)/package-lock.json
	cd $(UI_DIR) && npm ci --no-audit --no-fund --silent
	touch $(UI_STAMP)

$(UI_BUILT): $(UI_STAMP) $(UI_SOURCES)
	cd $(UI_DIR) && npm run --silent build

ui: $(UI_BUILT)

# The browser tests drive Debian's Chromium (never a downloaded browser build).
chromium:
	@test -x /usr/bin/chromium || apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium)

# Postgres, migrations, syncd, the web app with the built UI, and the agents (offline Messages
# API without ANTHROPIC_API_KEY); prints the URL to open; Ctrl-C stops everything.
dev: $(STAMP) ui
	$(PY) -m web.dev --data-dir .dev

# syncd alone on an embedded Postgres.
syncd-dev: $(STAMP)
	$(PY) -m syncd --dev --storage-dir .dev/storage

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The browser tests alone; they save screenshots (welcome, chat, sidebar, phone width) in
# .tmp/ui-screenshots (or $$UI_SCREENSHOTS).
test-ui: $(STAMP) ui chromium
	$(PY) -m pytest tests/ui -q

# The cache deployment's tests and benchmark run Debian's nginx in front of syncd.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx \
		|| apt-get install -y --no-install-recommends nginx \
		|| (apt-get update && apt-get install -y --no-install-recommends nginx)

pytest: $(STAMP) $(NODE_STAMP) ui chromium nginx
	$(PY) -m pytest

test: lint typecheck pytest

# Mutation testing of the pure core (settings in pyproject.toml, [tool.mutmut]): mutants of
# where_eval, convert, offset and xid against the fast tests, then the score per file, with the
# mutants judged equivalent (tests/mutation/equivalent.md) left out. Not part of `make test`.
mutation: $(STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(PY) -m tests.mutation.score

bench: $(STAMP) nginx
	$(PY) -m bench

# The where-clause differential fuzzer, long run (make test runs a few hundred clauses).
fuzz: $(STAMP)
	WHERE_FUZZ_CLAUSES=20000 $(PY) -m pytest tests/where_fuzz/test_where_fuzz.py -q

clean:
	rm -rf $(VENV) tests/e2e/node_modules $(UI_DIR)/node_modules $(UI_DIR)/dist .mypy_cache .ruff_cache .pytest_cache
