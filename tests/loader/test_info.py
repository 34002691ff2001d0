"""`ember info`: the weight memory it predicts from the file equals what the loaded model holds."""

from __future__ import annotations

import pytest

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
    """tmac-w2/w4: packed_bytes per projection (held to the packed tensors in
    tests/kernels/test_linear_tmac.py), and an energy estimate priced as table lookups."""
    infos = {lin: model_info(EngineConfig(linear=lin, dtype="fp32"), energy=True) for lin in ("int4", "tmac-w2", "tmac-w4")}
    sizes = {lin: info["weight_bytes_loaded"] for lin, info in infos.items()}
    assert sizes["tmac-w2"] < sizes["tmac-w4"] < sizes["int4"]
    assert infos["tmac-w2"]["energy"]["linear_lookups"] * 2 == infos["tmac-w4"]["energy"]["linear_lookups"] > 0
    assert infos["tmac-w2"]["energy"]["total_pj"] < infos["tmac-w4"]["energy"]["total_pj"] < infos["int4"]["energy"]["total_pj"]
    assert "table lookups" in format_info(infos["tmac-w2"])
