# The same commands locally and in CI. Each target makes the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint bench clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# prometheus, promtool and haproxy for the deploy tests (Debian packages, installed if missing;
# only the tests need them, not the services).
tools:
	deploy/tools/ensure-tools

run: $(STAMP)
	$(BIN)/wazza-hooks dev

# Three test files at a time, each file whole on one worker (its module state and fixtures
# together); every worker starts its own broker. `$(BIN)/pytest FILE` runs one file alone.
test: $(STAMP) tools
	$(BIN)/pytest -n 3 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every benchmark runs even when one misses its bar; the exit code says whether all met theirs
# (the stack's: the store matched what simulate expects).
bench: $(STAMP)
	$(BIN)/python bench/ingest_bench.py; a=$$?; $(BIN)/python bench/consumer_bench.py; b=$$?; \
	$(BIN)/python bench/stack_bench.py; c=$$?; $(BIN)/python bench/attack_bench.py; d=$$?; \
	test $$a -eq 0 -a $$b -eq 0 -a $$c -eq 0 -a $$d -eq 0

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
