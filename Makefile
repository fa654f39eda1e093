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

.PHONY: test book site-assets assignments bench lab venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET)
	$(BIN)/pip install -q -e ".[test,book]" 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, ddim_lib, nbval, jupytext" 
	touch $(STAMP)

test: $(STAMP) book
	rm -rf $(NB_BUILD) && mkdir -p $(NB_BUILD)
	$(BIN)/python tools/convert_notebooks.py notebooks $(NB_BUILD)
	# one pytest run: the library tests and every chapter executed by nbval
	$(BIN)/python -m pytest tests $(NB_BUILD) --nbval-lax --durations=15

# The site: built from the repository root (the chapters stay in notebooks/), every notebook
# executed, warnings are errors. MathJax 3 and the ipywidgets JavaScript come from the npm registry
# into build/ (installed only when missing) and are served from the site itself: no CDN.
SITE_NPM := build/site_npm
SITE_STATIC := build/site_static
NPM_PACKAGES := mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4

book: $(STAMP) site-assets
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml --path-output book \
	  -W --keep-going

site-assets: $(SITE_STATIC)/.complete

$(SITE_STATIC)/.complete:
	test -f $(SITE_NPM)/node_modules/mathjax/es5/tex-chtml.js || \
	  npm install --prefix $(SITE_NPM) --no-audit --no-fund --loglevel=error $(NPM_PACKAGES)
	rm -rf $(SITE_STATIC) && mkdir -p $(SITE_STATIC)/widgets
	cp -r $(SITE_NPM)/node_modules/mathjax/es5 $(SITE_STATIC)/mathjax
	cp $(SITE_NPM)/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js \
	  $(SITE_NPM)/node_modules/requirejs/require.js $(SITE_STATIC)/widgets/
	touch $@

# Classroom assignments: otter-grader master notebooks -> student versions and autograder zips.
ASSIGNMENTS_BUILD := build/assignments

assignments: $(STAMP)
	$(BIN)/python tools/build_assignments.py assignments $(ASSIGNMENTS_BUILD)

# Benchmarks against the peers: a table on stdout and build/bench/results.json (see benchmarks/README.md).
# diffusers is the benchmark-only extra, installed here when missing; the chapters and the whole book
# are timed too (--notebooks), which needs the site assets.
bench: $(STAMP) site-assets
	$(BIN)/python -c "import diffusers" 2>/dev/null || $(BIN)/pip install -q -e ".[bench]" 2>&1 | $(QUIET)
	$(BIN)/python -m benchmarks.run --notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build book/_build .pytest_cache
