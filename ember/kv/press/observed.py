"""`observed` (H2O-style accumulated attention; kvpress's ObservedAttentionPress): score each
entry by the mean attention every prompt query pays it (the sum over queries divided by how
many queries see it), averaged over each KV head's query heads. Reads every prompt query, so
the prompt's forward runs a second time (press/window.py)."""

from __future__ import annotations

import torch

from ember.kv.press.attention_scores import attention_column_sums, per_kv_head
from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("observed")
class ObservedAttentionPress(KVPress):
    name = "observed"

    def window(self, num_entries: int) -> int:
        return num_entries

    def score(self, layer, keys, values, window):
        total = keys.shape[0]
        sums = attention_column_sums(window.queries[layer], keys, window.scale, 0)
        seen_by = torch.arange(total, 0, -1, dtype=torch.float32)  # entry j is seen by T - j queries
        return per_kv_head(sums / seen_by, keys.shape[1])
