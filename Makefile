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

# Rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
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
