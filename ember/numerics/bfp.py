"""Block floating point (BFP) and dynamic fixed point (DFP).

Both store signed integer mantissas q with one shared power-of-two exponent s
per group, value = q * 2^s; they differ only in the group: BFP shares s over
blocks of n consecutive elements along the last dim (n = 32 or 64 in the BFP
KV-cache paper, arXiv 2403.20137); DFP ("Mixed Precision Training of CNNs
using Integer Operations", Das et al., ICLR 2018) shares one s over the whole
tensor, with int16 mantissas.

With m-bit mantissas q is restricted to the symmetric range
[-(2^(m-1) - 1), 2^(m-1) - 1], so the value set is sign-magnitude (as in BFP
hardware) and negation is exact. s is the exponent of q's unit (the ulp):

    s = floor(log2(amax)) - (m - 2),   plus 1 if amax / 2^s rounds above 2^(m-1) - 1

so the block maximum uses the top mantissa bit, and the "plus 1" case (amax
just under a power of two rounding up) is absorbed by the exponent instead of
clipping. Hence every element is rounded to nearest, ties to even, with error at
most 2^(s-1), half an ulp of the block scale. s is stored as int8 (the "shared
8-bit exponent") and clamped to [-128, 127]; below 2^-128 * 2^(m-2) a block
loses bits (all-zero blocks get s = -128 and zero mantissas), and only when the
clamp binds can the half-ulp bound fail. Non-finite inputs raise ValueError:
these formats have no NaN or infinity. DFP uses round to nearest even here;
the paper's stochastic rounding is a training device this engine does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._bits import floor_log2, from_blocks, pow2, to_blocks

EXP_MIN, EXP_MAX = -128, 127


def _mantissa_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16


def shared_exponent_quantize(groups: torch.Tensor, mantissa_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize float64 groups [..., g] to (int64 mantissas [..., g], int64 exponents [...])."""
    if not 2 <= mantissa_bits <= 16:
        raise ValueError("mantissa_bits must be in [2, 16]")
    if not bool(torch.isfinite(groups).all()):
        raise ValueError("block floating point cannot encode NaN or infinity")
    qmax = (1 << (mantissa_bits - 1)) - 1
    amax = groups.abs().amax(dim=-1)
    s = (floor_log2(amax) - (mantissa_bits - 2)).clamp(EXP_MIN, EXP_MAX)
    top = torch.round(amax * pow2(-s))
    s = torch.where(top > qmax, s + 1, s).clamp(EXP_MIN, EXP_MAX)
    q = torch.round(groups * pow2(-s)[..., None]).clamp(-qmax, qmax)
    return q.to(torch.int64), s


@dataclass
class BFPTensor:
    codes: torch.Tensor  # [..., n_blocks, block] int8 (m <= 8) or int16
    exponents: torch.Tensor  # [..., n_blocks] int8, value = code * 2^exponent
    mantissa_bits: int
    length: int

    def decode(self) -> torch.Tensor:
        return bfp_decode(self)


def bfp_encode(x: torch.Tensor, block_size: int = 32, mantissa_bits: int = 4) -> BFPTensor:
    """Encode x in blocks of ``block_size`` along the last dim (module docstring)."""
    blocks, length = to_blocks(x.detach().to(torch.float64), block_size)
    q, s = shared_exponent_quantize(blocks, mantissa_bits)
    return BFPTensor(q.to(_mantissa_dtype(mantissa_bits)), s.to(torch.int8), mantissa_bits, length)


def bfp_decode(t: BFPTensor) -> torch.Tensor:
    vals = t.codes.to(torch.float64) * pow2(t.exponents.to(torch.int64))[..., None]
    return from_blocks(vals.to(torch.float32), t.length)


def bfp_quantize(x: torch.Tensor, block_size: int = 32, mantissa_bits: int = 4) -> torch.Tensor:
    return bfp_decode(bfp_encode(x, block_size, mantissa_bits)).reshape(x.shape)


@dataclass
class DFPTensor:
    codes: torch.Tensor  # same shape as the input, int16 (or int8 for <= 8 bits)
    exponent: int  # shared by the whole tensor, value = code * 2^exponent
    bits: int

    def decode(self) -> torch.Tensor:
        return dfp_decode(self)


def dfp_encode(x: torch.Tensor, bits: int = 16) -> DFPTensor:
    """Dynamic fixed point: one exponent for the whole tensor, ``bits``-bit codes."""
    q, s = shared_exponent_quantize(x.detach().to(torch.float64).reshape(1, -1), bits)
    return DFPTensor(q.reshape(x.shape).to(_mantissa_dtype(bits)), int(s[0]), bits)


def dfp_decode(t: DFPTensor) -> torch.Tensor:
    return (t.codes.to(torch.float64) * 2.0**t.exponent).to(torch.float32)
