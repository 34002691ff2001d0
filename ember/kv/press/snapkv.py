"""`snapkv` (SnapKV, Li et al. 2024; kvpress's SnapKVPress): score each entry by the attention
the prompt's last 64 queries pay it, averaged over them, smoothed by average pooling over 5
neighbouring entries and averaged over each KV head's query heads; the window itself is
always kept (scored above everything)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kv.press.attention_scores import per_kv_head, window_attention
from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("snapkv")
class SnapKVPress(KVPress):
    name = "snapkv"
    window_size = 64  # kvpress's and the paper's observation window
    kernel_size = 5

    def window(self, num_entries: int) -> int:
        # kvpress asserts the prompt is longer than the window; a shorter one is scored by all
        # but its first entry
        return min(self.window_size, num_entries - 1)

    def score(self, layer, keys, values, window):
        n, total = window.queries[layer].shape[0], keys.shape[0]
        weights = window_attention(window.queries[layer], keys, window.scale, total - n)[..., :total - n]
        scores = F.avg_pool1d(weights.mean(dim=1)[None], self.kernel_size, stride=1, padding=self.kernel_size // 2)[0]
        scores = per_kv_head(scores, keys.shape[1])
        return F.pad(scores, (0, n), value=float(scores.max()) + 1 if scores.numel() else 1.0)
