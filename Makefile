# The whole set-up is `make dev` (run syncd on an embedded Postgres) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/e2e/node_modules/.installed

.PHONY: dev test lint typecheck pytest bench install js clean mutation

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

dev: $(STAMP)
	$(PY) -m syncd --dev --storage-dir .dev/storage

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

# Mutation testing of the pure core (settings in pyproject.toml, [tool.mutmut]): mutants of
# where_eval, convert, offset and xid against the fast tests, then the score per file, with the
# mutants judged equivalent (tests/mutation/equivalent.md) left out. Not part of `make test`.
mutation: $(STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(PY) -m tests.mutation.score

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) tests/e2e/node_modules .mypy_cache .ruff_cache .pytest_cache
