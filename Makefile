# The README's commands. Each builds .venv from the pinned versions first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test venv clean-venv

venv: $(STAMP)

# Rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
