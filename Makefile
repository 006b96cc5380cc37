# export-worker: everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.base-installed
DEV    := $(VENV)/.dev-installed
PYTEST_ARGS ?=

.PHONY: install install-dev browser demo test lint format chaos bench broker-jars clean

$(BASE): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

$(DEV): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BASE)
install-dev: $(DEV)

broker-jars: $(BASE)          ## fetch the Apache Kafka jars into the cache
	$(PY) -m worker.embedded

demo: $(BASE)                 ## broker + simulators + worker + sample requests, live
	$(VENV)/bin/export-worker demo

browser:                      ## Debian's chromium + chromium-driver for the console's browser tests
	bash .ci/install-browser

test: $(DEV) browser          ## the whole suite (real Kafka, real HTTP simulators, a real browser)
	$(PY) -m worker.embedded
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

chaos: $(DEV)                 ## kill -9 workers and the broker under load, then the adversarial run; one line each
	$(PY) -m tests.chaos
	$(PY) -m tests.adversarial

bench: $(DEV)                 ## benchmarks against raw baselines
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .demo
