# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use (and again when pyproject.toml changes);
# `make test` also installs the nats.js test client's packages (tests/js, with npm).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench ui screenshot clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The nats.js client test (tests/test_natsjs.py) runs tests/js/client.mjs with the exact packages of
# tests/js/package-lock.json; installed again only when the lock file changes.
JS_STAMP := tests/js/node_modules/.installed

$(JS_STAMP): tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund
	@touch $(JS_STAMP)

# The console's browser tests (tests/test_console.py) drive Debian's chromium through Playwright's
# executable_path; nothing downloads a browser. Installed (as root, with apt-get) when missing.
CHROMIUM       := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium

$(CHROMIUM_STAMP): $(STAMP)
	@test -x $(CHROMIUM) || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@test -x $(CHROMIUM) || { echo "make: $(CHROMIUM) is missing: apt-get install -y chromium (as root)" >&2; exit 1; }
	@touch $(CHROMIUM_STAMP)

DEMO_REQUEST := find the three customers who spent most in 2024 and write a report

demo: $(STAMP)
	$(BIN)/cadre run "$(DEMO_REQUEST)"
	@printf '\nThe report the workflow wrote (.cadre/workspace/reports/top_customers_2024.md):\n\n'
	@cat .cadre/workspace/reports/top_customers_2024.md
	@printf '\nEvery step is in the log: .venv/bin/cadre workflows, then .venv/bin/cadre events WF [--json]\n'

# One pytest worker per core (each with its own nats-server); TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= auto

test: $(STAMP) $(JS_STAMP) $(CHROMIUM_STAMP) lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# mypy cannot follow the install's folder mapping (bus/ -> cadre.bus, ...), so it checks a tree of
# links laid out as the installed package is: $(VENV)/typecheck/cadre/{bus,store,...} -> the folders.
TYPECHECK := $(VENV)/typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/cadre
	@for f in $(filter-out cadre/__pycache__,$(wildcard cadre/*)); do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/cadre/; done
	@for d in bus store planner actors; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/cadre/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml

# The web console of the local cadre (start `cadre up` first, or use `cadre up --ui`).
ui: $(STAMP)
	$(BIN)/cadre ui

# docs/img/console.png, the README's picture of the console: a scripted cadre, shot in chromium.
screenshot: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python bench/screenshot.py

# The bench extra: the durable peers bench/peers.py runs beside cadre (LangGraph, DBOS).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/log.py

clean:
	rm -rf $(VENV) .cadre .pytest_cache .mypy_cache .ruff_cache *.egg-info tests/js/node_modules
