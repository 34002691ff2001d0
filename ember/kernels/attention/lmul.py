"""`lmul2`..`lmul5`: attention whose Q.K^T score products are L-Mul approximate multiplications.

Everything else (mask, softmax, the probability-value product) is exact, so the backend
isolates the paper's claim: how much does approximating the score products cost?
(arXiv 2410.00907; the bit-level simulation in `ember.numerics.lmul`.)
"""

from __future__ import annotations

import torch

from ember.kernels.attention.base import ATTENTION_BACKENDS, AttentionBackend, AttentionMetadata
from ember.kernels.attention.torch_ref import causal_mask
from ember.numerics.lmul import lmul_matmul


class LMulAttention(AttentionBackend):
    def __init__(self, mantissa_bits: int):
        self.mantissa_bits = mantissa_bits
        self.name = f"lmul{mantissa_bits}"

    def forward(self, layer, q, k, v, meta: AttentionMetadata, kv_cache, scale):
        if kv_cache is not None:
            kv_cache.write(layer, meta.slot_mapping, k, v)
        out = torch.empty_like(q)
        group = q.shape[1] // k.shape[1]
        start = 0
        for i, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens)):
            end = start + q_len
            if kv_cache is None:
                keys, values = k[start:end], v[start:end]
            else:
                keys, values = kv_cache.gather(layer, meta.block_tables[i], ctx_len)
            qi = q[start:end].transpose(0, 1).float()  # [H, q, D]
            ki = keys.transpose(0, 1).repeat_interleave(group, dim=0).float()  # [H, ctx, D]
            vi = values.transpose(0, 1).repeat_interleave(group, dim=0)
            scores = lmul_matmul(qi, ki.transpose(1, 2), self.mantissa_bits) * scale
            scores = scores.masked_fill(~causal_mask(q_len, ctx_len, q.device), float("-inf"))
            probs = scores.softmax(dim=-1).to(vi.dtype)
            out[start:end] = (probs @ vi).transpose(0, 1)
            start = end
        return out


for _bits in (2, 3, 4, 5):
    ATTENTION_BACKENDS.register(f"lmul{_bits}")(lambda bits=_bits: LMulAttention(bits))
