"""`merge` (Elastic Cache's merging, liuzuyan/ElasticCache): keep what a base press scores
highest, with the first 4 entries and the last always kept, and fold each evicted entry's
value into its nearest kept entry by position: a kept entry's value becomes the mean of its
own and those merged into it. Keys stay as they are (averaging keys would mix RoPE
rotations). Ties in distance go to the earlier kept entry.
"""

from __future__ import annotations

import torch

from ember.kv.press.base import KV_PRESSES, OnBasePress

SINKS = 4


@KV_PRESSES.register("merge")
class MergePress(OnBasePress):
    name = "merge"

    def select(self, layer, keys, values, num_kept, window=None):
        score = self.base.score(layer, keys, values, window).float().mean(dim=0)
        top = float(score.max()) + 1
        score[:SINKS] = top
        score[-1] = top
        return score.topk(num_kept).indices.sort().values

    def gather(self, layer, keys, values, index, window=None):
        total = keys.shape[0]
        # each entry's nearest kept entry by position (kept entries map to themselves)
        right = torch.searchsorted(index, torch.arange(total)).clamp_(max=len(index) - 1)
        left = (right - 1).clamp_(min=0)
        positions = torch.arange(total)
        nearer_left = (positions - index[left]).abs() <= (index[right] - positions).abs()
        owner = torch.where(nearer_left, left, right)  # [T] -> slot in index
        merged = torch.zeros(len(index), *values.shape[1:], dtype=torch.float32)
        merged.index_add_(0, owner, values.float())
        counts = torch.bincount(owner, minlength=len(index)).float()
        return keys[index], (merged / counts[:, None, None]).to(values.dtype)
