"""`knorm` (kvpress's KnormPress): keep the entries whose keys have the smallest L2 norm."""

from __future__ import annotations

import torch

from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("knorm")
class KnormPress(KVPress):
    name = "knorm"

    def score(self, layer: int, keys: torch.Tensor, values: torch.Tensor, window) -> torch.Tensor:
        return -keys.float().norm(dim=-1).T  # [Hkv, T]
