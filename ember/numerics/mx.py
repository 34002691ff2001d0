"""OCP Microscaling (MX) block formats, per the OCP MX v1.0 specification.

A block of 32 consecutive elements (along the last dim) shares one scale
X = 2^s stored as E8M0: an unsigned 8-bit biased exponent, code = s + 127,
s in [-127, 127]; code 0xFF is NaN. There is no zero or sign in E8M0. Element
i of a block is X * P_i, with P_i in the element format:

==========  ===================  ==========
format      element              emax_elem
==========  ===================  ==========
mxfp8_e4m3  fp8 e4m3 (fn)        8
mxfp8_e5m2  fp8 e5m2             15
mxfp6_e3m2  fp6 e3m2             4
mxfp6_e2m3  fp6 e2m3             2
mxfp4       fp4 e2m1             2
mxint8      int8, value code/64  0
==========  ===================  ==========

Scale choice (spec section 6.3): s = floor(log2(amax)) - emax_elem, with amax
the block's largest magnitude, clamped to [-127, 127]. Elements are V_i / X
rounded to nearest even in the element format, saturating at its largest
finite value (with this s, amax / X lies in [2^emax, 2^(emax+1)), which can
exceed the element's max, e.g. 480 for e4m3, so saturation is needed). MXINT8
codes saturate symmetrically at +-127 (the spec allows leaving -128 unused).

Choices the spec leaves to implementations, made here:
- an all-zero block gets s = -127 (code 0) and zero elements;
- a block containing NaN or +-inf gets scale code 0xFF (NaN) and zero element
  codes, and decodes to all-NaN (the spec: "if X is NaN, all P_i are NaN");
- a ragged last block is zero-padded (padding never changes amax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._bits import floor_log2, from_blocks, pow2, to_blocks
from .minifloat import MiniFloat, fp4_e2m1, fp6_e2m3, fp6_e3m2, fp8_e4m3, fp8_e5m2

MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF


@dataclass(frozen=True)
class MXFormat:
    name: str
    element: MiniFloat | None  # None: MXINT8
    emax_elem: int

    @property
    def element_bits(self) -> int:
        return 8 if self.element is None else self.element.bits

    @property
    def bits_per_element(self) -> float:
        """Storage cost including the shared scale (8 bits per 32 elements)."""
        return self.element_bits + 8 / MX_BLOCK


MX_FORMATS: dict[str, MXFormat] = {
    f.name: f
    for f in (
        MXFormat("mxfp8_e4m3", fp8_e4m3(saturate=True), 8),
        MXFormat("mxfp8_e5m2", fp8_e5m2(saturate=True), 15),
        MXFormat("mxfp6_e3m2", fp6_e3m2(), 4),
        MXFormat("mxfp6_e2m3", fp6_e2m3(), 2),
        MXFormat("mxfp4", fp4_e2m1(), 2),
        MXFormat("mxint8", None, 0),
    )
}


@dataclass
class MXTensor:
    """An MX-encoded tensor: element codes [..., n_blocks, 32] and E8M0 scale
    codes [..., n_blocks] (uint8), plus what decode needs to undo the blocking."""

    fmt: MXFormat
    codes: torch.Tensor
    scales: torch.Tensor
    length: int  # original size of the last dim

    def decode(self) -> torch.Tensor:
        return mx_decode(self)


def mx_encode(x: torch.Tensor, fmt: str | MXFormat) -> MXTensor:
    """Encode x in 32-element blocks along its last dim (module docstring)."""
    if isinstance(fmt, str):
        fmt = MX_FORMATS[fmt]
    blocks, length = to_blocks(x.detach().to(torch.float64), MX_BLOCK)
    bad = (~torch.isfinite(blocks)).any(dim=-1)
    blocks = torch.where(bad[..., None], torch.zeros_like(blocks), blocks)
    amax = blocks.abs().amax(dim=-1)
    # floor_log2(0) is far below -127, so an all-zero block clamps to s = -127.
    s = (floor_log2(amax) - fmt.emax_elem).clamp(-E8M0_BIAS, E8M0_BIAS)
    scaled = blocks * pow2(-s)[..., None]  # exact: a power-of-two scaling in float64
    if fmt.element is None:
        codes = torch.round(scaled * 64.0).clamp(-127, 127).to(torch.int8)
    else:
        codes = fmt.element.encode(scaled)
    codes = torch.where(bad[..., None], torch.zeros_like(codes), codes)
    scales = torch.where(bad, E8M0_NAN, s + E8M0_BIAS).to(torch.uint8)
    return MXTensor(fmt, codes, scales, length)


def mx_decode(t: MXTensor) -> torch.Tensor:
    """MXTensor -> float32 with the original shape."""
    if t.fmt.element is None:
        elems = t.codes.to(torch.float64) / 64.0
    else:
        elems = t.fmt.element.decode(t.codes).to(torch.float64)
    sc = t.scales.to(torch.int64)
    scale = pow2(sc.clamp(max=254) - E8M0_BIAS)
    scale = torch.where(sc == E8M0_NAN, torch.full_like(scale, float("nan")), scale)
    return from_blocks((elems * scale[..., None]).to(torch.float32), t.length)


def mx_quantize(x: torch.Tensor, fmt: str | MXFormat) -> torch.Tensor:
    """mx_decode(mx_encode(x)), reshaped like x."""
    return mx_decode(mx_encode(x, fmt)).reshape(x.shape)
