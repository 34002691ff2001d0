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


def test_lookup_table_linears_by_hand():
    """linear="lut" (T-MAC): hidden 64, MLP 128, one layer, vocab 10; 2 bit planes, 2.5 bits a weight."""
    shape = dict(hidden=64, intermediate=128, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=64, vocab=10)
    e = estimate_decode_energy(shape, linear="lut", lut_planes=2, lut_weight_bits=2.5, context_len=1)
    # body: q, k, v, o 64x64, gate, up 64->128, down 128->64: 40960 weights, a lookup per plane per 4
    assert e.linear_lookups == 40960 // 4 * 2
    # per (output, group of 64): 2 muls, 2 adds -> 640 groups; tables: 16 per 4 inputs -> 128 tables;
    # the 64 x 10 head as fp32 multiply-adds
    assert e.linear_muls == 2 * 640 + 16 * 128 + 640 and e.linear_adds == 2 * 640 + 16 * 128 + 630
    assert e.weight_bytes == 40960 * 2.5 / 8 + 640 + 64 * 4  # body, int8 head, one fp32 embedding row
    assert "table lookups" in format_report(e)
    lookup_pj = e.linear_lookups * (op_energy_pj("int8", "add") + 0.1 * 16 / 32)
    dense = estimate_decode_energy(shape, context_len=1)
    assert e.compute_pj == pytest.approx(dense.compute_pj - (dense.linear_muls * 3.7 + dense.linear_adds * 0.9)
                                         + e.linear_muls * 3.7 + e.linear_adds * 0.9 + lookup_pj)
