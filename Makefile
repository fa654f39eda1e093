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

.PHONY: test book pdf pdf-if-tex nbval site-assets assignments grade bench lab venv clean gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" 2>&1 | $(QUIET)
	$(BIN)/pip install -q -e ".[test,book]" 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, ddim_lib, nbval, jupytext" 
	touch $(STAMP)

# Every chapter is executed ONCE, by the site build (jupyter-cache); the PDF reuses those outputs
# and tests/test_notebooks_executed.py validates the executed copies (every cell ran, no error,
# every claim's check ran) instead of executing the chapters again.
test: $(STAMP) book pdf-if-tex
	$(BIN)/python -m pytest tests --durations=15

# GPU readiness (CUDA-only tests, training benchmark on the GPU; needs a CUDA build of torch).
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh

# An independent second execution of every chapter by nbval (not part of `make test`).
nbval: $(STAMP)
	rm -rf $(NB_BUILD) && mkdir -p $(NB_BUILD)
	$(BIN)/python tools/convert_notebooks.py notebooks $(NB_BUILD)
	$(BIN)/python -m pytest $(NB_BUILD) --nbval-lax --durations=15

# The site: built from the repository root (the chapters stay in notebooks/), every notebook
# executed, warnings are errors. MathJax 3 and the ipywidgets JavaScript come from the npm registry
# into build/ (installed only when missing) and are served from the site itself: no CDN.
SITE_NPM := build/site_npm
SITE_STATIC := build/site_static
NPM_PACKAGES := mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4

JB_BUILD := $(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml --path-output book
# jupyter-cache hashes only a notebook's code cells: when the library or the shipped results change,
# empty the cache (and the executed copies) so that every chapter runs again against them.
NB_CACHE_STAMP := book/_build/.nb-inputs
NB_INPUTS := $(shell find ddim_lib results -type f -not -name '*.pyc' -not -path '*/__pycache__/*' 2>/dev/null)

$(NB_CACHE_STAMP): $(NB_INPUTS) pyproject.toml
	rm -rf book/_build/.jupyter_cache book/_build/jupyter_execute
	mkdir -p $(dir $@) && touch $@

book: $(STAMP) site-assets $(NB_CACHE_STAMP)
	$(JB_BUILD) -W --keep-going

# The whole book as one PDF (Sphinx's LaTeX writer, XeLaTeX; see README "The book as a PDF").
# Needs Debian's texlive-xetex texlive-latex-extra latexmk texlive-fonts-recommended
# fonts-freefont-otf xindy (.ci/run installs them). Executed outputs come from the cache.
PDF := book/_build/latex/ddim-derived-and-verified.pdf

pdf: $(STAMP) site-assets $(NB_CACHE_STAMP)
	$(JB_BUILD) --builder pdflatex -W --keep-going
	@echo "$(PDF): $$(pdfinfo $(PDF) 2>/dev/null | sed -n 's/^Pages: *//p') pages"

# `make test` builds the PDF when TeX is installed (CI installs it); tests/test_pdf.py requires it in CI.
pdf-if-tex:
	@if command -v xelatex >/dev/null && command -v latexmk >/dev/null; then $(MAKE) --no-print-directory pdf; \
	else echo "xelatex/latexmk not installed: the PDF is not built (README: The book as a PDF)"; fi

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

# Grade a folder of submitted notebooks locally (no Docker) into one CSV of per-question scores:
#   make grade ASSIGNMENT=generalised_step SUBMISSIONS=dir [GRADES=out.csv]   (after `make assignments`)
GRADES ?= build/grades/$(ASSIGNMENT).csv

grade:
	@test -n "$(ASSIGNMENT)" -a -n "$(SUBMISSIONS)" || \
	  { echo "usage: make grade ASSIGNMENT=name SUBMISSIONS=dir [GRADES=out.csv]" >&2; exit 2; }
	$(BIN)/python tools/build_assignments.py grade "$(ASSIGNMENTS_BUILD)/$(ASSIGNMENT)" "$(SUBMISSIONS)" "$(GRADES)"

# Benchmarks against the peers: a table on stdout and build/bench/results.json (see benchmarks/README.md).
# diffusers is the benchmark-only extra, installed here when missing; the chapters and the whole book
# are timed too (--notebooks), which needs the site assets.
bench: $(STAMP) site-assets
	$(BIN)/python -c "import diffusers" 2>/dev/null || $(BIN)/pip install -q -e ".[bench]" 2>&1 | $(QUIET)
	$(BIN)/python -m benchmarks.run --notebooks

# JupyterLab on the chapters: .md files open as notebooks on a double-click (a setting of this
# project's .venv, not of the user's ~/.jupyter); notebooks/jupytext.toml keeps saved chapters byte-identical.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

$(LAB_OVERRIDES): tools/lab_overrides.json $(STAMP)
	mkdir -p $(dir $@) && cp tools/lab_overrides.json $@

lab: $(STAMP) $(LAB_OVERRIDES)
	$(BIN)/jupyter lab notebooks $$(test "$$(id -u)" = 0 && echo --allow-root)

clean:
	rm -rf build book/_build .pytest_cache
