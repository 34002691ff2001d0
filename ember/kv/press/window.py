"""The queries a press reads: the prompt's last tokens run again over the cache, not written.

Attention-scored presses (SnapKV, TOVA, H2O-style observed attention, Expected Attention)
score entries by what the prompt's last queries attend to. The serving path does not keep
queries (the fused C step never materialises them), so the press asks for them once the
prompt is in the cache: the last `n` prompt tokens go through the model's PyTorch forward
again, at their own positions, with an attention backend that records each layer's queries
and attends over the cache as it stands (causal within the window) without writing to it.
That costs a forward of n tokens (64 for SnapKV, 1 for TOVA, the whole prompt for the presses
that read every query), once per press of a sequence.

A sequence pressed again later (`--kv-press-interval`) reads the queries of the tokens written
since its last press (they are its last cache entries, none evicted), at their own positions,
over the entries the earlier press kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.kernels.attention import AttentionBackend, AttentionMetadata
from ember.kernels.attention.torch_ref import TorchAttention
from ember.models.rope import apply_rope


@dataclass
class QueryWindow:
    queries: list[torch.Tensor]  # per layer: [n, H, D] after RoPE, in the model's dtype
    positions: torch.Tensor  # [n] the window's positions (the last n of the sequence's tokens)
    num_entries: int  # cache entries of the sequence (the window is its last n)

    @property
    def next_position(self) -> int:
        """The position of the token after the window (entries and positions differ once pressed)."""
        return int(self.positions[-1]) + 1
    scale: float  # softmax scale, head_dim ** -0.5
    cos: torch.Tensor  # the model's RoPE tables [max_position, D], for presses that rotate
    sin: torch.Tensor

    def prerope_queries(self, layer: int) -> torch.Tensor:
        """The layer's window queries before RoPE [n, H, D] fp32 (the rotation undone)."""
        q = self.queries[layer].float()
        cos, sin = self.cos[self.positions].float(), self.sin[self.positions].float()
        return apply_rope(q, cos, -sin)


class _RecordQueries(AttentionBackend):
    """Keeps each layer's queries; attends over the sequence's cached entries, writing none."""
    name = "record-queries"

    def __init__(self, table: torch.Tensor):
        self.table, self.queries, self._reference = table, {}, TorchAttention()

    def forward(self, layer, q, k, v, meta: AttentionMetadata, kv_cache, scale):
        self.queries[layer] = q.clone()
        keys, values = kv_cache.gather(layer, self.table, meta.context_lens[0])
        return self._reference.attend_one(q, keys, values, scale)


@torch.inference_mode()
def observe_window(model, kv_cache, window_ids: list[int], first_position: int, num_entries: int,
                   block_ids: list[int]) -> QueryWindow:
    """The queries of a sequence's last tokens `window_ids`, at positions first_position on,
    whose entries are the last len(window_ids) of its `num_entries` cache entries (in blocks
    `block_ids`)."""
    n = len(window_ids)
    table = torch.tensor(block_ids, dtype=torch.long)
    recorder = _RecordQueries(table)
    ids = torch.tensor(window_ids, dtype=torch.long)
    positions = torch.arange(first_position, first_position + n, dtype=torch.long)
    meta = AttentionMetadata([n], [num_entries], None, table[None])
    model(ids, positions, meta, kv_cache, recorder)
    return QueryWindow([recorder.queries[i] for i in range(model.cfg.num_layers)], positions, num_entries,
                       model.cfg.head_dim ** -0.5, model.cos, model.sin)
