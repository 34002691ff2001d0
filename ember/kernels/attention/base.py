"""The AttentionBackend seam and the metadata that describes one flat batch.

A batch is a concatenation of sequences: sequence i contributes `query_lens[i]` new tokens,
which sit at the end of its `context_lens[i]` tokens of context. Without a cache
(`slot_mapping is None`) each sequence attends only to its own new tokens (a plain causal
forward, used for evaluation). With a cache, new K/V are written to `slot_mapping` slots
and attention reads the sequence's blocks through `block_tables`. Context lengths count
cache entries, not positions: once a sequence has dropped entries (a window, a press) its
RoPE positions run ahead of them, and only the positions tensor knows them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ember.registry import Registry


@dataclass
class AttentionMetadata:
    query_lens: list[int]
    context_lens: list[int]
    slot_mapping: torch.Tensor | None = None  # [T] int64: cache slot (block * block_size + offset) per new token
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int64
    positions: torch.Tensor | None = None  # [T] int64: RoPE position per new token (the model fills it)

    @classmethod
    def no_cache(cls, lengths: list[int]) -> "AttentionMetadata":
        return cls(query_lens=list(lengths), context_lens=list(lengths))

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return all(n == 1 for n in self.query_lens)


class AttentionBackend(ABC):
    name: str = ""
    # True when the backend is one fast way of computing exact softmax(q.k * scale) @ v over the
    # plain cache, so a fused decode step (models/llama_native.py) may compute it in its place.
    plain_softmax: bool = False

    @abstractmethod
    def forward(
        self,
        layer: int,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        meta: AttentionMetadata,
        kv_cache,  # ember.kv.cache.PagedKVCache | None
        scale: float,
    ) -> torch.Tensor:  # [T, H, D]
        ...


ATTENTION_BACKENDS: Registry[AttentionBackend] = Registry("attention backend")
