# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.10+:
#   make demo   - create .venv, install, run the end-to-end neighbourhood demo
#   make test   - create .venv, install dev deps (+ mosquitto, postgresql, chromium via apt when root), run the whole suite,
#                 then the 32-bit QEMU target's HIL tests when its MicroPython source is present
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meterveil-installed
DEMO_ARGS ?=
PYTEST_ARGS ?= -q

.PHONY: demo test lint contracts bench vectors mosquitto postgresql chromium clean qemu qemu-toolchain test-qemu

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meterveil demo $(DEMO_ARGS)

test: $(STAMP) mosquitto postgresql chromium qemu
	$(VENV)/bin/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-qemu

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

# The 32-bit target: MicroPython's qemu port (MPS2-AN385, Cortex-M3) with our board directory,
# built out of tree in build/qemu from the vendored source or MICROPYTHON_SRC=path/to/micropython
# (a checkout at v1.28.0 with lib/axtls). Without either, it says so and does nothing.
QEMU_TARBALL ?= ../shared/vendor/micropython-1.28.0-qemu-src.tar.gz
MICROPYTHON_SRC ?=
QEMU_BUILD := $(CURDIR)/build/qemu
QEMU_BOARD_DIR := $(CURDIR)/firmware/boards/qemu_mps2_an385
QEMU_FW := $(QEMU_BUILD)/fw/firmware.elf
QEMU_SRC := $(if $(MICROPYTHON_SRC),$(abspath $(MICROPYTHON_SRC)),$(if $(wildcard $(QEMU_TARBALL)),$(QEMU_BUILD)/micropython-1.28.0))
QEMU_JOBS ?= 2

ifeq ($(QEMU_SRC),)
qemu:
	@echo "qemu: skipped: no MicroPython source ($(QEMU_TARBALL) is absent and MICROPYTHON_SRC is unset)"
test-qemu:
	@echo "test-qemu: skipped: the QEMU firmware is not built (no MicroPython source, see 'make qemu')"
else
qemu: $(QEMU_FW)

$(QEMU_BUILD)/micropython-1.28.0/py/mpconfig.h: $(QEMU_TARBALL)
	mkdir -p $(QEMU_BUILD)
	tar -xzf $(QEMU_TARBALL) -C $(QEMU_BUILD)
	touch $@

$(QEMU_BUILD)/mpy-cross/mpy-cross: $(QEMU_SRC)/py/mpconfig.h
	GIT_CEILING_DIRECTORIES=$(QEMU_BUILD) $(MAKE) -C $(QEMU_SRC)/mpy-cross -j$(QEMU_JOBS) BUILD=$(QEMU_BUILD)/mpy-cross

# FORCE-like: the port's own make decides what is stale (board files, frozen firmware sources).
$(QEMU_FW): $(QEMU_BUILD)/mpy-cross/mpy-cross qemu-toolchain FORCE
	GIT_CEILING_DIRECTORIES=$(QEMU_BUILD) $(MAKE) -C $(QEMU_SRC)/ports/qemu -j$(QEMU_JOBS) BOARD=MPS2_AN385 BOARD_DIR=$(QEMU_BOARD_DIR) \
	  BUILD=$(QEMU_BUILD)/fw MICROPY_MPYCROSS=$(QEMU_BUILD)/mpy-cross/mpy-cross MICROPY_MPYCROSS_DEPENDENCY=

test-qemu: $(STAMP) qemu
	$(VENV)/bin/pytest hil_tests --target qemu $(PYTEST_ARGS)
endif

FORCE:

# Cross compiler, newlib and the emulator for the QEMU target, like mosquitto: apt-get as root.
qemu-toolchain:
	@missing=""; \
	command -v arm-none-eabi-gcc >/dev/null 2>&1 || missing="$$missing gcc-arm-none-eabi"; \
	arm-none-eabi-gcc -print-file-name=libc.a 2>/dev/null | grep -q / || missing="$$missing libnewlib-arm-none-eabi"; \
	command -v qemu-system-arm >/dev/null 2>&1 || missing="$$missing qemu-system-arm"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "missing for the QEMU target:$$missing: install with 'sudo apt-get install -y$$missing', then re-run"; exit 1; fi

# The browser tests drive Debian's chromium with Playwright (Playwright's own browser download is not
# needed): install it when we can, else say how.
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing: install it with 'sudo apt-get install -y chromium' (the browser tests drive it with Playwright), then re-run make test"; exit 1; fi

# The store tests run against a throwaway PostgreSQL cluster too (tests/pgutil.py starts it as the
# `postgres` user the package creates; only the server binaries are used, no system cluster).
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing postgresql with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL is missing: install it with 'sudo apt-get install -y postgresql' (macOS: 'brew install postgresql'), then re-run make test"; exit 1; fi

clean:
	rm -rf build demo-out .pytest_cache
