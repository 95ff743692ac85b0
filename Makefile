# Fast local checks (the same ones .ci/run runs before the test suite): `make check`.
PY ?= .venv/bin/python
BIN := $(dir $(PY))

.PHONY: check lint format imports types test test-fast

check: lint imports types

lint:
	$(BIN)ruff check .
	$(BIN)ruff format --check .

format:
	$(BIN)ruff check --fix .
	$(BIN)ruff format .

imports:
	$(BIN)lint-imports

types:
	$(BIN)mypy

test-fast:
	$(PY) -m pytest -q -m "not slow"

test:
	$(PY) -m pytest -ra
