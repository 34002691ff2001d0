"""`tova` (TOVA, Oren et al. 2024; kvpress's TOVAPress): score each entry by the attention the
prompt's last query pays it, averaged over all query heads (one score for every KV head); the
last entry is always kept."""

from __future__ import annotations

import torch.nn.functional as F

from ember.kv.press.attention_scores import window_attention
from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("tova")
class TOVAPress(KVPress):
    name = "tova"

    def window(self, num_entries: int) -> int:
        return 1

    def score(self, layer, keys, values, window):
        total = keys.shape[0]
        weights = window_attention(window.queries[layer][-1:], keys, window.scale, total - 1)[:, 0, :total - 1]
        scores = weights.mean(dim=0, keepdim=True).expand(keys.shape[1], -1)
        return F.pad(scores, (0, 1), value=float(scores.max()) + 1 if scores.numel() else 1.0)
