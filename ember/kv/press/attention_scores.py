"""Attention weights of a window's queries over a layer's cache entries, for the presses that
score by attention. Grouped-query attention: query head h reads KV head h // (H / Hkv)."""

from __future__ import annotations

import torch

QUERY_CHUNK = 256  # queries per softmax: the whole prompt at once would be [H, T, T]


def window_attention(queries: torch.Tensor, keys: torch.Tensor, scale: float, first: int) -> torch.Tensor:
    """Softmax weights [H, n, T] (fp32) of queries [n, H, D] at entries first..first+n-1 over
    keys [T, Hkv, D], each query seeing the entries up to its own."""
    n, heads, _ = queries.shape
    group = heads // keys.shape[1]
    k = keys.float().repeat_interleave(group, dim=1)  # [T, H, D]
    logits = torch.einsum("nhd,thd->hnt", queries.float(), k) * scale
    rows = torch.arange(first, first + n)[:, None]
    logits.masked_fill_(torch.arange(keys.shape[0])[None, :] > rows, float("-inf"))
    return logits.softmax(dim=-1)


def attention_column_sums(queries: torch.Tensor, keys: torch.Tensor, scale: float, first: int) -> torch.Tensor:
    """Sum over the queries of window_attention [H, T], a chunk of queries at a time."""
    total = torch.zeros(queries.shape[1], keys.shape[0])
    for a in range(0, queries.shape[0], QUERY_CHUNK):
        total += window_attention(queries[a:a + QUERY_CHUNK], keys, scale, first + a).sum(dim=1)
    return total


def per_kv_head(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[H, T] per query head -> [Hkv, T], the mean over each KV head's group (kvpress's rule)."""
    return scores.view(num_kv_heads, -1, scores.shape[-1]).mean(dim=1)
