"""`streaming` (StreamingLLM): keep the first `sinks` entries (attention sinks) and the most recent ones."""

from __future__ import annotations

import torch

from ember.kv.press.base import KV_PRESSES, KVPress


@KV_PRESSES.register("streaming")
class StreamingPress(KVPress):
    name = "streaming"
    sinks = 4  # kvpress's n_sink

    def select(self, layer: int, keys: torch.Tensor, values: torch.Tensor, num_kept: int,
               window=None) -> torch.Tensor:
        total = keys.shape[0]
        sinks = min(self.sinks, num_kept)
        return torch.cat([torch.arange(sinks), torch.arange(total - (num_kept - sinks), total)])
