# The two commands: `make run` and `make test`. Both set themselves up on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Re-run the setup whenever the pinned dependencies or the setup script change.
SETUP_INPUTS := pyproject.toml tools/setup.sh tests/peers/ocpp_rpc/package-lock.json
STAMP := $(VENV)/.setup-$(shell cat $(SETUP_INPUTS) | sha1sum | cut -c1-12)
# Debian packages the test suite needs; tools/setup.sh installs the missing ones with apt-get.
SYSTEM_PACKAGES := mosquitto socat

.PHONY: setup run test lint typecheck unit bench soak clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@rm -f $(VENV)/.setup-*
	tools/setup.sh "$(PYTHON)" "$(VENV)" $(SYSTEM_PACKAGES)
	@touch $@

run: setup
	$(BIN)/voltpilot run --board sim --scenario boards/sim/scenarios/demo.toml $(ARGS)

test: lint typecheck unit

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# pytest exits 5 when it collects no tests; make treats that as the failure it is.
unit: setup
	$(BIN)/pytest -m "not soak" $(PYTEST_ARGS)

# Long property and soak runs; `make test` runs bounded versions of the same tests.
soak: setup
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest -m "soak or not soak" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
