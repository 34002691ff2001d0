"""T-MAC's arithmetic in plain torch: the reference the lookup-table C kernel
(csrc/linear_tmac.h) is held to, step by step, and the quantizer both share.

T-MAC (microsoft/T-MAC, ../shared/papers/NOTES.md) never dequantizes a weight. A b-bit code
q = sum_i 2^i bit_i is split into b bit planes; for every 4 activations x0..x3 a table holds
the 16 sums T[c] = sum_j bit_j(c) x_j, so one plane's contribution of 4 weights is one table
lookup, indexed by those 4 weights' bits. Per group of GROUP inputs:

    sum_k w[n,k] x[k] = scale[n,g] * sum_i 2^i sum_t T_t[c_i(n,t)] + minimum[n,g] * sum_k x[k]

with w = q * scale + minimum (asymmetric round-to-nearest, fp16 scale and minimum, the grid of
GGUF's Q4_1 at other widths). Tables use the unsigned bits {0, 1}, not T-MAC's mirrored
{-1, +1}: we keep all 16 entries (a 16-byte shuffle table has room for them), and an unsigned
table's largest entry, max(sum of positives, -sum of negatives), is never larger than the
signed one's sum |x|, so its int8 steps are no coarser. The tables of a group are quantized to
int8 with one scale (largest |entry| / 127), so the whole group's lookups add up as integers:
16 tables x (2^b - 1) x 127 <= 30480 fits int16 up to 4 bits.

GROUP = 64 for both the weight scales and the table scales: the default model's input sizes
are 576 and 1536, and 576 is not a multiple of 128; 64 also keeps 2-bit round-to-nearest
usable (the step of a 2-bit group grows with its range).
"""

from __future__ import annotations

import torch

GROUP = 64  # inputs per weight (scale, minimum) and per table scale
TABLE = 4  # activations per lookup table: 16 entries
SCALE_DTYPE = torch.float16


def quantize_rtn(weight: torch.Tensor, bits: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric round-to-nearest per group: codes int32 [N, K] in 0..2^bits - 1 and fp16
    (scale, minimum) [N, K/group], w ~= q * scale + minimum. Scale and minimum are rounded to
    fp16 before the codes are chosen, so the codes are the nearest under what the kernel uses."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"{bits}-bit lookup tables need the input size ({k}) to be a multiple of {group}")
    levels = (1 << bits) - 1
    w = weight.float().view(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / levels).clamp(min=1e-5).to(SCALE_DTYPE)
    minimum = lo.to(SCALE_DTYPE)
    q = torch.round((w - minimum.float()[..., None]) / scale.float()[..., None]).clamp(0, levels)
    return q.to(torch.int32).view(n, k), scale, minimum


def dequantize(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """The float weight [N, K] that codes and fp16 (scale, minimum) per group stand for."""
    n, k = q.shape
    g = scale.shape[1]
    w = q.float().view(n, g, k // g) * scale.float()[..., None] + minimum.float()[..., None]
    return w.view(n, k)


def table_indices(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [N, K] -> int64 [bits, N, K/4]: for plane i and table t, the 4-bit index
    sum_j bit_i(q[n, 4t + j]) << j that picks that plane's sum of the table's 4 activations."""
    n, k = q.shape
    quads = q.to(torch.uint8).view(n, k // TABLE, TABLE)  # uint8 throughout: loading packs every projection
    idx = torch.empty(bits, n, k // TABLE, dtype=torch.uint8)
    for i in range(bits):
        plane = (quads >> i) & 1
        idx[i] = plane[..., 0] | (plane[..., 1] << 1) | (plane[..., 2] << 2) | (plane[..., 3] << 3)
    return idx.long()


def build_tables(x: torch.Tensor) -> torch.Tensor:
    """x fp32 [M, K] -> tables fp32 [M, K/4, 16], T[c] = ((x0 b0 + x1 b1) + x2 b2) + x3 b3 with
    b_j bit j of c: the C kernel adds in this order, so the fp32 tables agree bit for bit."""
    m, k = x.shape
    xs = x.float().view(m, k // TABLE, TABLE, 1)
    c = torch.arange(16)
    bit = [((c >> j) & 1).float() for j in range(TABLE)]
    return ((xs[:, :, 0] * bit[0] + xs[:, :, 1] * bit[1]) + xs[:, :, 2] * bit[2]) + xs[:, :, 3] * bit[3]


def quantize_tables(tables: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables [M, K/4, 16] -> int8 codes (as float) of the same shape and one scale per group of
    `group` inputs [M, K/group]: d = max |entry| / 127, code = round(entry * (127 / max)), the
    C kernel's fp32 operations (a group of zeros gets scale 0)."""
    m, t, _ = tables.shape
    per = group // TABLE
    g = tables.view(m, t // per, per * 16)
    amax = g.abs().amax(-1, keepdim=True)
    # a true division, as C's 127.0f / amax (torch computes `127 / t` as 127 * (1 / t))
    inv = torch.where(amax > 0, torch.full_like(amax, 127) / amax, torch.zeros_like(amax))
    codes = torch.round(g * inv)
    return codes.view(m, t, 16), (amax / 127).squeeze(-1)


def lut_linear(x: torch.Tensor, idx: torch.Tensor, plane_scales: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """The kernels' product in float64 from its parts: x fp32 [M, K], idx [P, N, K/4] (plane i's
    table indices), plane_scales [P, N, G] and minimum [N, G] (w = sum_i plane_scales_i bit_i
    + minimum; round-to-nearest codes have plane_scales_i = 2^i scale):
    y[m, n] = sum_g d_g sum_i plane_scales_i sum_t Tq_t[idx_i] + minimum sum_{k in g} x[k]."""
    m, k = x.shape
    planes, n, groups = plane_scales.shape
    tq, d = quantize_tables(build_tables(x), k // groups)
    tq = tq.double().view(m, groups, -1)
    y = x.double().view(m, groups, -1).sum(-1) @ minimum.double().t()  # the minimums' share
    for i in range(planes):
        # plane i's lookups of every (row, group) as one matrix product over its (table, entry)
        # one-hot: integer sums, exact in float64
        onehot = torch.zeros(n, k // TABLE, 16, dtype=torch.float64)
        onehot.scatter_(2, idx[i].unsqueeze(-1), 1.0)
        lookups = torch.einsum("mgc,ngc->mng", tq, onehot.view(n, groups, -1))
        y = y + (lookups * (plane_scales[i].double()[None] * d.double()[:, None])).sum(-1)
    return y


def code_plane_scales(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest codes as planes: plane i weighs 2^i scale, [bits, N, G]."""
    return torch.stack([scale.double() * (1 << i) for i in range(bits)])
