# DDIM, derived and verified. `make test` and `make book` are the two commands; both create or
# refresh .venv first (reinstalling only when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU wheel of torch by default; GPU users: see README ("Train on your GPU").
TORCH_SPEC ?= torch==2.13.0
NB_BUILD := build/nb
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip's "Location ... is ignored" lines come from this machine's registry mirror config: drop them.
QUIET := sed -u '/is ignored: it is neither/d'

.PHONY: test book bench lab venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET)
	$(BIN)/pip install -q -e ".[test,book]" 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, ddim_lib, nbval, jupytext" 
	touch $(STAMP)

test: $(STAMP)
	rm -rf $(NB_BUILD) && mkdir -p $(NB_BUILD)
	$(BIN)/python tools/convert_notebooks.py notebooks $(NB_BUILD)
	# one pytest run: the library tests and every chapter executed by nbval
	$(BIN)/python -m pytest tests $(NB_BUILD) --nbval-lax --durations=15

book: $(STAMP)
	$(BIN)/jupyter-book build book -W --keep-going

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build book/_build .pytest_cache
