# The README's two commands: `make serve` and `make test`. Everything else is a helper target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve build test lint bench model clean llmcompressor

# Re-installs only when pyproject.toml changed (the stamp is newer otherwise): a fast no-op.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml; pip finds the local CPU wheel (uv/poetry would fetch CUDA).
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# kvpress (the KV-eviction tests' peer) pins transformers<5.3, which would replace ours: --no-deps,
	# then only what it imports at load time (none of them touches torch or transformers).
	$(BIN)/python -m pip install --quiet --no-deps 'kvpress==0.5.5' && $(BIN)/python -m pip install --quiet cachetools datasets fire
	@touch $(STAMP)

install: $(STAMP)

build: install
	$(BIN)/atlas index
	$(BIN)/atlas build

serve: build
	$(BIN)/atlas serve --port $(PORT) --no-build

test: install
	$(BIN)/ruff check catalog reference_impls tests scripts
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check catalog reference_impls tests scripts
	$(BIN)/atlas validate

bench: install
	$(BIN)/atlas bench

model: install
	$(BIN)/python scripts/train_causal_lm.py

# llmcompressor (the comparison in `atlas bench perf`) pins transformers<=5.17, older than ours: it gets
# its own environment, with the same pinned CPU torch, and never touches .venv.
LLMC_VENV := .venv-llmcompressor
llmcompressor:
	@test -x $(LLMC_VENV)/bin/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LLMC_VENV)/bin/python -m pip install --quiet 'torch==2.13.0' 'llmcompressor==0.14.0.1'

clean:
	rm -rf build .atlas .pytest_cache .ruff_cache
