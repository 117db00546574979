# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.10+:
#   make demo   - create .venv, install, run the end-to-end neighbourhood demo
#   make test   - create .venv, install dev deps (+ mosquitto via apt when root), run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meterveil-installed
DEMO_ARGS ?=
PYTEST_ARGS ?= -q

.PHONY: demo test lint contracts bench vectors mosquitto clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meterveil demo $(DEMO_ARGS)

test: $(STAMP) mosquitto
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Which role may import which (tools/import_contracts.py): a forbidden import fails CI.
contracts: $(STAMP)
	$(PY) -m meterveil.tools.import_contracts

bench: $(STAMP)
	$(PY) bench/run_all.py

vectors: $(STAMP)
	$(PY) -m meterveil.protocol.gen_vectors

# The integration tests start real mosquitto brokers; install it when we can, else say how.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing mosquitto with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	else echo "mosquitto is missing: install it with 'sudo apt-get install -y mosquitto mosquitto-clients' (macOS: 'brew install mosquitto'), then re-run make test"; exit 1; fi

clean:
	rm -rf build demo-out .pytest_cache
