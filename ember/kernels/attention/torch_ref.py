"""`torch`: the reference attention backend in plain PyTorch (gather blocks, masked SDPA per sequence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels.attention.base import ATTENTION_BACKENDS, AttentionBackend, AttentionMetadata


def causal_mask(q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Boolean [q_len, kv_len]: query i (at position kv_len - q_len + i) sees keys up to itself."""
    offset = kv_len - q_len
    rows = torch.arange(q_len, device=device)[:, None] + offset
    cols = torch.arange(kv_len, device=device)[None, :]
    return cols <= rows


def sequence_keys_values(layer: int, k, v, meta: AttentionMetadata, kv_cache, i: int, start: int, end: int):
    """Sequence i's rows start:end attend to: (row_start, row_end, keys [n, Hkv, D], values)
    pieces covering start:end, the rows of each at the end of its keys. Without a cache, its
    own rows of k, v; else its first ctx_len entries from the cache (already written), as the
    codec lets each query see them (one piece for most codecs; see KVCodec.views)."""
    if kv_cache is None:
        return [(start, end, k[start:end], v[start:end])]
    ctx = meta.context_lens[i]
    first = ctx - (end - start)
    return [(start + a - first, start + b - first, keys, values)
            for a, b, keys, values in kv_cache.views(layer, meta.block_tables[i], first, ctx)]


@ATTENTION_BACKENDS.register("torch")
class TorchAttention(AttentionBackend):
    name = "torch"
    plain_softmax = False  # the reference always runs itself: choosing it turns fused decode off

    def forward(self, layer, q, k, v, meta: AttentionMetadata, kv_cache, scale):
        if kv_cache is not None:
            kv_cache.write(layer, meta.slot_mapping, k, v, meta.positions)
        out = torch.empty_like(q)
        start = 0
        for i, q_len in enumerate(meta.query_lens):
            end = start + q_len
            for a, b, keys, values in sequence_keys_values(layer, k, v, meta, kv_cache, i, start, end):
                out[a:b] = self.attend_one(q[a:b], keys, values, scale)
            start = end
        return out

    def attend_one(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
        """One sequence: q [q_len, H, D] at the end of keys/values [ctx, Hkv, D]."""
        q_len, ctx_len = q.shape[0], keys.shape[0]
        # 4-D [1, heads, len, D]: torch 2.13 sends 3-D inputs to SDPA's unfused math path
        # (~3.7x slower on a 512-token prefill); 4-D ones take the fused flash kernel for CPU.
        qi, ki, vi = q.transpose(0, 1)[None], keys.transpose(0, 1)[None], values.transpose(0, 1)[None]
        if q_len == ctx_len:
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
        elif q_len == 1:
            o = F.scaled_dot_product_attention(qi, ki, vi, scale=scale, enable_gqa=True)
        else:
            mask = causal_mask(q_len, ctx_len, q.device)
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale, enable_gqa=True)
        return o[0].transpose(0, 1)
