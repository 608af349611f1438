# Two set-up commands: `make book` builds the whole book, `make test` runs the tests.
# Each creates (or reuses) .venv and installs what it needs; torch is pinned first so
# pip takes the CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PARAMS ?= default
STAMP  := $(VENV)/.mechlib-installed

.PHONY: install book test bench organism clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/python -m mechlib build --params $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python scripts/bench_eval.py

organism: $(STAMP)
	$(BIN)/python -m mechlib organism

clean:
	rm -rf _build book/chapters book/_assets
