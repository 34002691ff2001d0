"""Shared, session-scoped fixtures: the default model (loaded once by Ember and once by the oracle).

Loading is the slow part of the test suite (seconds per load), so every model is loaded at most
once per session and shared. Tests must treat these objects as read-only.

The oracle is Hugging Face transformers loading the same GGUF file; it is a test dependency
only, so fixtures that need it skip when it is not installed.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from ember.loader import default_model_path, load_model
from ember.loader.errors import ModelLoadError


@pytest.fixture(scope="session")
def default_gguf_path() -> str:
    try:
        return default_model_path()
    except ModelLoadError as exc:
        pytest.skip(f"default model not installed: {exc}")


@pytest.fixture(scope="session")
def ember_lm(default_gguf_path):
    """The default model loaded by Ember in fp32 (LoadedModel)."""
    return load_model(default_gguf_path, dtype=torch.float32)


@pytest.fixture(scope="session")
def ember_lm_bf16(default_gguf_path):
    """The default model loaded by Ember in bf16 (LoadedModel)."""
    return load_model(default_gguf_path, dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def ember_lm_int8(default_gguf_path):
    """The default model with `--linear int8` projections and head (LoadedModel)."""
    return load_model(default_gguf_path, dtype=torch.float32, linear="int8")


@pytest.fixture(scope="session")
def ember_lm_int4(default_gguf_path):
    """The default model with `--linear int4` projections and an int8 head (LoadedModel)."""
    return load_model(default_gguf_path, dtype=torch.float32, linear="int4")


@pytest.fixture(scope="session")
def hf_tokenizer(default_gguf_path):
    """transformers' tokenizer built from the same GGUF metadata (the oracle)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(default_gguf_path), gguf_file=os.path.basename(default_gguf_path)
    )


@pytest.fixture(scope="session")
def hf_model(default_gguf_path):
    """transformers' LlamaForCausalLM loaded from the same GGUF in fp32 (the oracle)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(default_gguf_path), gguf_file=os.path.basename(default_gguf_path), dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_model_bf16(hf_model):
    """The oracle in bf16, as `from_pretrained(..., dtype=torch.bfloat16)` builds it.

    That call dequantizes the GGUF to fp32 and rounds every parameter to bf16 while the rotary
    buffers stay fp32. Rounding a copy's parameters does the same (checked: identical logits)
    and saves a second ~10 s GGUF dequantization. Casting the whole module with `.to()` would
    NOT be the same: it would also round the rotary `inv_freq` buffer.
    """
    model = copy.deepcopy(hf_model)
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    return model.eval()


@pytest.fixture(scope="session")
def topics_text() -> str:
    """The evaluation text every machine has: Python's pydoc topics, joined with blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def force_cpu_variant(monkeypatch, variant: str) -> None:
    """Load the C kernels as `variant` for the rest of one test (EMBER_CPU_VARIANT, which
    kernels/native.py reads at every load; each variant's libraries are cached apart), or skip
    where this machine can't run it. The CPU's own variant is the default everywhere else."""
    from ember.kernels import native

    if variant not in native.supported_variants():
        pytest.skip(f"this CPU can't run the {variant} kernels")
    monkeypatch.setenv("EMBER_CPU_VARIANT", variant)
    if native.load("linear") is None:
        pytest.skip("the C kernels need a C compiler")
    assert native.variant() == variant


def _cpu_variants() -> list[str]:
    from ember.kernels import native

    return list(native.VARIANTS)


@pytest.fixture(params=_cpu_variants())
def cpu_variant(request, monkeypatch) -> str:
    """Each of the C kernels' CPU variants in turn (all listed, so a machine that lacks one shows
    it skipped): the kernel tests that take this fixture hold every variant to one reference."""
    force_cpu_variant(monkeypatch, request.param)
    return request.param
