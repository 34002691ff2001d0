"""What the loaders say when a model cannot be loaded: one ModelLoadError whose message names the problem."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from ember.kernels.attention import AttentionMetadata
from ember.loader import load_model
from ember.loader.errors import ModelLoadError
from ember.loader.gguf import SUPPORTED_TYPES, GGUFFile

from .builders import (QT, llama_metadata, random_bytes_for, tiny_llama, write_byte_tokenizer_json, write_gguf,
                       write_llama_gguf)

EMBED_SHAPE_MISMATCH = r"tensor embed_tokens\.weight has shape \(320, 64\), expected \(320, 128\)"


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")  # builds the small random model the files are written from
    return tiny_llama(seed=7)


# --- files -------------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "no_such_model.gguf"
    with pytest.raises(ModelLoadError, match=re.escape(str(path))) as info:
        load_model(str(path))
    assert "not found" in str(info.value)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        GGUFFile(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file, not GGUF" + bytes(200))
    with pytest.raises(ModelLoadError, match=r"not a readable GGUF file") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_truncated_gguf_file(tmp_path, tiny):
    whole = write_llama_gguf(tmp_path / "whole.gguf", tiny)
    data = open(whole, "rb").read()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 3])  # valid header, metadata cut short or tensors missing
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        load_model(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        load_model(str(path))


# --- GGUF contents -----------------------------------------------------------------------------

def test_unknown_architecture(tmp_path):
    meta = {"bert.block_count": 2, "bert.embedding_length": 64, "bert.attention.head_count": 4,
            "bert.feed_forward_length": 128, "bert.context_length": 128}
    tensors = {"token_embd.weight": (np.zeros((8, 64), dtype=np.float32), QT.F32)}
    path = write_gguf(tmp_path / "bert.gguf", tensors, arch="bert", metadata=meta)
    with pytest.raises(ModelLoadError, match=r"unknown architecture 'bert'") as info:
        load_model(path)
    assert path in str(info.value) and "llama" in str(info.value)  # names the file and what is supported


@pytest.mark.parametrize("qtype", [QT.IQ4_NL, QT.IQ4_XS, QT.IQ2_XXS], ids=lambda t: t.name)
def test_unsupported_quantization_type(tmp_path, qtype):
    assert qtype.name not in SUPPORTED_TYPES
    path = write_gguf(tmp_path / "iq.gguf", {"w": (random_bytes_for((4, 256), qtype), qtype)}, arch="test")
    gf = GGUFFile(path)
    assert gf.tensor_type("w") == qtype.name
    with pytest.raises(ModelLoadError, match=rf"tensor w .* quantization type {qtype.name}.*not support"):
        gf.dequantize("w")


def test_unsupported_quantization_type_in_model(tmp_path):
    pytest.importorskip("transformers")
    model = tiny_llama(seed=7, hidden_size=256, intermediate_size=256)
    path = write_llama_gguf(tmp_path / "tiny-iq.gguf", model, qtypes={"blk.1.ffn_up.weight": QT.IQ4_NL})
    with pytest.raises(ModelLoadError, match=r"blk\.1\.ffn_up\.weight .* IQ4_NL"):
        load_model(path)


def test_missing_tensor(tmp_path, tiny):
    path = write_llama_gguf(tmp_path / "holes.gguf", tiny, skip=("blk.1.attn_v.weight",))
    with pytest.raises(ModelLoadError, match=r"missing weights: layers\.1\.self_attn\.v_proj\.weight"):
        load_model(path)


def test_gguf_metadata_disagrees_with_tensor_shapes(tmp_path, tiny):
    # metadata says 8 heads of 16, the tensors were written for 4 heads of 16 (q_proj [64, 64])
    path = write_llama_gguf(tmp_path / "shape.gguf", tiny,
                            metadata_overrides={"llama.embedding_length": 128,
                                                "llama.attention.head_count": 8})
    with pytest.raises(ModelLoadError, match=EMBED_SHAPE_MISMATCH):
        load_model(path)


def test_unsupported_gguf_tokenizer(tmp_path, tiny):
    path = write_llama_gguf(tmp_path / "spm.gguf", tiny, metadata_overrides={"tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelLoadError, match=r"tokenizer model 'llama' is not supported"):
        load_model(path)


# --- Hugging Face directories -------------------------------------------------------------------

@pytest.fixture
def hf_dir(tmp_path, tiny):
    """A complete, loadable HF directory written by transformers (plus a tokenizer.json)."""
    tiny.save_pretrained(tmp_path)
    write_byte_tokenizer_json(tmp_path)
    return tmp_path


def test_hf_dir_control_case_loads(hf_dir, tiny):
    lm = load_model(str(hf_dir))  # the directory the failure cases below break one thing in
    assert lm.source_format == "hf" and lm.config.hidden_size == tiny.config.hidden_size


def test_hf_dir_without_config(hf_dir):
    os.remove(hf_dir / "config.json")
    with pytest.raises(ModelLoadError, match=r"no config\.json in model directory") as info:
        load_model(str(hf_dir))
    assert str(hf_dir) in str(info.value)


def test_hf_dir_without_safetensors(hf_dir):
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            os.remove(hf_dir / name)
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors files in model directory") as info:
        load_model(str(hf_dir))
    assert str(hf_dir) in str(info.value)


def test_hf_dir_without_tokenizer(hf_dir):
    os.remove(hf_dir / "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"no tokenizer\.json in model directory"):
        load_model(str(hf_dir))


def _edit_config(hf_dir, **changes):
    cfg_path = hf_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def test_hf_dir_config_disagrees_with_weights(hf_dir):
    _edit_config(hf_dir, hidden_size=128, head_dim=32)
    with pytest.raises(ModelLoadError, match=EMBED_SHAPE_MISMATCH):
        load_model(str(hf_dir))


def test_hf_dir_config_disagrees_with_layer_weights(hf_dir):
    _edit_config(hf_dir, intermediate_size=100)
    with pytest.raises(ModelLoadError,
                       match=r"layers\.0\.mlp\.gate_proj\.weight has shape \(128, 64\), expected \(100, 64\)"):
        load_model(str(hf_dir))


def test_hf_dir_more_layers_than_weights(hf_dir):
    _edit_config(hf_dir, num_hidden_layers=3)
    with pytest.raises(ModelLoadError, match=r"missing weights: layers\.2\."):
        load_model(str(hf_dir))


def test_hf_dir_unknown_architecture(hf_dir):
    _edit_config(hf_dir, architectures=["BertForMaskedLM"])
    with pytest.raises(ModelLoadError, match=r"unknown architecture \['BertForMaskedLM'\]"):
        load_model(str(hf_dir))


def test_errors_are_value_errors():
    # Callers (CLI, server) may catch ValueError for bad user input.
    assert issubclass(ModelLoadError, ValueError)


def test_gguf_control_case_loads(tmp_path, tiny):
    """Control for the shape tests: the unmodified file loads and runs."""
    lm = load_model(write_llama_gguf(tmp_path / "ok.gguf", tiny))
    assert lm.config.hidden_size == 64
    hidden = lm.model(torch.tensor([1, 2, 3]), torch.arange(3), AttentionMetadata.no_cache([3]))
    assert torch.isfinite(lm.model.compute_logits(hidden)).all()


def test_gguf_missing_shape_metadata(tmp_path, tiny):
    meta = llama_metadata(tiny.config)
    del meta["llama.embedding_length"], meta["llama.block_count"]
    path = write_gguf(tmp_path / "nometa.gguf", {"token_embd.weight": (np.zeros((8, 64), np.float32), QT.F32)},
                      metadata=meta)
    with pytest.raises(ModelLoadError, match=r"lacks llama\.embedding_length, llama\.block_count") as info:
        load_model(path)
    assert path in str(info.value)


def test_hf_dir_config_missing_keys(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    del cfg["hidden_size"], cfg["num_attention_heads"]
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"config\.json lacks hidden_size, num_attention_heads"):
        load_model(str(hf_dir))


def test_hf_dir_config_not_json(hf_dir):
    (hf_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        load_model(str(hf_dir))
