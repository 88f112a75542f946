# The README's commands. Each builds .venv from the pinned versions first:
# `make run` the runtime (requirements.txt), `make test` the runtime and the
# development tools (requirements-dev.txt), each behind its own stamp, so that
# `make test` after `make run` only adds the development pins.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test venv venv-dev clean-venv

venv: $(STAMP)

venv-dev: $(DEV_STAMP)

# Bytecode: pip compiles the ~12,700 installed modules one after another (71 s of a
# 141-s install here); installed with --no-compile and compiled by compileall on every
# core it took 40 s (110 s in all), the same .pyc files. As with pip, a module that does
# not compile (torch ships a Python 3.12-only test file) stays source: hence `|| true`.
COMPILE := $(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true

# Rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(COMPILE)
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-compile -r requirements-dev.txt
	$(COMPILE)
	touch $@

# The whole workflow on the default config (the simulated study). The venv's
# bin/ goes first on PATH so that every rule finds its `cortexflow` command.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all --workflow-profile workflow/profiles/default
	@echo
	@echo "Results:  results/sim/summary.parquet, results/sim/comparisons.parquet"
	@echo "Summary:  results/sim/summary.md   figures: results/sim/figures/"
	@echo "Report:   $(BIN)/snakemake --report report.html   (a self-contained HTML report)"

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean-venv:
	rm -rf $(VENV)
