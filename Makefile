# Corral — the two commands a newcomer needs:
#   make up     set up and run the whole system locally (no Docker needed)
#   make test   set up and run every test
SHELL := /bin/bash
.DEFAULT_GOAL := help
BACKEND := backend
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: help uv sync up migrate migrations-check test lint typecheck contracts pytest bench fuzz clean-data

help:
	@echo "make up     - run Redis, the app on http://127.0.0.1:8078 and one worker per queue"
	@echo "make migrate - upgrade the database to the newest schema (CORRAL_DATABASE__URL)"
	@echo "make test   - lint, type-check, import contracts and the full test suite"
	@echo "make bench  - benchmarks (prints tables; see docs/performance.md)"
	@echo "make fuzz   - schemathesis over the whole API for 10 minutes (docs/api.md)"

uv:
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || \
		python3 -m pip install --user --quiet uv || python3 -m pip install --quiet --break-system-packages uv

sync: uv
	cd $(BACKEND) && $(UV) sync --all-extras --frozen

up: sync frontend-build
	@# As root, the python_q worker runs as the unprivileged user `corral` (bwrap refuses root).
	@if [ "$$(id -u)" = 0 ]; then bash $(BACKEND)/scripts/sandbox_host_setup.sh; fi
	cd $(BACKEND) && $(UV) run --frozen python -m corral.devstack

# The database `make up` uses unless CORRAL_DATABASE__URL says otherwise.
DEFAULT_DATABASE_URL := sqlite+aiosqlite:///$(CURDIR)/.corral/corral.db

migrate: sync
	cd $(BACKEND) && CORRAL_DATABASE__URL="$${CORRAL_DATABASE__URL:-$(DEFAULT_DATABASE_URL)}" \
		$(UV) run --frozen alembic upgrade head

# Models and migrations agree (`alembic check` on a fresh SQLite; tests also check PostgreSQL).
migrations-check: sync
	cd $(BACKEND) && tmp=$$(mktemp -d) && \
		CORRAL_DATABASE__URL="sqlite+aiosqlite:///$$tmp/check.db" $(UV) run --frozen alembic upgrade head && \
		CORRAL_DATABASE__URL="sqlite+aiosqlite:///$$tmp/check.db" $(UV) run --frozen alembic check; \
		status=$$?; rm -rf "$$tmp"; exit $$status

lint: sync
	cd $(BACKEND) && $(UV) run --frozen ruff check src tests ../bench
	cd $(BACKEND) && $(UV) run --frozen ruff format --check src tests ../bench

typecheck: sync
	cd $(BACKEND) && $(UV) run --frozen mypy

contracts: sync
	cd $(BACKEND) && $(UV) run --frozen lint-imports

pytest: sync
	cd $(BACKEND) && $(UV) run --frozen pytest $(PYTEST_ARGS)

test: lint typecheck contracts migrations-check frontend-test pytest

# Schemathesis over the whole API for 10 minutes with a fresh seed (make test runs 180 s).
fuzz: sync
	cd $(BACKEND) && CORRAL_FUZZ_SECONDS=$${CORRAL_FUZZ_SECONDS:-600} CORRAL_FUZZ_SEED=$$RANDOM \
		$(UV) run --frozen pytest tests/test_api_fuzz.py -q

# Every bench in one run, under 10 minutes on a 2-core machine: the slow ones with fewer
# repetitions than their defaults (run a bench alone for the full numbers).
BENCHES := "roundtrip --trace-n 100 --poll-n 2 --waits 5000" http_invoke task_runs "python_tool --runs 3" \
	pipeline "diamond --trials 2" "sse_fanout --seconds 10 --baseline 3" \
	"sessions --runs 8 --restore-runs 1" analysis "mcp --n 100" "turns --runs 100"
bench: sync
	@cd $(BACKEND) && start=$$(date +%s) && for b in $(BENCHES); do \
		set -- $$b; name=$$1; shift; \
		$(UV) run --frozen python ../bench/$$name.py "$$@" || exit 1; done; \
		echo "make bench: every bench in $$(( $$(date +%s) - start )) s"

clean-data:
	rm -rf .corral

# --- Frontend (React + TypeScript + Vite in frontend/; see frontend/README.md) -------------------
# `make up` should build it first (the app serves frontend/dist); `make test` should run
# frontend-test (Vitest + the API-client check). The Chromium end-to-end run is a pytest test
# (backend/tests/test_frontend_e2e.py), so `make pytest` runs it; it needs the chromium package.
NPM := npm
.PHONY: frontend-deps frontend-build frontend-test frontend-api

frontend/node_modules/.package-lock.json: frontend/package.json frontend/package-lock.json
	cd frontend && $(NPM) ci --no-audit --no-fund

frontend-deps: frontend/node_modules/.package-lock.json

frontend-build: frontend-deps
	cd frontend && $(NPM) run build

frontend-test: frontend-deps sync
	cd frontend && $(NPM) test && $(NPM) run api:check && $(NPM) run typecheck

# Regenerate the TypeScript API client after changing the app's routes or models.
frontend-api: frontend-deps sync
	cd frontend && $(NPM) run api:gen
