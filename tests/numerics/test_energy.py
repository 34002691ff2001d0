"""Op-count energy model against hand counts on a tiny decoder."""

from __future__ import annotations

import pytest

from ember.numerics.energy import (
    DRAM_PJ_PER_BYTE,
    DecoderShape,
    estimate_decode_energy,
    format_report,
    op_energy_pj,
)

# hidden 4, 1 layer, 2 query heads and 1 KV head of dim 2, MLP 8, vocab 10.
TINY = dict(hidden=4, intermediate=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=2, vocab=10)


def test_tiny_decoder_counts_by_hand():
    e = estimate_decode_energy(TINY, context_len=3)
    # Linear layers (in x out: muls, (in-1) x out: adds):
    #   q 4x4: 16, 12   k 4x2: 8, 6   v 4x2: 8, 6   o 4x4: 16, 12
    #   gate 4x8: 32, 24   up 4x8: 32, 24   down 8x4: 32, 28   lm head 4x10: 40, 30
    assert e.linear_muls == 16 + 8 + 8 + 16 + 32 + 32 + 32 + 40 == 184
    assert e.linear_adds == 12 + 6 + 6 + 12 + 24 + 24 + 28 + 30 == 142
    # Attention over 3 positions, 2 heads of dim 2:
    #   scores: 2 heads x 3 keys x 2 muls, 1 add each -> 12 muls, 6 adds
    #   values: 2 heads x 2 dims x 3 muls, 2 adds each -> 12 muls, 8 adds
    assert (e.attention_muls, e.attention_adds) == (24, 14)
    assert (e.multiplies, e.adds) == (208, 156)
    # Bytes (fp32): 144 layer weights + 40 LM head + one 4-wide embedding row = 188 x 4;
    # KV: K and V, 1 kv head x 2 dims x 4 bytes = 16 per position: 3 read, 1 written.
    assert e.weight_bytes == 752 and e.kv_read_bytes == 48 and e.kv_write_bytes == 16
    assert e.bytes_moved == 816
    assert e.compute_pj == pytest.approx(208 * 3.7 + 156 * 0.9)
    assert e.memory_pj == pytest.approx(816 * 162.5)
    assert e.total_pj == pytest.approx(208 * 3.7 + 156 * 0.9 + 816 * 162.5)


def test_tiny_decoder_int8_and_lmul_pricing():
    int8 = estimate_decode_energy(TINY, weight_dtype="int8", kv_dtype="int8", context_len=3)
    assert int8.weight_bytes == 188 and int8.kv_read_bytes == 12
    assert int8.compute_pj == pytest.approx(208 * 0.2 + 156 * 0.1)  # int8 mul, int32 accumulate
    lm = estimate_decode_energy(TINY, linear="lmul", attention_mul="lmul", context_len=3, lmul_mantissa_bits=4)
    per_lmul = 0.1 * (8 + 4) / 32  # an int add over 12 bits
    assert lm.compute_pj == pytest.approx(208 * per_lmul + 156 * 0.9)
    assert (lm.linear_mul_kind, lm.attention_mul_kind) == ("lmul", "lmul")


def test_attention_counts_grow_linearly_with_context_linear_counts_do_not():
    shape = DecoderShape.smollm2_135m()
    a, b = estimate_decode_energy(shape, context_len=100), estimate_decode_energy(shape, context_len=200)
    assert b.attention_muls == 2 * a.attention_muls
    assert b.linear_muls == a.linear_muls and b.kv_read_bytes == 2 * a.kv_read_bytes


def test_default_model_shape():
    shape = DecoderShape.smollm2_135m()
    # 30 x (576*576*2 + 576*192*2 + 3*576*1536) + 49152*576 (tied embedding / LM head)
    assert shape.parameters == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 49152 * 576 == 134_479_872
    e = estimate_decode_energy(shape, context_len=1024)
    assert e.linear_muls == shape.parameters  # one multiply per weight (LM head = embedding)
    assert e.attention_muls == 30 * 2 * 9 * 1024 * 64
    untied = DecoderShape(**{**shape.__dict__, "tied_embeddings": False})
    assert untied.parameters == shape.parameters + 49152 * 576
    assert estimate_decode_energy(untied, context_len=1024).weight_bytes == e.weight_bytes


def test_lmul_is_cheaper_than_every_float_multiply():
    for m in (2, 3, 4, 5, 7):
        assert op_energy_pj("lmul", "mul", m) < op_energy_pj("fp8", "mul") < op_energy_pj("bf16", "mul")
    assert op_energy_pj("bf16", "mul") < op_energy_pj("fp16", "mul") < op_energy_pj("fp32", "mul")
    with pytest.raises(KeyError):
        op_energy_pj("fp8", "add")


def test_report_is_labelled_as_an_estimate():
    text = format_report(estimate_decode_energy(DecoderShape.smollm2_135m(), context_len=512))
    assert "estimate from an op-count model, not a measurement" in text
    assert "Horowitz" in text and str(DRAM_PJ_PER_BYTE) in text


def test_bad_arguments():
    with pytest.raises(ValueError):
        estimate_decode_energy(TINY, linear="sparse")
    with pytest.raises(ValueError):
        estimate_decode_energy(TINY, attention_mul="approx")
    with pytest.raises(KeyError):
        estimate_decode_energy(TINY, weight_dtype="fp64")
    with pytest.raises(ValueError):
        estimate_decode_energy(TINY, context_len=0)
