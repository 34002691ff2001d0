"""`kvcrush` (KVCrush, arXiv 2503.00022; OpenVINO GenAI's kvcrush.cpp works per block): a base
press keeps most of the budget; the rest goes to representatives of what it would evict, so
the evicted distribution stays covered.

Each entry gets a binary signature over the KV heads (bit h: the entry is in the top half of
head h's base scores). The entries the base press would evict are sorted by the Hamming
distance of their signature to an anchor (the bitwise majority of the evicted signatures,
OpenVINO's `MEAN` mode), and representatives are taken at evenly spaced places in that order.
Here the signature is per token, as the paper describes, not per block as OpenVINO's; with
this model's 3 KV heads it has 8 possible values, so the grouping is coarse.
"""

from __future__ import annotations

import torch

from ember.kv.press.base import KV_PRESSES, OnBasePress


@KV_PRESSES.register("kvcrush")
class KVCrushPress(OnBasePress):
    name = "kvcrush"

    def __init__(self, ratio: float, config=None):
        super().__init__(ratio, config)
        self.share = getattr(config, "kvcrush_share", 0.25)

    def select(self, layer, keys, values, num_kept, window=None):
        scores = self.base.score(layer, keys, values, window).float()  # [Hkv, T]
        total = scores.shape[1]
        crush = min(int(num_kept * self.share), total - num_kept)
        order = scores.mean(dim=0).argsort(descending=True)
        kept, evicted = order[:num_kept - crush], order[num_kept - crush:]
        if crush <= 0:
            return kept.sort().values
        rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
        signature = (rank[:, evicted] < total // 2).T  # [E, Hkv]
        anchor = signature.float().mean(dim=0) > 0.5
        distance = (signature != anchor).sum(dim=1)
        by_distance = evicted[torch.sort(distance, stable=True).indices]
        step = len(by_distance) // crush
        chosen = by_distance[torch.arange(crush) * step]
        return torch.cat([kept, chosen]).sort().values
