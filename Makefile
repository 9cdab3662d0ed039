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

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(COMPILED_STAMP)

# The replication stream's per-row path, compiled with mypyc (setup.py, shapes/compiled.py), is
# built in place again when one of its sources changes. Without a C compiler the package installs
# as pure Python; with SYNCD_PURE_PYTHON=1 it runs as pure Python either way.
COMPILED_SOURCES := shapes/messages.py shapes/convert.py shapes/where_eval.py shapes/where_like.py \
	shapes/router.py syncd/pgoutput/decoder.py syncd/change_applier.py syncd/message_pump.py
COMPILED_STAMP := $(VENV)/.compiled

$(COMPILED_STAMP): $(STAMP) shapes/compiled.py $(COMPILED_SOURCES)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(COMPILED_STAMP)

install: $(STAMP) $(COMPILED_STAMP)

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
dev: install ui
	$(PY) -m web.dev --data-dir .dev

# syncd alone on an embedded Postgres.
syncd-dev: install
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

# Then the tests of the compiled modules once more, on their sources: the pure Python that an
# install without a C compiler runs must pass them too.
PURE_PYTHON_TESTS := tests/shapes tests/where_fuzz tests/syncd/test_pgoutput.py \
	tests/syncd/test_message_pump.py tests/syncd/test_streaming.py tests/syncd/test_oracle.py \
	tests/syncd/test_subquery_oracle.py tests/syncd/test_poison_rows.py \
	tests/syncd/test_replication.py tests/syncd/test_moves.py tests/syncd/test_renamed_table.py

pytest: install $(NODE_STAMP) ui chromium nginx
	$(PY) -m pytest
	SYNCD_PURE_PYTHON=1 $(PY) -m pytest -q $(PURE_PYTHON_TESTS)

test: lint typecheck pytest

# Mutation testing of the pure core (settings in pyproject.toml, [tool.mutmut]): mutants of
# where_eval, convert, offset and xid against the fast tests, then the score per file, with the
# mutants judged equivalent (tests/mutation/equivalent.md) left out. Not part of `make test`.
# The mutants run as pure Python: a compiled convert would otherwise stand in for its mutants.
mutation: $(STAMP)
	rm -rf mutants
	SYNCD_PURE_PYTHON=1 $(VENV)/bin/mutmut run --max-children 2
	$(PY) -m tests.mutation.score

bench: install $(NODE_STAMP) ui chromium nginx
	$(PY) -m bench

# The where-clause differential fuzzer, long run (make test runs a few hundred clauses).
fuzz: $(STAMP)
	WHERE_FUZZ_CLAUSES=20000 $(PY) -m pytest tests/where_fuzz/test_where_fuzz.py -q

clean:
	rm -rf $(VENV) tests/e2e/node_modules $(UI_DIR)/node_modules $(UI_DIR)/dist .mypy_cache .ruff_cache .pytest_cache
	rm -rf build shapes/compiled-sources.json *__mypyc.*.so
	find shapes syncd -name "*.so" -delete
