"""`ember info`: the weight memory it predicts from the file equals what the loaded model holds."""

from __future__ import annotations

import pytest

from ember.config import EngineConfig
from ember.info import format_info, model_info


@pytest.mark.parametrize("linear, fixture", [("dense", "ember_lm"), ("int8", "ember_lm_int8"), ("int4", "ember_lm_int4")])
def test_predicted_weight_bytes_match_the_loaded_model(request, linear, fixture):
    info = model_info(EngineConfig(linear=linear))
    assert info["weight_bytes_loaded"] == request.getfixturevalue(fixture).model.weight_bytes()
    assert f"once loaded (linear {linear}, dtype fp32)" in format_info(info)


def test_quantized_weights_are_smaller():
    sizes = {lin: model_info(EngineConfig(linear=lin))["weight_bytes_loaded"] for lin in ("dense", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["dense"] / 2
