# The README's commands. Each builds .venv from the pinned versions first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv clean-venv

venv: $(STAMP)

# Rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The whole workflow on the default config (the simulated study). The venv's
# bin/ goes first on PATH so that every rule finds its `cortexflow` command.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all --workflow-profile workflow/profiles/default
	@echo
	@echo "Results:  results/sim/summary.parquet, results/sim/comparisons.parquet"
	@echo "Summary:  results/sim/summary.md   figures: results/sim/figures/"
	@echo "Report:   $(BIN)/snakemake --report report.html   (a self-contained HTML report)"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
