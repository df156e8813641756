# The two commands of README.md. Both build a virtual environment in .venv
# (override with VENV=...) and install infermeter into it as a wheel, the
# way a user gets it, so the tests see what a user would run.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
# Test processes (pytest-xdist); each test file runs whole in one of them,
# so a module's shared store is built once. JOBS=0 runs in this process.
JOBS   ?= 2
XDIST   = -n $(JOBS) --dist loadfile

.PHONY: run test test-fast lint setup setup-test dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# build/ is removed first: setuptools keeps modules there that the tree no
# longer has, and the wheel would carry them.
setup: $(BIN)/python
	rm -rf build
	$(BIN)/pip install --quiet '.[postgres,demo]'

setup-test: $(BIN)/python
	rm -rf build
	$(BIN)/pip install --quiet '.[test,dev]'

# An editable install for working on the code: edits are seen without
# reinstalling (tests/test_install.py fails on a stale wheel otherwise).
# mypy cannot see through the editable mapping: `make lint` (through
# setup-test) puts a wheel back.
dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'

# Set up, show the demo, then run the agent on the embedded store (SQLite in
# the data directory) in the foreground.
run: setup
	$(BIN)/infermeter demo
	$(BIN)/infermeter run

# Set up and run the whole test suite (PostgreSQL tests skip when no server answers).
test: setup-test
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

# The suite without the tests marked slow (real agents, applications and
# runtimes as subprocesses): a quick check while working. `make test` runs all.
test-fast: setup-test
	$(BIN)/pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check agent plugins migrations
	$(BIN)/mypy -p infermeter

clean:
	rm -rf $(VENV) build dist *.egg-info
