"""The runner's part of chunk reuse: compute the chunks a step's plans miss, then blend.

A missing chunk is computed alone, at positions 0..L-1, into the blocks the KV manager gave
it (the runner's usual forward, one sequence per chunk, all in one call); then each request's
plan runs the model's blend prefill over its own blocks (models/llama_blend.py).
"""

from __future__ import annotations

import torch

from ember.kernels.attention import AttentionMetadata
from ember.kv.cache import PagedKVCache
from ember.kv.chunks import BlendPlan, ChunkUse


class Blender:
    def __init__(self, model, kv_cache: PagedKVCache, forward, ratio: float, check_layer: int):
        """`forward(input_ids, positions, meta) -> hidden`: the runner's own forward (the fused C
        prefill where it applies), which computes the missing chunks."""
        if getattr(model, "blend_prefill", None) is None:
            raise ValueError(f"{type(model).__name__} has no blend prefill: the chunk cache can't serve it")
        self.model, self.kv_cache, self.forward = model, kv_cache, forward
        self.ratio, self.check_layer = ratio, check_layer

    def fill(self, uses: list[ChunkUse]) -> None:
        """Compute each chunk alone into its blocks."""
        if not uses:
            return
        bs = self.kv_cache.block_size
        ids, positions, slots, lengths = [], [], [], []
        for use in uses:
            n = len(use.tokens)
            ids.extend(use.tokens)
            positions.extend(range(n))
            slots.extend(use.blocks[i // bs] * bs + i % bs for i in range(n))
            lengths.append(n)
        width = max(len(u.blocks) for u in uses)
        tables = torch.zeros(len(uses), width, dtype=torch.long)
        for i, use in enumerate(uses):
            tables[i, :len(use.blocks)] = torch.tensor(use.blocks, dtype=torch.long)
        meta = AttentionMetadata(lengths, list(lengths), torch.tensor(slots, dtype=torch.long), tables)
        self.forward(torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), meta)
        self.kv_cache.settle()  # full chunk blocks keep no scratch; a partial last one keeps its slot

    def __call__(self, plans: list[tuple[list[int], list[int], BlendPlan]]) -> None:
        """`plans`: (prompt token ids, block ids, plan) of each request blended this step."""
        self.fill([use for _, _, plan in plans for use in plan.chunks if use.fill])
        for token_ids, block_ids, plan in plans:
            plan.recomputed = self.model.blend_prefill(self.kv_cache, token_ids, block_ids, plan,
                                                       self.ratio, self.check_layer)
