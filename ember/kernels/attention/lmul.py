"""`lmul2`..`lmul5`: attention whose Q.K^T score products are L-Mul approximate multiplications.

Everything else (mask, softmax, the probability-value product) is exact, so the backend
isolates the paper's claim: how much does approximating the score products cost?
(arXiv 2410.00907; the bit-level simulation in `ember.numerics.lmul`.)
"""

from __future__ import annotations

import torch

from ember.kernels.attention.base import ATTENTION_BACKENDS
from ember.kernels.attention.torch_ref import TorchAttention, causal_mask
from ember.numerics.lmul import lmul_matmul


class LMulAttention(TorchAttention):
    """The reference backend's loop over sequences, with L-Mul scores for each one."""

    plain_softmax = False  # approximate score products

    def __init__(self, mantissa_bits: int):
        self.mantissa_bits = mantissa_bits
        self.name = f"lmul{mantissa_bits}"

    def attend_one(self, q, keys, values, scale):
        group = q.shape[1] // keys.shape[1]
        qi = q.transpose(0, 1).float()  # [H, q, D]
        ki = keys.transpose(0, 1).repeat_interleave(group, dim=0).float()  # [H, ctx, D]
        vi = values.transpose(0, 1).repeat_interleave(group, dim=0)
        scores = lmul_matmul(qi, ki.transpose(1, 2), self.mantissa_bits) * scale
        scores = scores.masked_fill(~causal_mask(q.shape[0], keys.shape[0], q.device), float("-inf"))
        return (scores.softmax(dim=-1).to(vi.dtype) @ vi).transpose(0, 1)


for _bits in (2, 3, 4, 5):
    ATTENTION_BACKENDS.register(f"lmul{_bits}")(lambda bits=_bits: LMulAttention(bits))
