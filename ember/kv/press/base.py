"""The KVPress seam: which of a sequence's cache entries stay once its prompt is in the cache.

A press scores one layer's entries per KV head (`score`, [Hkv, T], higher kept first, the
shape kvpress scores in) from the decoded keys and values [T, Hkv, D] and, for presses that
read attention, the queries of the prompt's last tokens (`window`, observed by re-running
those tokens over the cache: press/window.py). One selection serves every KV head of a layer
(kvpress keeps a ragged set per head; a shared set keeps the paged layout: one block table
per sequence), so `select` keeps the entries with the highest score averaged over the KV
heads. Every layer keeps the same number of entries, so one table and one count cover them
all. `compact` applies a press to a running sequence: the kept entries are copied into fresh
private blocks and the old ones are released (prefix-cache blocks stay cached for others).
"""

from __future__ import annotations

import torch

from ember.registry import Registry


class KVPress:
    name = ""

    def __init__(self, ratio: float, config=None):
        """`config`: the EngineConfig, for presses with options (None: their defaults)."""
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"a press ratio is the share of entries removed, in [0, 1); got {ratio}")
        self.ratio = ratio

    def num_kept(self, num_entries: int) -> int:
        """kvpress's rule: keep int(T * (1 - ratio)) entries."""
        return int(num_entries * (1.0 - self.ratio))

    def window(self, num_entries: int) -> int:
        """How many of the prompt's last queries `score` reads (0: none; the whole prompt at most)."""
        return 0

    def score(self, layer: int, keys: torch.Tensor, values: torch.Tensor, window) -> torch.Tensor:
        """Importance [Hkv, T] of one layer's entries (keys/values [T, Hkv, D]); `window` is a
        press.window.QueryWindow when `self.window(T)` > 0, else None."""
        raise NotImplementedError

    def select(self, layer: int, keys: torch.Tensor, values: torch.Tensor, num_kept: int,
               window=None) -> torch.Tensor:
        """Cache indexes to keep (sorted, `num_kept` of them) of one layer's keys/values [T, Hkv, D]."""
        score = self.score(layer, keys, values, window).float().mean(dim=0)
        return score.topk(num_kept).indices.sort().values

    def gather(self, layer: int, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor, window=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept entries' keys and values, as the new cache will hold them (a merging press
        folds the evicted ones in here)."""
        return keys[index], values[index]


class OnBasePress(KVPress):
    """A press built on another press's scores (`--kv-press-base`, default snapkv)."""

    def __init__(self, ratio: float, config=None):
        super().__init__(ratio, config)
        self.base = KV_PRESSES.create(getattr(config, "kv_press_base", "snapkv"), ratio, config)

    def window(self, num_entries: int) -> int:
        return self.base.window(num_entries)


KV_PRESSES: Registry[KVPress] = Registry("KV press")


def parse_press(spec: str) -> tuple[str, float]:
    """'name[:ratio]' (ratio: the share of entries removed, default 0.5) -> (name, ratio)."""
    name, _, ratio = spec.partition(":")
    try:
        value = float(ratio) if ratio else 0.5
    except ValueError:
        raise ValueError(f"kv_press {spec!r}: the ratio after ':' must be a number in [0, 1)") from None
    return name, value
