# The two commands of README.md. Both build a virtual environment in .venv
# (override with VENV=...) and install infermeter into it as a wheel, the
# way a user gets it, so the tests see what a user would run.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test lint setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet '.[postgres,demo]'

setup-test: $(BIN)/python
	$(BIN)/pip install --quiet '.[test,dev]'

# Set up, show the demo, then run the agent on the embedded store (SQLite in
# the data directory) in the foreground.
run: setup
	$(BIN)/infermeter demo
	$(BIN)/infermeter run

# Set up and run the whole test suite (PostgreSQL tests skip when no server answers).
test: setup-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check agent plugins migrations
	$(BIN)/mypy -p infermeter

clean:
	rm -rf $(VENV) build dist *.egg-info
