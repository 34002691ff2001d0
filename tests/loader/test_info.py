"""`ember info`: the weight memory it predicts from the file equals what the loaded model holds."""

from __future__ import annotations

import pytest
import torch

from ember.config import EngineConfig
from ember.info import format_info, model_info


@pytest.mark.parametrize("linear, fixture", [("dense", "ember_lm"), ("int8", "ember_lm_int8"), ("int4", "ember_lm_int4")])
def test_predicted_weight_bytes_match_the_loaded_model(request, linear, fixture):
    info = model_info(EngineConfig(linear=linear, dtype="fp32"))
    assert info["auto"] == []  # nothing was left to `auto`
    assert info["weight_bytes_loaded"] == request.getfixturevalue(fixture).model.weight_bytes()
    assert f"once loaded (linear {linear}, dtype fp32)" in format_info(info)


def test_quantized_weights_are_smaller():
    sizes = {lin: model_info(EngineConfig(linear=lin, dtype="fp32"))["weight_bytes_loaded"] for lin in ("dense", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["dense"] / 2


def test_info_says_what_auto_chose_and_why():
    from ember.kernels.dtype_auto import choose_dtype

    info = model_info(EngineConfig())  # the defaults: linear auto, dtype auto
    dtype = choose_dtype("int4")
    assert (info["linear"], info["dtype"]) == ("int4", dtype.value)
    assert info["auto"] == ["linear auto -> int4 (GGUF Q4_1 projections kept as stored)",
                            f"dtype auto -> {dtype.value} ({dtype.reason})"]
    text = format_info(info)
    assert "auto          linear auto -> int4 (GGUF Q4_1 projections kept as stored)" in text
    assert f"once loaded (linear int4, dtype {dtype.value})" in text


def test_lookup_table_methods_predict_their_memory_and_energy():
    """tmac-w2: the projections at packed_bytes (held to the packed tensors in
    tests/kernels/test_linear_tmac.py), the rest as for int4 (float embedding, int8 head); its
    energy priced as table lookups. One `model_info` (two seconds each), the rest from its output."""
    from ember.kernels.linear import get_linear_method
    from ember.numerics.energy import DecoderShape, estimate_decode_energy

    info = model_info(EngineConfig(linear="tmac-w2", dtype="fp32"), energy=True)
    assert "table lookups" in format_info(info)
    shapes = [info["layer_shapes"][name] for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")]
    w2, int4, int8 = (get_linear_method(name) for name in ("tmac-w2", "int4", "int8"))
    hidden, vocab = info["hidden_size"], info["vocab_size"]
    per_layer = sum(w2.packed_bytes(o, i, torch.float32) for o, i in shapes) + 2 * hidden * 4  # + the two norms
    head = int8.packed_bytes(vocab, hidden, torch.float32)
    assert info["weight_bytes_loaded"] == (vocab + 1) * hidden * 4 + info["layers"] * per_layer + head
    shape = DecoderShape(hidden=info["hidden_size"], intermediate=info["intermediate_size"], n_layers=info["layers"],
                         n_heads=info["heads"], n_kv_heads=info["kv_heads"], head_dim=info["head_dim"],
                         vocab=info["vocab_size"])
    int4_energy = estimate_decode_energy(shape, **int4.energy_model())
    assert info["energy"]["linear_lookups"] > 0 and info["energy"]["total_pj"] < int4_energy.total_pj


def test_a_scratch_pool_that_would_take_much_of_a_small_cache_caps_the_sequences_instead():
    """KIVI's residual pool has a slot per running sequence: at 48 MiB, a slot for each of 64
    sequences would take about half the cache. The pool takes at most a quarter, the sequences
    a step holds are capped to its slots, and `ember info` says so and which flags move it; at
    the default 1 GiB nothing is capped."""
    small = model_info(EngineConfig(kv_cache_dtype="kivi4", kv_cache_memory="48MiB", max_num_seqs=64))
    assert 0 < small["kv_scratch_bytes"] <= 0.25 * small["kv_cache_bytes"]
    assert 1 <= small["max_num_seqs"] < 64 and small["kv_scratch_slots"] == small["max_num_seqs"] + 2
    text = format_info(small)
    assert f"max_num_seqs 64 -> {small['max_num_seqs']}" in text and "a larger --kv-cache-memory" in text
    # an explicit lower --max-num-seqs below the cap is kept as given, and leaves more to blocks
    fewer = model_info(EngineConfig(kv_cache_dtype="kivi4", kv_cache_memory="48MiB", max_num_seqs=8))
    assert fewer["max_num_seqs"] == 8 and fewer["kv_seqs_note"] is None
    assert fewer["kv_cache_tokens"] > small["kv_cache_tokens"]
    default = model_info(EngineConfig(kv_cache_dtype="kivi4"))
    assert default["max_num_seqs"] == 64 and "note " not in format_info(default)
    # a capacity in tokens is not a memory budget: the pool is sized for every sequence, with a hint
    tokens = model_info(EngineConfig(kv_cache_dtype="kivi4", kv_cache_tokens=2048, max_num_seqs=64))
    assert tokens["max_num_seqs"] == 64
    assert "a lower --max-num-seqs leaves more of it to blocks" in format_info(tokens)
