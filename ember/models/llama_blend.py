"""CacheBlend's prefill for the Llama family: reuse chunks' own KV, recompute the tokens that deviate.

A chunk's KV was computed alone (kv/chunks.py), so its tokens never attended to what now
precedes them. The blend (Yao et al., CacheBlend) runs the blended range of a prompt through
the layers like this:
- every layer starts from the chunks' cached entries, keys rotated from positions 0..L-1 to
  where each chunk now stands (RoPE is a rotation, so rotating by the offset is exact);
- the first `check_layer` layers are computed for every token (their K/V: fresh);
- at `check_layer`, the fresh values of the chunk tokens are compared with the cached ones,
  and only the `ratio` share that deviates most (squared difference), plus every token that
  is not in a chunk, goes on; the others keep their cached entries in this and every deeper
  layer, and their hidden states are dropped;
- each layer writes the range's entries into the request's own paged blocks, through the
  codec, and the selected tokens attend causally over the prefix, the cached and the fresh
  entries alike.
With `ratio` 1 every token is recomputed: the result is full prefill.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ember.kv.chunks import BlendPlan
from ember.models.rope import apply_rope


def rotate_keys(keys: torch.Tensor, offset: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Keys [L, Hkv, D] rotated at positions 0..L-1, moved to offset..offset+L-1."""
    n = keys.shape[0]
    return apply_rope(keys, cos[offset].expand(n, -1), sin[offset].expand(n, -1))


def _cached_entries(model, kv_cache, layer: int, plan: BlendPlan, n: int):
    """The range's entries as the chunk cache has them ([n, Hkv, D]; zero outside chunks)."""
    cfg = model.cfg
    keys = torch.zeros(n, cfg.num_kv_heads, cfg.head_dim, dtype=model.dtype)
    values = torch.zeros_like(keys)
    for use in plan.chunks:
        length = use.end - use.start
        k, v = kv_cache.gather(layer, torch.tensor(use.blocks, dtype=torch.long), length)
        a = use.start - plan.start
        keys[a:a + length] = rotate_keys(k, use.start, model.cos, model.sin)
        values[a:a + length] = v
    return keys, values


def causal_mask(query_positions: torch.Tensor, num_keys: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [A, E]: 0 where key position <= query position, -inf after it."""
    mask = torch.zeros(len(query_positions), num_keys, dtype=dtype)
    return mask.masked_fill_(torch.arange(num_keys)[None, :] > query_positions[:, None], -math.inf)


def _attend(q, keys, values, mask, scale):
    """q [A, H, D] over keys/values [E, Hkv, D] with the additive mask [A, E]. The query heads
    that share a KV head are stacked into one matrix product (no repeated K/V)."""
    a, h, d = q.shape
    hkv = keys.shape[1]
    g = h // hkv
    qh = q.reshape(a, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, g * a, d)
    scores = torch.baddbmm(mask.repeat(g, 1)[None], qh, keys.permute(1, 2, 0), alpha=scale)
    out = torch.bmm(scores.softmax(dim=-1), values.transpose(0, 1))  # [Hkv, g*A, D]
    return out.reshape(hkv, g, a, d).permute(2, 0, 1, 3).reshape(a, h, d)


@torch.inference_mode()
def blend_prefill(model, kv_cache, token_ids: list[int], block_ids: list[int], plan: BlendPlan,
                  ratio: float, check_layer: int = 1) -> int:
    """Fill the request's entries plan.start..plan.end-1 (`block_ids`: its blocks, the entries
    before plan.start already there); returns how many chunk tokens were recomputed."""
    from ember.models.llama import rms_norm

    cfg, bs = model.cfg, kv_cache.block_size
    start, end = plan.start, plan.end
    n = end - start
    positions = torch.arange(start, end)
    table = torch.tensor(block_ids, dtype=torch.long)
    slots = table[positions // bs] * bs + positions % bs
    in_chunk = torch.zeros(n, dtype=torch.bool)
    for use in plan.chunks:
        in_chunk[use.start - start:use.end - start] = True
    num_chunk = int(in_chunk.sum())
    keep = min(num_chunk, math.ceil(ratio * num_chunk))
    rows = torch.arange(n)  # the tokens still computed
    x = F.embedding(torch.tensor(token_ids[start:end], dtype=torch.long), model.embed)
    cos, sin = model.cos[positions], model.sin[positions]
    split = cfg.q_size + cfg.kv_size
    last, mask = len(model.layers) - 1, None
    for index, layer in enumerate(model.layers):
        cached_k, cached_v = _cached_entries(model, kv_cache, index, plan, n)
        h = rms_norm(x, layer.input_norm, cfg.rms_norm_eps)
        qkv = layer.qkv_proj(h)
        qk = apply_rope(qkv[:, :split].view(-1, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim), cos, sin)
        q, k = qk[:, :cfg.num_heads], qk[:, cfg.num_heads:]
        v = qkv[:, split:].view(-1, cfg.num_kv_heads, cfg.head_dim)
        if index == check_layer and keep < num_chunk:
            deviation = (v.float() - cached_v[rows].float()).pow(2).sum(dim=(1, 2))
            deviation[~in_chunk[rows]] = math.inf  # the tokens outside chunks always go on
            chosen = deviation.topk(len(rows) - num_chunk + keep).indices.sort().values
            rows, x, q, k, v = rows[chosen], x[chosen], q[chosen], k[chosen], v[chosen]
            cos, sin, mask = cos[chosen], sin[chosen], None
        keys, values = cached_k, cached_v
        keys[rows], values[rows] = k, v
        kv_cache.write(index, slots, keys, values, positions)
        if index == last:
            break  # only its entries are needed: no later layer reads its output
        if start:
            prefix_k, prefix_v = kv_cache.gather(index, table, start)
            keys, values = torch.cat([prefix_k, keys]), torch.cat([prefix_v, values])
        if mask is None:  # the same for every layer with the same rows
            mask = causal_mask(positions[rows], end, q.dtype)
        attn = _attend(q, keys, values, mask, layer.scale)
        x = x + layer.o_proj(attn.reshape(-1, cfg.q_size))
        h = rms_norm(x, layer.post_attention_norm, cfg.rms_norm_eps)
        gate, up = layer.gate_up_proj(h).chunk(2, dim=-1)
        x = x + layer.down_proj(F.silu(gate) * up)
    return keep if check_layer < cfg.num_layers else num_chunk
