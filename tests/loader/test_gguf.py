"""GGUF reading: dequantization of every promised type, llama.cpp's Q/K permutation, and a whole
model written as llama.cpp would and checked against transformers.

Quantized tensors are written with `gguf.quants.quantize` where the package can quantize the
type. It cannot quantize K-quants (Q4_K, Q5_K, Q6_K raise NotImplementedError), so those are
encoded here by a small independent encoder written from llama.cpp's block structs
(`block_q4_K`, `block_q5_K`, `block_q6_K` in ggml-common.h). Each tensor read back through
`GGUFFile.dequantize` must equal `gguf.quants.dequantize` of the stored bytes exactly and be
within the format's resolution of the original values.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from ember.kernels.attention import AttentionMetadata
from ember.loader import load_model
from ember.loader.gguf import SUPPORTED_TYPES, GGUFFile, hf_name, unpermute_qk

from .builders import QT, encode, llama_cpp_permute, tiny_llama, write_gguf, write_llama_gguf

QK_K = 256


# --- K-quant encoders (llama.cpp block layouts) ------------------------------------------------

def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _kquant_scales(x: np.ndarray, levels: int):
    """Asymmetric sub-block scales for Q4_K/Q5_K: x ~ d*sc[j]*q - dmin*m[j], q in [0, levels].

    x: [nb, 8, 32]. Returns fp16 d, dmin [nb], 6-bit sc, m [nb, 8] and q [nb, 8, 32].
    """
    lo = np.minimum(x.min(-1), 0.0)  # the offset only ever subtracts (m >= 0)
    hi = x.max(-1)
    scale = (hi - lo) / levels
    offset = -lo
    d = _f16(scale.max(-1) / 63)
    dmin = _f16(offset.max(-1) / 63)
    sc = np.clip(np.rint(_div(scale, d.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_div(offset, dmin.astype(np.float32)[:, None])), 0, 63).astype(np.uint8)
    step = d.astype(np.float32)[:, None, None] * sc[..., None]
    shift = dmin.astype(np.float32)[:, None, None] * m[..., None]
    q = np.clip(np.rint(_div(x + shift, step)), 0, levels).astype(np.uint8)
    return d, dmin, sc, m, q


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, and 0 where b is 0 (all-zero blocks)."""
    a, b = np.broadcast_arrays(a, b)
    return np.divide(a, b, out=np.zeros(a.shape, dtype=np.float32), where=b != 0)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12-byte `scales` of block_q4_K/q5_K (get_scale_min_k4 read backwards)."""
    packed = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return packed


def _pack_low_nibbles(q: np.ndarray) -> np.ndarray:
    """qs[128]: each 32-byte group holds sub-block 2i in the low and 2i+1 in the high nibble."""
    q = q.reshape(q.shape[0], 4, 2, 32)
    return ((q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)).reshape(q.shape[0], 128)


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    blocks = x.reshape(-1, 8, 32).astype(np.float32)
    d, dmin, sc, m, q = _kquant_scales(blocks, 15)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                          _pack_scales_k4(sc, m), _pack_low_nibbles(q)], axis=1)
    return out.reshape(rows, cols // QK_K * 144)


def encode_q5_k(x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    blocks = x.reshape(-1, 8, 32).astype(np.float32)
    d, dmin, sc, m, q = _kquant_scales(blocks, 31)
    # qh[l] bit j = bit 4 of element l of sub-block j
    qh = np.zeros((blocks.shape[0], 32), dtype=np.uint8)
    for j in range(8):
        qh |= ((q[:, j] >> 4) & 1) << j
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                          _pack_scales_k4(sc, m), qh, _pack_low_nibbles(q)], axis=1)
    return out.reshape(rows, cols // QK_K * 176)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """block_q6_K: ql[128], qh[64], int8 scales[16] (one per 16 values), fp16 d; q in [-32, 31]."""
    rows, cols = x.shape
    blocks = x.reshape(-1, 16, 16).astype(np.float32)
    sub = np.abs(blocks).max(-1) / 31.5  # sub-block step; 31.5 keeps +amax inside [-32, 31]
    d = _f16(sub.max(-1) / 127)
    scales = np.clip(np.rint(_div(sub, d.astype(np.float32)[:, None])), 1, 127).astype(np.int8)
    step = d.astype(np.float32)[:, None, None] * scales[..., None]
    q = (np.clip(np.rint(_div(blocks, step)), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [h, k, l]
    # y[128h + 32k + l]: its low nibble is in ql[64h + 32(k%2) + l] (the byte's low half for k < 2,
    # high half for k >= 2), its two high bits in qh[32h + l] at bit 2k
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                         (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2)  # [nb, 2, 64]
    qh = sum(((q[:, :, k] >> 4) & 3) << (2 * k) for k in range(4)).astype(np.uint8)  # [nb, 2, 32]
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), scales.view(np.uint8),
                          d.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.reshape(rows, cols // QK_K * 210)


K_ENCODERS = {QT.Q4_K: encode_q4_k, QT.Q5_K: encode_q5_k, QT.Q6_K: encode_q6_k}

# Worst-case |error| of one value, as a fraction of the max |x| of its block (32 values, or 256
# for K-quants): half a quantization step plus clipping at the block's extremes plus the fp16
# rounding of the scales. These are guarantees, not fits: the worst measured errors are 60-97 %
# of them for the llama.cpp reference quantizers (Q4_0/Q4_1/Q5_1 reach 0.95-0.97: the bounds are
# tight) and 37-78 % for the K-quant encoder here, whose 6-bit scale rounding rarely hits worst case.
ERROR_BOUND = {
    QT.F32: 0.0,
    QT.F16: 2 ** -11,  # relative to |x| itself, not the block (see below)
    QT.BF16: 2 ** -8,  # idem
    QT.Q8_0: 0.5 / 127 + 2 ** -10,
    QT.Q4_0: 1 / 8 + 2 ** -10,  # step amax/8; the side opposite the max clips by up to one step
    QT.Q4_1: 2 / 15 / 2 + 2 ** -9,  # asymmetric: step range/15 <= 2 amax/15
    QT.Q5_0: 1 / 16 + 2 ** -10,
    QT.Q5_1: 2 / 31 / 2 + 2 ** -9,
    QT.Q4_K: 2 / 15 / 2 + 1 / 63 + 2 / 63,  # + 6-bit scale and min rounding
    QT.Q5_K: 2 / 31 / 2 + 1 / 63 + 2 / 63,
    QT.Q6_K: 1 / 63 + 1 / 127 + 2 ** -10,
    QT.TQ1_0: 1 / 2 + 2 ** -10,  # trits of d = amax: half a step, plus d's fp16 rounding
    QT.TQ2_0: 1 / 2 + 2 ** -10,
}
BLOCK = {QT.Q8_0: 32, QT.Q4_0: 32, QT.Q4_1: 32, QT.Q5_0: 32, QT.Q5_1: 32, QT.Q4_K: 256, QT.Q5_K: 256, QT.Q6_K: 256,
         QT.TQ1_0: 256, QT.TQ2_0: 256}

TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K,
         QT.TQ1_0, QT.TQ2_0]


def test_types_under_test_are_the_promised_ones():
    promised = {QT[name] for name in SUPPORTED_TYPES}
    # Q2_K and Q3_K are promised but neither quantizable by `gguf` nor encoded here.
    assert set(TYPES) | {QT.Q2_K, QT.Q3_K} == promised


def storage(array: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype in K_ENCODERS:
        return K_ENCODERS[qtype](array)
    return encode(array, qtype)


@pytest.fixture(scope="module")
def quantized_file(tmp_path_factory):
    """One GGUF holding a [6, 512] tensor of every type (plus scaled/offset variants), and the originals."""
    rng = np.random.default_rng(1234)
    originals, tensors = {}, {}
    for qtype in TYPES:
        for variant, data in {
            "normal": rng.standard_normal((6, 512)),
            # heavy tails, a positive offset (min > 0 in some blocks) and a zero block
            "skewed": np.concatenate([rng.standard_t(3, (3, 512)) * 4 + 2, rng.random((2, 512)) * 0.01,
                                      np.zeros((1, 512))]),
        }.items():
            name = f"{qtype.name}.{variant}"
            originals[name] = data.astype(np.float32)
            tensors[name] = (storage(originals[name], qtype), qtype)
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "types.gguf", tensors, arch="test")
    return GGUFFile(path), originals, tensors


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", ["normal", "skewed"])
def test_dequantize_matches_gguf_and_original(quantized_file, qtype, variant):
    gf, originals, tensors = quantized_file
    name = f"{qtype.name}.{variant}"
    original = originals[name]
    assert gf.tensor_type(name) == qtype.name

    ours = gf.dequantize(name)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == original.shape

    # exactly what the gguf package decodes from the stored bytes
    stored, _ = tensors[name]
    reference = np.asarray(gguf.quants.dequantize(stored, qtype), dtype=np.float32).reshape(original.shape)
    np.testing.assert_array_equal(ours.numpy(), reference)

    # within the format's resolution of the original
    err = np.abs(ours.numpy() - original)
    if qtype == QT.F32:
        np.testing.assert_array_equal(ours.numpy(), original)
    elif qtype in (QT.F16, QT.BF16):
        # relative rounding error; fp16 values below 2**-14 are subnormal, with absolute spacing 2**-24
        assert (err <= ERROR_BOUND[qtype] * np.abs(original) + 2.0 ** -25).all()
    else:
        block = BLOCK[qtype]
        amax = np.abs(original).reshape(-1, block).max(-1, keepdims=True)
        bound = ERROR_BOUND[qtype] * amax + 1e-7
        ratio = (err.reshape(-1, block) / np.maximum(bound, 1e-30)).max()
        assert ratio <= 1.0, f"{name}: worst error is {ratio:.2f}x the bound"
        if variant == "normal":  # a lossy format is lossy (the test could tell a bad bound)
            assert err.max() > 0.1 * ERROR_BOUND[qtype]


def test_dequantize_dtype_and_writable(quantized_file):
    gf, originals, _ = quantized_file
    bf16 = gf.dequantize("Q8_0.normal", torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), gf.dequantize("Q8_0.normal"), atol=0.02, rtol=0.01)
    f32 = gf.dequantize("F32.normal")
    f32 += 1  # a copy, never a view of the read-only memory map
    np.testing.assert_array_equal(gf.dequantize("F32.normal").numpy(), originals["F32.normal"])


def test_dequantize_keeps_shapes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"vec": rng.standard_normal(64), "mat": rng.standard_normal((3, 64)),
              "cube": rng.standard_normal((2, 3, 64)), "q.cube": rng.standard_normal((2, 3, 64))}
    tensors = {n: (encode(a.astype(np.float32), QT.Q8_0 if n.startswith("q.") else QT.F32),
                   QT.Q8_0 if n.startswith("q.") else QT.F32) for n, a in arrays.items()}
    gf = GGUFFile(write_gguf(tmp_path / "shapes.gguf", tensors, arch="test"))
    for name, array in arrays.items():
        out = gf.dequantize(name)
        assert tuple(out.shape) == array.shape
        torch.testing.assert_close(out, torch.from_numpy(array.astype(np.float32)), atol=0.05, rtol=0)


# --- names and the Q/K permutation -----------------------------------------------------------

@pytest.mark.parametrize("n_head, head_dim, cols", [(4, 8, 16), (9, 64, 576), (3, 64, 576), (2, 4, None)])
def test_unpermute_qk_inverts_llama_cpp_permutation(n_head, head_dim, cols):
    shape = (n_head * head_dim,) if cols is None else (n_head * head_dim, cols)  # weight or bias
    original = torch.randn(shape)
    permuted = torch.from_numpy(llama_cpp_permute(original.numpy(), n_head))
    assert not torch.equal(permuted, original)
    torch.testing.assert_close(unpermute_qk(permuted, n_head), original, rtol=0, atol=0)


def test_unpermute_qk_pairs_rotary_halves():
    # llama.cpp interleaves (x0, x_half, x1, x_half+1, ...) within each head; undoing it puts
    # each head's two rotary halves back as contiguous blocks.
    n_head, head_dim = 2, 6
    rows = torch.arange(n_head * head_dim, dtype=torch.float32)[:, None]
    llama_cpp = torch.from_numpy(llama_cpp_permute(rows.numpy(), n_head))
    assert llama_cpp[:6, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert unpermute_qk(llama_cpp, n_head)[:, 0].tolist() == list(range(12))


def test_hf_names():
    assert hf_name("blk.3.attn_q.weight") == "layers.3.self_attn.q_proj.weight"
    assert hf_name("blk.0.attn_k.bias") == "layers.0.self_attn.k_proj.bias"
    assert hf_name("blk.11.ffn_down.weight") == "layers.11.mlp.down_proj.weight"
    assert hf_name("blk.2.attn_norm.weight") == "layers.2.input_layernorm.weight"
    assert hf_name("blk.2.ffn_norm.weight") == "layers.2.post_attention_layernorm.weight"
    assert hf_name("token_embd.weight") == "embed_tokens.weight"
    assert hf_name("output_norm.weight") == "norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("rope_freqs.weight") is None
    assert hf_name("blk.0.attn_rot_embd.weight") is None


# --- a whole model, written the way llama.cpp writes it ---------------------------------------

def ember_logits(lm, ids):
    hidden = lm.model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.no_cache([len(ids)]))
    return lm.model.compute_logits(hidden)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_tiny_llama_gguf_matches_transformers(tmp_path, tie):
    pytest.importorskip("transformers")
    model = tiny_llama(seed=3, tie=tie)
    path = write_llama_gguf(tmp_path / "tiny.gguf", model)
    gf = GGUFFile(path)
    weights = dict(gf.weights(gf.model_config(), torch.float32))
    state = model.state_dict()
    for name, tensor in weights.items():  # permutation undone, names mapped
        torch.testing.assert_close(tensor, state[f"model.{name}" if name != "lm_head.weight" else name],
                                   rtol=0, atol=0)
    lm = load_model(path)
    cfg = lm.config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers) == (4, 2, 16, 2)
    assert cfg.tie_embeddings == tie
    assert lm.tokenizer.eos_token_id == lm.tokenizer.tokenizer.token_to_id("<|im_end|>")
    ids = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ember_logits(lm, ids), ref, atol=1e-4, rtol=1e-4)


def test_tiny_llama_gguf_quantized_matches_its_dequantized_weights(tmp_path):
    """Quantized projections load through dequantization: same as transformers with those weights."""
    pytest.importorskip("transformers")
    model = tiny_llama(seed=4, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2)
    qtypes = {}
    kinds = [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_1, QT.Q8_0, QT.F16, QT.Q5_0]
    names = [f"blk.{i}.{p}.weight" for i in range(2) for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up")]
    for k, name in enumerate(names):
        qtypes[name] = kinds[k % len(kinds)]
    path = write_llama_gguf(tmp_path / "tiny-q.gguf", model, qtypes=qtypes)
    gf = GGUFFile(path)
    assert {gf.tensor_type(n) for n in names} == {t.name for t in kinds}
    # Put the dequantized (and unpermuted) weights into the transformers model: the oracle
    # for a quantized checkpoint is the float model with those weights.
    with torch.no_grad():
        state = model.state_dict()
        for name, tensor in gf.weights(gf.model_config(), torch.float32):
            key = f"model.{name}" if name != "lm_head.weight" else name
            state[key].copy_(tensor)
    lm = load_model(path)
    ids = list(range(0, 300, 7))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ember_logits(lm, ids), ref, atol=1e-4, rtol=1e-4)



def test_tiny_llama_gguf_int4_takes_q4_blocks_as_stored(tmp_path):
    """Q4_0 and Q4_1 projections reach int4 as raw blocks: after the Q/K unpermutation and the
    QKV / gate-up fusion, done on the blocks, int4 holds exactly the dequantized weights."""
    model = tiny_llama(seed=5, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2)
    parts = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    qtypes = {f"blk.{i}.{p}.weight": (QT.Q4_0, QT.Q4_1)[i] for i in range(2) for p in parts}
    path = write_llama_gguf(tmp_path / "tiny-q4.gguf", model, qtypes=qtypes)
    dense, int4 = load_model(path), load_model(path, linear="int4")
    from ember.kernels import native
    from ember.kernels.linear.int4 import dequantize_int4
    for d_layer, q_layer in zip(dense.model.layers, int4.model.layers):
        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            params = getattr(q_layer, name).params
            if native.available():
                assert "block_codes" in params
                assert torch.equal(dequantize_int4(params), getattr(d_layer, name).params["weight"])
    ids = list(range(0, 300, 7))
    ref, got = ember_logits(dense, ids), ember_logits(int4, ids)
    assert (got - ref).norm() / ref.norm() < 0.05  # int8 activations are the only difference
