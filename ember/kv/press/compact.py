"""Apply a press to a running sequence: its kept entries move into fresh private blocks."""

from __future__ import annotations

import torch

from ember.kv.cache import PagedKVCache
from ember.kv.manager import KVCacheManager
from ember.kv.press.base import KVPress
from ember.kv.press.window import observe_window
from ember.request import Request


def compact(press: KVPress, cache: PagedKVCache, kv: KVCacheManager, request: Request, model=None,
            keep: int | None = None, max_window: int | None = None) -> bool:
    """Keep what `press` selects of the request's cache entries, layer by layer; the request keeps
    its positions. False (nothing changed) when nothing would go or there is no room. `model`
    runs the window of queries that attention-scored presses read (press/window.py): the
    press's own window of the sequence's last tokens, at most `max_window` of them (a press
    again later reads only the tokens written since the last). `keep`: how many entries stay
    (default: the press's ratio of what there is).

    The kept entries are read out first (decoded: a quantizing codec encodes them again in
    their new blocks), then the old blocks are released, so a full pool still has room."""
    total = request.num_cached_tokens
    keep = press.num_kept(total) if keep is None else keep
    if keep >= total or not kv.can_reallocate(request, keep):
        return False
    table = torch.tensor(request.block_ids, dtype=torch.long)
    window = None
    n = min(press.window(total), total if max_window is None else max_window)
    if n > 0:
        if model is None:
            raise ValueError(f"press {press.name!r} reads attention: compact() needs the model")
        end = request.num_computed_tokens
        window = observe_window(model, cache, request.token_slice(end - n, end), end - n, total, request.block_ids)
    kept = []
    for layer in range(cache.num_layers):
        keys, values = cache.gather(layer, table, total)
        index = press.select(layer, keys, values, keep, window)
        kept.append(press.gather(layer, keys, values, index, window))
    blocks = kv.reallocate(request, keep)
    bs = cache.block_size
    slots = (torch.tensor(blocks)[:, None] * bs + torch.arange(bs)).flatten()[:keep]
    for layer, (keys, values) in enumerate(kept):
        cache.write(layer, slots, keys, values)
    cache.settle()  # the full blocks just written keep no scratch (the partial last one does)
    return True
