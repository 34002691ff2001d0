"""Teacher-forced decode: score a window fed one token per step through the paged KV cache.

`ember eval ppl --decode` runs each window the way generation runs a sequence, so the
perplexity it reports is that of the decode path: the fused decode step where it applies
(otherwise the model's forward over the cache), the decode-sized kernels of the LinearMethod
(int8 at batch 1-63 runs other kernels than its prefill) and the output head at decode batch size. Up to
`windows_per_batch` windows decode side by side, one row each per step.
"""

from __future__ import annotations

import torch

from ember.eval.nll import token_nll
from ember.kernels.attention import AttentionMetadata
from ember.kernels.native import NativeUnavailable
from ember.kv.cache import PagedKVCache
from ember.kv.codecs import get_kv_codec

BLOCK_SIZE = 16


@torch.inference_mode()
def decode_window_nll(model, windows: torch.Tensor, first: int, fused: bool = True, attention=None,
                      kv_cache_dtype: str = "auto", block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """NLL [B, C-1-first] of each window's predictions from positions first..C-2, one decode
    step per position. windows: [B, C] token ids; attention: the backend (default: the model's);
    kv_cache_dtype: the KV codec the cache stores with; block_size: its tokens per block (KIVI's
    key group)."""
    num, context = windows.shape
    cfg, bs = model.cfg, block_size
    per_seq = -(-context // bs)
    codec = get_kv_codec(kv_cache_dtype, bs, cfg.num_kv_heads, cfg.head_dim, model.dtype)
    cache = PagedKVCache(codec, cfg.num_layers, num * per_seq)
    cache.bind_model(model)
    tables = torch.arange(num * per_seq, dtype=torch.long).view(num, per_seq)
    attention = attention or model.attention
    decoder = None
    if fused:
        try:
            decoder = model.native_decoder(cache, attention)
        except NativeUnavailable:
            pass
    out = torch.empty(num, context - 1 - first)
    for t in range(context - 1):
        ids, positions = windows[:, t].contiguous(), torch.full((num,), t, dtype=torch.long)
        slots = tables[:, t // bs] * bs + t % bs
        meta = AttentionMetadata([1] * num, [t + 1] * num, slots, tables)
        hidden = decoder(ids, positions, meta) if decoder else model(ids, positions, meta, cache, attention)
        if t >= first:  # the head runs at decode batch size too, as in generation
            out[:, t - first] = token_nll(model, hidden, windows[:, t + 1].contiguous())
    return out
