# Kyodo: two commands do all the set-up on a fresh machine.
#   make demo   start a local 4-organization network and run the sample applications
#   make test   create the environment, run the linters and the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
KYODO   = $(VENV)/bin/kyodo
STAMP   = $(VENV)/.installed
NETWORK ?= kyodo-network
ORGS    ?= 4

.PHONY: all venv demo demo-down test test-slow lint bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(KYODO) network up --orgs $(ORGS) --dir $(NETWORK)
	$(PY) examples/asset_transfer_demo.py --dir $(NETWORK)
	$(PY) examples/payments_demo.py --dir $(NETWORK)

demo-down: $(STAMP)
	$(KYODO) network down --dir $(NETWORK) --purge

lint: $(STAMP)
	$(PY) -m ruff check kyodo tests bench examples samples
	$(PY) -m mypy kyodo
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/throughput.py --clients 16 --duration 10 --dir $(NETWORK)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
