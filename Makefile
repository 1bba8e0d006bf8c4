# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   - creates .venv, installs the package, starts an embedded PostgreSQL, runs the demo
#   make test   - creates .venv, installs everything, runs the whole suite (embedded PostgreSQL, or
#                 the server in TEST_DATABASE_URL when set)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo lab test test-pg15 reliability lint typecheck benchmark bench-latency clean validator

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runbook demo

# JupyterLab on notebooks/ with DATABASE_URL set to the embedded demo database (kept up until Ctrl-C)
lab: $(STAMP)
	$(BIN)/runbook lab

validator:
	@if command -v npm >/dev/null 2>&1 && [ -f tests/prisma_validator/package.json ]; then \
	  (cd tests/prisma_validator && npm install --silent --no-audit --no-fund >/dev/null 2>&1) \
	  || echo "note: could not install the Prisma schema validator; its tests will be skipped"; \
	else echo "note: Node/npm not found; the Prisma schema validator tests will be skipped"; fi

# tests/test_browser.py opens JupyterLab in Debian's chromium (apt-get install chromium; Playwright comes with
# the test extra and never downloads a browser): skipped with a message when it is missing, failed under CI=true
test: $(STAMP) validator
	$(BIN)/ruff check runbook_lib tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# the same suite against a throwaway PostgreSQL 15 server (the embedded one is 18): scripts/pg15.sh installs
# postgresql-15 when missing, starts it on a free local port and runs `make test` with TEST_DATABASE_URL set
test-pg15: $(STAMP) validator
	scripts/pg15.sh $(MAKE) --no-print-directory test

# crash trials, concurrent app writers, plan drift, bad input, production guard (fast and slow parts);
# ends with one line of figures, also written to .runbook/reliability-figures.txt
reliability: $(STAMP)
	$(BIN)/pytest tests/reliability $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check runbook_lib tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_token_reversal.py

# application transactions (redeem, spend, regenerate) timed while a token reversal executes, per execution mode;
# writes benchmarks/results/app_latency.md (BENCH_ARGS, e.g. --users 20000 --ledger-rows 100000)
bench-latency: $(STAMP)
	$(BIN)/python benchmarks/bench_app_latency.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .runbook incidents .pytest_cache .mypy_cache .ruff_cache
