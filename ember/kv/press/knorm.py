"""`knorm` (kvpress's KnormPress): keep the entries whose keys have the smallest L2 norm.

kvpress scores each KV head apart (score = -||k||); one selection serves all heads of a layer
here, so the score is averaged over the layer's KV heads.
"""

from __future__ import annotations

import torch

from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("knorm")
class KnormPress(KVPress):
    name = "knorm"

    def select(self, layer: int, keys: torch.Tensor, values: torch.Tensor, num_kept: int) -> torch.Tensor:
        score = -keys.float().norm(dim=-1).mean(dim=-1)  # [T]
        return score.topk(num_kept).indices.sort().values
