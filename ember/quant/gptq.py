"""GPTQ (Frantar et al., arXiv 2210.17323): calibrated quantization of the low-bit lookup methods.

Round-to-nearest rounds every weight alone. GPTQ rounds the columns (inputs) of a layer's
weight in order and spreads each column's rounding error onto the columns not yet rounded,
weighted by the inverse Hessian of the layer's squared output error on calibration inputs X:

    H = 2 X^T X + damp I,   damp = DAMP * mean(diag H)
    U = cholesky(H^-1) (upper)
    for column j: q_j = grid(w_j); e = (w_j - q_j) / U[j, j]; w_{j+1:} -= e U[j, j+1:]

with the updates batched lazily per block of BLOCK columns (only the block is updated column
by column; the rest of the matrix once per block, one GEMM), as IST-DASLab/gptq's gptq.py
does. Group parameters (scale and minimum, or BCQ's alphas) are fitted when the first column
of a group of 64 is reached, from the weights as error feedback has left them, so the groups
are those of the target format (tmac_ref.GROUP). One difference from the public code: it
fits a group from the matrix as last updated at a block boundary; here from the current
values inside the block (the block is a multiple of the group, so a group never straddles
blocks). Not done: act-order (columns by decreasing H diagonal; with groups it needs a
permutation the kernels would have to undo).

Grids, each producing exactly the parts the method's own round-to-nearest `quantize` returns,
so its `pack` and C kernel take them unchanged:
- `UniformGrid` (tmac-w1..w4): w = q * scale + minimum, fp16 scale = (max - min) / (2^b - 1)
  and fp16 minimum per group, as tmac_ref.quantize_rtn;
- `BinaryCodingGrid` (bcq-w2..w4): the 2^b values sum_i +-alpha_i of bcq.binary_coding,
  fitted per group, nearest value chosen per weight.

`calibrate` runs the model layer by layer on calibration tokens (each layer's inputs are the
outputs of the layers before it, already quantized, as GPTQ does) and within a layer
sublayer by sublayer (qkv, o, gate_up, down: GPTQ's "true sequential"), then packs every
projection with the target method. Calibration tokens come from the evaluation text's tail
(eval/perplexity.calibration_ids), which the perplexity scorer then leaves out.
"""

from __future__ import annotations

import sys
import time

import torch

from ember.kernels.linear.tmac_ref import GROUP, SCALE_DTYPE

BLOCK = 128  # columns updated one by one before the rest of the matrix gets the block's error
# Damping, as a share of the mean diagonal of H. GPTQ's default is 0.01 with 128 x 2048
# calibration tokens; with a few thousand, H of a 1536-wide input (down_proj) is barely full
# rank and 0.01 overfits: on held-out tokens of this model at 2 bits, down_proj's output error
# was 0.59 of its norm with 2048 tokens and 0.01, 0.46 with 0.1 (round-to-nearest 0.44), and
# 0.46 / 0.41 with 8192 tokens (qkv and gate_up gain at every setting: 0.21-0.36 vs 0.38-0.43).
DAMP = 0.1
SUBLAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class UniformGrid:
    """Asymmetric uniform codes per group (tmac_ref.quantize_rtn's grid). search: try the
    group's range shrunk by SHRINKS and keep, per row, the one whose rounding leaves the least
    squared error (GPTQ's `mse` option; `--quantizer gptq-mse`); else min/max."""

    SHRINKS = torch.linspace(1.0, 0.5, 11)

    def __init__(self, bits: int, planes: bool = False, search: bool = False):
        self.bits, self.levels, self.planes, self.search = bits, (1 << bits) - 1, planes, search

    def _range(self, w: torch.Tensor, shrink: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lo, hi = w.amin(-1) * shrink, w.amax(-1) * shrink
        scale = ((hi - lo) / self.levels).clamp(min=1e-5).to(SCALE_DTYPE)
        minimum = lo.to(SCALE_DTYPE)
        q = torch.round((w - minimum.float()[:, None]) / scale.float()[:, None]).clamp(0, self.levels)
        err = ((q * scale.float()[:, None] + minimum.float()[:, None] - w) ** 2).sum(-1)
        return scale, minimum, err

    def fit(self, w: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """w [N, group] -> the group's values [N, L] ascending, and what `parts` needs of it."""
        scale, minimum, err = self._range(w, 1.0)
        for shrink in self.SHRINKS[1:].tolist() if self.search else []:
            s, m, e = self._range(w, shrink)
            better = e < err
            scale, minimum, err = torch.where(better, s, scale), torch.where(better, m, minimum), torch.where(better, e, err)
        values = minimum.float()[:, None] + scale.float()[:, None] * torch.arange(self.levels + 1, dtype=torch.float32)
        return values, (scale, minimum)

    def parts(self, index: torch.Tensor, fitted: list[tuple]) -> tuple:
        """Chosen value indices [N, K] and each group's fit -> the method's quantize() parts:
        codes, scale, minimum (tmac.py), or planes, plane scales, minimum (planes.py)."""
        scale = torch.stack([f[0] for f in fitted], 1)
        minimum = torch.stack([f[1] for f in fitted], 1)
        q = index.to(torch.int32)
        if not self.planes:
            return q, scale, minimum
        from ember.kernels.linear.tmac_ref import code_plane_scales
        planes = torch.stack([((q >> i) & 1).to(torch.uint8) for i in range(self.bits)])
        return planes, code_plane_scales(scale, self.bits).to(SCALE_DTYPE), minimum


class BinaryCodingGrid:
    """ShiftAddLLM's binary coding per group (bcq.binary_coding), values sum_i +-alpha_i."""

    def __init__(self, bits: int, pow2: bool = False):
        from ember.kernels.linear.bcq import _signs
        self.bits, self.pow2 = bits, pow2
        self.units = (_signs(bits) + 1) / 2  # [2^b, b] bits {0, 1} of every value

    def fit(self, w: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        from ember.kernels.linear.bcq import binary_coding
        _, a = binary_coding(w, self.bits, group=w.shape[1], pow2=self.pow2)  # a [N, 1, b]
        s16, m16 = (2 * a[:, 0]).to(SCALE_DTYPE), (-a[:, 0].sum(-1)).to(SCALE_DTYPE)
        values = s16.float() @ self.units.t() + m16.float()[:, None]  # [N, 2^b], as bcq_planes uses them
        order = values.argsort(-1)
        return values.gather(-1, order), (s16, m16, order)

    def parts(self, index: torch.Tensor, fitted: list[tuple]) -> tuple:
        n, k = index.shape
        g = k // len(fitted)
        unit_idx = torch.cat([f[2].gather(-1, index[:, i * g:(i + 1) * g]) for i, f in enumerate(fitted)], 1)
        planes = self.units[unit_idx].permute(2, 0, 1).to(torch.uint8)  # [b, N, K]
        scales = torch.stack([f[0] for f in fitted], 1).permute(2, 0, 1).contiguous()
        return planes, scales, torch.stack([f[1] for f in fitted], 1)


def nearest(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """values [N, L] ascending, w [N] -> index [N] of the nearest value of each row."""
    mids = ((values[:, 1:] + values[:, :-1]) / 2).contiguous()
    return torch.searchsorted(mids, w.float().contiguous()[:, None]).squeeze(1)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, grid, group: int = GROUP,
                  block: int = BLOCK, damp: float = DAMP) -> tuple:
    """weight [N, K], hessian [K, K] (2 X^T X) -> the grid's parts (its `parts`), GPTQ's order."""
    n, k = weight.shape
    if k % group or block % group:
        raise ValueError(f"GPTQ needs the input size ({k}) and block ({block}) to be multiples of the group ({group})")
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    index = torch.empty(n, k, dtype=torch.long)
    fitted: list[tuple] = []
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w1, err = w[:, b0:b1].clone(), torch.zeros(n, b1 - b0, dtype=w.dtype)
        u1 = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            if (b0 + i) % group == 0:
                values, fit = grid.fit(w1[:, i:i + group].float())
                fitted.append(fit)
            col = w1[:, i]
            idx = nearest(values, col)
            index[:, b0 + i] = idx
            e = (col - values.gather(1, idx[:, None]).squeeze(1).double()) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return grid.parts(index, fitted)


def grid_for(method, search: bool = False):
    """The grid a LinearMethod stores, or ValueError naming the methods GPTQ applies to.
    search: uniform grids search each group's range (BCQ's fit already minimizes the squared
    error, so it is the same either way)."""
    from ember.kernels.linear.bcq import BcqLinear
    from ember.kernels.linear.planes import RtnPlanesLinear
    from ember.kernels.linear.tmac import LutLinear
    if isinstance(method, BcqLinear):
        return BinaryCodingGrid(method.bits, method.pow2)
    if isinstance(method, RtnPlanesLinear):
        return UniformGrid(method.bits, planes=True, search=search)
    if isinstance(method, LutLinear) and type(method).quantize is LutLinear.quantize:
        return UniformGrid(method.bits, search=search)
    raise ValueError(f"--quantizer gptq applies to tmac-w1..w4 and bcq-w2..w4, not to {method.name!r}")


class _Collected(Exception):
    """Raised by the input hook once a sublayer's inputs are in hand."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.inference_mode()
def calibrate(net, method, windows: torch.Tensor, progress: bool = True, search: bool = False) -> None:
    """Quantize every projection of `net` (a float model, every Linear `dense`) onto `method`'s
    grid by GPTQ, layer by layer, on calibration windows [B, C] of token ids; the projections
    end packed by `method`, the output head by its head method. Progress goes to stderr."""
    from ember.kernels.attention import AttentionMetadata
    from ember.kernels.linear import get_linear_method

    grid = grid_for(method, search)
    num, context = windows.shape
    positions = torch.arange(context).repeat(num)
    meta = AttentionMetadata.no_cache([context] * num)
    cos, sin = net.cos[positions], net.sin[positions]
    x = torch.nn.functional.embedding(windows.reshape(-1), net.embed)
    started = time.perf_counter()
    for li, layer in enumerate(net.layers):
        for name in SUBLAYERS:
            lin = getattr(layer, name)
            h = torch.zeros(0)

            def collect(_mod, args):
                nonlocal h
                a = args[0].reshape(-1, args[0].shape[-1]).double()
                h = 2 * a.t() @ a
                raise _Collected  # the rest of the layer is not needed for this sublayer
            hook = lin.register_forward_pre_hook(collect)
            try:
                layer(x, cos, sin, meta, None, net.attention)
            except _Collected:
                pass
            finally:
                hook.remove()
            weight, bias = lin.params["weight"].float(), lin.params.get("bias")
            parts = gptq_quantize(weight, h, grid)
            lin.method = method
            lin.params = method.pack_parts(parts, bias, net.dtype)
        x = layer(x, cos, sin, meta, None, net.attention)
        if progress:
            _log(f"gptq {method.name}: layer {li + 1}/{len(net.layers)} ({time.perf_counter() - started:.0f} s)")
    head = get_linear_method(method.head_method) if method.head_method else None
    if head is not None:
        net.lm_head.method = head
        net.lm_head.params = head.pack(net.lm_head.params["weight"], None, net.dtype)
