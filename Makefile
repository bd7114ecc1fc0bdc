# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test lint bench faults clean

# The venv is rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The SAP CAP server the tests start (tests/cap): npm ci again only when its lock file changes.
# Node 20 (cds 9 needs >= 20; cds 10 would need 22).
CAP := tests/cap
$(CAP)/node_modules/.installed: $(CAP)/package.json $(CAP)/package-lock.json
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || \
	    { echo "the SAP CAP tests need Node.js 20 or later (node: $$(node --version 2>&1))"; exit 1; }
	cd $(CAP) && npm ci --no-audit --no-fund
	touch $@

# Dev connects to servers on this machine: private server URLs are allowed unless set otherwise.
run: $(VENV)/.installed  ## web + worker + cron on embedded defaults (Ctrl-C stops all)
	PORTAL_ALLOW_PRIVATE_SERVERS=$${PORTAL_ALLOW_PRIVATE_SERVERS:-true} $(BIN)/python -m jobs.launcher

test: $(VENV)/.installed $(CAP)/node_modules/.installed  ## the whole test suite
	$(BIN)/python -m pytest

lint: $(VENV)/.installed  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.installed $(CAP)/node_modules/.installed  ## benchmarks, printed as ratios to a baseline of the same run (bench/sync.py also syncs from SAP CAP)
	$(BIN)/python bench/orgstore.py
	$(BIN)/python bench/odata.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/streams.py

faults: $(VENV)/.installed  ## sync under faults (kills, server down, Redis restart…): one table
	$(BIN)/python -m tests.fault_suite --out docs/RELIABILITY.md

clean:
	rm -rf $(VENV) $(CAP)/node_modules .pytest_cache .mypy_cache .ruff_cache
