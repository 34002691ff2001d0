"""`--linear auto` and `--dtype auto`: what they resolve to for each kind of file and CPU, and
that explicit values still force the old path."""

from __future__ import annotations

import pytest
import torch

from ember.config import DTYPES, EngineConfig
from ember.kernels import dtype_auto, native
from ember.kernels.linear.auto import choose_linear
from ember.loader import describe_model, load_model
from ember.loader.auto import resolve_auto

PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.mark.parametrize("types, method", [
    ({"Q4_1"}, "int4"), ({"Q4_0"}, "int4"), ({"Q4_0", "Q4_1"}, "int4"),
    ({"Q8_0"}, "int8"), ({"Q4_K", "Q6_K"}, "int8"), ({"Q4_1", "Q8_0"}, "int8"),
    ({"F32"}, "dense"), ({"F16"}, "dense"), ({"Q4_0", "F16"}, "dense"),
])
def test_gguf_storage_decides_the_method(types, method):
    choice = choose_linear("gguf", types)
    assert choice.value == method
    assert all(t in choice.reason for t in types)  # the reason names what the file stores


def test_the_reasons_say_what_happens_to_the_weights():
    assert choose_linear("gguf", {"Q4_1"}).reason == "GGUF Q4_1 projections kept as stored"
    assert "scale per row" in choose_linear("gguf", {"Q8_0"}).reason
    hf = choose_linear("hf", ())
    assert (hf.value, hf.reason) == ("dense", "Hugging Face directory: float weights stay dense")


@pytest.mark.parametrize("bf16_cpu", [False, True])
def test_dtype_follows_the_cpu_and_the_measurements(monkeypatch, bf16_cpu):
    monkeypatch.setattr(native, "cpu_has_bf16_gemm", lambda: bf16_cpu)
    for linear in ("dense", "int8", "int4", "not-measured"):
        choice = dtype_auto.choose_dtype(linear)
        measured_faster = dtype_auto.BF16_MEASURED.get(linear, (False, ""))[0]
        assert choice.value == ("bf16" if bf16_cpu and measured_faster else "fp32")
        if not bf16_cpu:
            assert "no native bf16 arithmetic" in choice.reason
    # what the measurements on a Sapphire Rapids said (benchmarks/README.md)
    assert dtype_auto.BF16_MEASURED["dense"][0] and dtype_auto.BF16_MEASURED["int8"][0]
    assert not dtype_auto.BF16_MEASURED["int4"][0]


def test_explicit_values_pass_through_without_notes():
    resolved = resolve_auto("dense", "fp32", "gguf", {"Q4_1"})
    assert (resolved.linear, resolved.dtype, resolved.notes) == ("dense", "fp32", ())
    resolved = resolve_auto("auto", "fp32", "gguf", {"Q4_1"})
    assert (resolved.linear, resolved.dtype) == ("int4", "fp32")
    assert resolved.notes == ("linear auto -> int4 (GGUF Q4_1 projections kept as stored)",)


def test_the_default_model_resolves_to_int4(default_gguf_path):
    _, fmt, stored = describe_model(default_gguf_path)
    assert (fmt, stored) == ("gguf", {"Q4_1"})
    resolved = resolve_auto("auto", "auto", fmt, stored)
    assert resolved.linear == "int4"
    assert resolved.dtype == dtype_auto.choose_dtype("int4").value
    assert resolved.notes[0] == "linear auto -> int4 (GGUF Q4_1 projections kept as stored)"
    assert resolved.notes[1].startswith(f"dtype auto -> {resolved.dtype} (")


def test_defaults_are_auto_and_bad_values_name_themselves():
    cfg = EngineConfig()
    assert (cfg.linear, cfg.dtype) == ("auto", "auto")
    with pytest.raises(ValueError, match="dtype 'auto' has no torch dtype"):
        cfg.torch_dtype
    with pytest.raises(ValueError, match=r"linear 'int3' is not one of: auto, bcq-w2"):
        EngineConfig(linear="int3")
    with pytest.raises(ValueError, match=r"dtype 'fp16' is not one of: auto, fp32, bf16"):
        EngineConfig(dtype="fp16")
    with pytest.raises(ValueError, match=r"dtype 'fp16' is not one of: auto, fp32, bf16"):
        load_model(None, dtype="fp16")


def _tiny_gguf(tmp_path, qtype, **sizes):
    pytest.importorskip("transformers")
    from tests.loader.builders import tiny_llama, write_llama_gguf

    model = tiny_llama(seed=11, **sizes)
    qtypes = {f"blk.{i}.{p}.weight": qtype for i in range(2) for p in PARTS}
    return write_llama_gguf(tmp_path / f"tiny-{qtype.name}.gguf", model, qtypes=qtypes)


@pytest.mark.parametrize("qtype, method", [("Q4_1", "int4"), ("Q4_0", "int4"), ("Q8_0", "int8"), ("F32", "dense")])
def test_load_model_auto_picks_the_method_per_file(tmp_path, qtype, method):
    from tests.loader.builders import QT

    lm = load_model(_tiny_gguf(tmp_path, QT[qtype]), dtype="auto", linear="auto")
    assert lm.linear == method
    assert {lin.method.name for layer in lm.model.layers
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)} == {method}
    assert lm.auto_notes[0].startswith(f"linear auto -> {method} (GGUF {qtype} projections")
    assert lm.model.dtype == DTYPES[dtype_auto.choose_dtype(method).value]


def test_a_hugging_face_directory_is_dense(tmp_path):
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from tests.loader.builders import tiny_llama, write_byte_tokenizer_json

    tiny_llama(seed=2).save_pretrained(tmp_path)
    write_byte_tokenizer_json(tmp_path)
    lm = load_model(str(tmp_path), dtype="fp32", linear="auto")
    assert lm.linear == "dense" and lm.model.layers[0].qkv_proj.method.name == "dense"
    assert lm.auto_notes == ("linear auto -> dense (Hugging Face directory: float weights stay dense)",)


def test_the_engine_gets_the_fused_step_where_int4_gets_it(tmp_path):
    """The auto path on a Q4_1 file is the `--linear int4` path: same method, same fused step;
    `--linear dense --dtype fp32` still forces the old one."""
    from ember import LLM
    from tests.loader.builders import QT

    path = _tiny_gguf(tmp_path, QT.Q4_1, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                      num_key_value_heads=2)
    opts = dict(kv_cache_tokens=256, threads=1)
    auto = LLM(path, **opts).engine
    int4 = LLM(path, linear="int4", dtype=auto.config.dtype, **opts).engine
    dense = LLM(path, linear="dense", dtype="fp32", **opts).engine
    assert auto.config.linear == "int4" and auto.config.dtype in ("fp32", "bf16")
    assert auto.auto_notes and int4.auto_notes == () and dense.auto_notes == ()
    assert (auto.runner.decoder is None) == (int4.runner.decoder is None)
    from ember.serve.server import startup_report
    lines = startup_report(auto)  # what `ember serve` prints once loaded
    assert lines[0] == "linear auto -> int4 (GGUF Q4_1 projections kept as stored)"
    assert lines[1].startswith(f"dtype auto -> {auto.config.dtype} (")
    if native.available():
        assert auto.runner.decoder is not None and auto.runner.decoder.takes_prefill
        assert auto.fused_decode_off_reason is None
        assert lines[2] == "decode steps: fused, one C call per step (prefill chunks too)"
    assert startup_report(dense)[0].startswith("decode steps: ")  # nothing left to `auto`
    assert (dense.config.linear, dense.config.dtype) == ("dense", "fp32")
    assert dense.model.layers[0].qkv_proj.method.name == "dense"
    assert dense.model.dtype == torch.float32
