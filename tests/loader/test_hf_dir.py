"""Loading a Hugging Face model directory (config.json + *.safetensors + tokenizer.json).

The directory is written by transformers itself from the GGUF-loaded oracle, so the same
weights reach Ember by two routes (GGUF and HF dir) and must give the same model. Tiny random
models written by transformers cover what the default model does not: untied output head,
other head counts, Qwen2's QKV biases.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from ember.kernels.attention import AttentionMetadata
from ember.loader import load_model, read_model_config
from ember.loader.tokenizer import EmberTokenizer

from .builders import write_byte_tokenizer_json
from .corpus import TRICKY

transformers = pytest.importorskip("transformers")


def logits_of(model, ids: list[int]) -> torch.Tensor:
    hidden = model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.no_cache([len(ids)]))
    return model.compute_logits(hidden)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_model, hf_tokenizer) -> str:
    """The oracle model saved by transformers as a plain safetensors checkpoint, with its tokenizer.

    A GGUF-loaded model refuses `save_pretrained` (its quantizer is not serializable), so its
    weights go into a plain LlamaForCausalLM built from the same config (on the meta device:
    nothing is initialised, the state dict is assigned).
    """
    path = tmp_path_factory.mktemp("smollm2_hf")
    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(hf_model.state_dict(), assign=True)
    plain.save_pretrained(path)
    hf_tokenizer.save_pretrained(path)
    files = set(os.listdir(path))
    assert {"config.json", "tokenizer.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    return str(path)


@pytest.fixture(scope="module")
def ember_from_dir(hf_dir):
    return load_model(hf_dir)


def test_config_matches_gguf(ember_from_dir, ember_lm, hf_dir):
    assert ember_from_dir.source_format == "hf"
    assert ember_lm.source_format == "gguf"
    ours, ref = ember_from_dir.config, ember_lm.config
    for field in ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim", "max_position", "tie_embeddings"):
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.rope_theta == pytest.approx(ref.rope_theta)
    assert ours.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert ours.rope_scaling in (None, {}) and ref.rope_scaling is None
    assert read_model_config(hf_dir) == (ours, "hf")
    assert (ref.num_heads, ref.num_kv_heads, ref.tie_embeddings) == (9, 3, True)  # SmolLM2-135M


def test_logits_match_gguf_route(ember_from_dir, ember_lm, topics_text):
    ids = ember_lm.tokenizer.encode(topics_text[:2000])[:256]
    ours, ref = logits_of(ember_from_dir.model, ids), logits_of(ember_lm.model, ids)
    # Same fp32 weights by two routes (GGUF unpermuted by us vs. by transformers): only
    # floating-point noise may differ.
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_tokenizer_from_dir_matches_gguf(ember_from_dir, ember_lm, hf_dir, topics_text):
    ours, ref = EmberTokenizer.from_dir(hf_dir), ember_lm.tokenizer
    assert ember_from_dir.tokenizer.encode("warm-up") == ours.encode("warm-up")
    for text in TRICKY + [topics_text[:20_000]]:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, repr(text[:80])
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


def test_tokenizer_from_dir_fields(ember_from_dir, ember_lm):
    ours, ref = ember_from_dir.tokenizer, ember_lm.tokenizer
    assert ours.bos_token_id == ref.bos_token_id
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.eos_token_id in ours.stop_token_ids
    assert ours.vocab_size == ref.vocab_size
    assert ours.chat_template == ref.chat_template


# --- tiny random models written by transformers -----------------------------------------------

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)


@pytest.mark.parametrize("arch", ["llama", "llama_untied_theta", "qwen2"])
def test_tiny_random_model_matches_transformers(tmp_path, arch):
    torch.manual_seed(0)
    if arch == "qwen2":
        config = transformers.Qwen2Config(**TINY, tie_word_embeddings=False, use_sliding_window=False)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        extra = {"tie_word_embeddings": arch == "llama"}
        if arch == "llama_untied_theta":
            extra["rope_theta"] = 500.0
        config = transformers.LlamaConfig(**TINY, **extra)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # norms start at 1; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.5 * torch.rand_like(p))
            elif name.endswith("bias"):  # Qwen2's QKV biases start at zero
                p.normal_(0, 0.5)
    model.eval().save_pretrained(tmp_path)
    write_byte_tokenizer_json(tmp_path)

    lm = load_model(str(tmp_path))
    assert lm.config.tie_embeddings == (arch == "llama")
    if arch == "llama_untied_theta":
        assert lm.config.rope_theta == 500.0
    ids = torch.randint(0, TINY["vocab_size"], (40,)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits_of(lm.model, ids), ref, atol=1e-4, rtol=1e-4)
