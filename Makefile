# The same commands locally and in CI. Each target makes the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run` installs only what running needs (the `run` extra); the dev tools come with the
# `dev` extra, which includes it, so a venv made for the tests runs the stack as it is.
RUN_STAMP := $(VENV)/.installed-run-stamp

.PHONY: install run test test-fast test-aiokafka-lowest lint bench clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[run]'
	touch $(RUN_STAMP)

install: $(STAMP)

# prometheus, promtool and haproxy for the deploy tests (Debian packages, installed if missing;
# only the tests need them, not the services).
tools:
	deploy/tools/ensure-tools

run: $(RUN_STAMP)
	$(BIN)/wazza-hooks dev

# Three test files at a time, each file whole on one worker (its module state and fixtures
# together); every worker starts its own broker. `$(BIN)/pytest FILE` runs one file alone.
test: $(STAMP) tools
	$(BIN)/pytest -n 3 --dist loadfile

# The tests that need no broker, database or process (not marked `slow`): under a minute, for
# the edit-test loop; `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/pytest -m 'not slow' -q

# The lowest aiokafka the pin allows (pyproject.toml), in a venv of its own, against the tests of
# the code that reaches into aiokafka's internals (the ingester's direct produce path, its
# sender, the consumer runtime); `make test` covers the highest, which pip picks there.
AIOKAFKA_LOWEST ?= 0.13.0
LOWEST_VENV := .venv-aiokafka-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed-$(AIOKAFKA_LOWEST)
AIOKAFKA_TESTS := tests/ingest/test_publisher_direct.py tests/ingest/test_publisher_batched.py \
	tests/ingest/test_app_kafka.py tests/consumers/test_runtime.py

$(LOWEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
		'aiokafka==$(AIOKAFKA_LOWEST)'
	echo '*' > $(LOWEST_VENV)/.gitignore  # out of git, ruff and the like
	touch $(LOWEST_STAMP)

test-aiokafka-lowest: $(LOWEST_STAMP) tools
	$(LOWEST_VENV)/bin/python -c 'import aiokafka; assert aiokafka.__version__ == "$(AIOKAFKA_LOWEST)", aiokafka.__version__'
	$(LOWEST_VENV)/bin/pytest -p no:cacheprovider $(AIOKAFKA_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every benchmark runs even when one misses its bar; the exit code says whether all met theirs
# (the stack's: the store matched what simulate expects).
bench: $(STAMP)
	$(BIN)/python bench/ingest_bench.py; a=$$?; $(BIN)/python bench/consumer_bench.py; b=$$?; \
	$(BIN)/python bench/stack_bench.py; c=$$?; $(BIN)/python bench/attack_bench.py; d=$$?; \
	test $$a -eq 0 -a $$b -eq 0 -a $$c -eq 0 -a $$d -eq 0

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .pytest_cache .mypy_cache .ruff_cache
