"""`batched`: the fast torch-native backend. All decode rows of a step attend in one call.

The reference backend runs one SDPA per sequence per layer; at batch 32 that is ~1,000
small calls a step. Here the decode rows (one query each) gather their blocks into one
padded [B, Hkv, ctx, D] tensor and attend together under a length mask; prefill chunks,
few per step, go one by one, on the C kernel of csrc/attention.c where it builds (fp32;
torch's fused SDPA otherwise). Held to the `torch` reference in tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kernels.attention.base import ATTENTION_BACKENDS, AttentionBackend, AttentionMetadata
from ember.kernels.attention.native_prefill import attend_causal
from ember.kernels.attention.torch_ref import TorchAttention, sequence_keys_values


@ATTENTION_BACKENDS.register("batched")
class BatchedAttention(AttentionBackend):
    name = "batched"
    plain_softmax = True

    def __init__(self):
        self._reference = TorchAttention()
        self._plan_key = None
        self._plan = None

    def _decode_plan(self, meta: AttentionMetadata, block_size: int):
        """Row indices, padded block tables and the length mask of this step's decode rows.

        Built once per step (the metadata object is shared by every layer) and reused by all layers.
        """
        if self._plan_key is meta:
            return self._plan
        starts, rows, seqs = 0, [], []
        for i, n in enumerate(meta.query_lens):
            if n == 1:
                rows.append(starts)
                seqs.append(i)
            starts += n
        plan = None
        if rows:
            lens = torch.tensor([meta.context_lens[i] for i in seqs])
            width = -(-int(lens.max()) // block_size)
            tables = meta.block_tables[torch.tensor(seqs), :width]
            if len(seqs) == 1:
                # One sequence: cut its keys to its length instead of masking the padding.
                mask, cut = None, meta.context_lens[seqs[0]]
            else:
                positions = torch.arange(width * block_size)
                mask, cut = (positions[None, :] < lens[:, None])[:, None, None, :], None  # [B, 1, 1, ctx]
            # Decode-only steps (the common case) need no scatter back into the flat rows.
            only = len(rows) == len(meta.query_lens)
            plan = (torch.tensor(rows), seqs, tables, mask, cut, only)
        self._plan_key, self._plan = meta, plan
        return plan

    def _attend_chunk(self, q, keys, values, scale):
        out = attend_causal(q, keys, values, scale) if q.shape[0] > 1 else None
        return self._reference.attend_one(q, keys, values, scale) if out is None else out

    def forward(self, layer, q, k, v, meta: AttentionMetadata, kv_cache, scale):
        if kv_cache is not None:
            kv_cache.write(layer, meta.slot_mapping, k, v, meta.positions)
        plan = self._decode_plan(meta, kv_cache.block_size) if kv_cache is not None and 1 in meta.query_lens else None
        decode_rows = set()
        if plan is not None:
            rows, seqs, tables, mask, cut, only = plan
            b = len(seqs)
            shape = (b, -1, kv_cache.num_kv_heads, kv_cache.head_dim)
            keys, values = kv_cache.read_blocks(layer, tables)  # [B, width, block_size, Hkv, D]
            keys = keys.reshape(shape)[:, :cut].transpose(1, 2)  # [B, Hkv, ctx, D]
            values = values.reshape(shape)[:, :cut].transpose(1, 2)
            qs = (q if only else q[rows])[:, :, None, :]  # [B, H, 1, D]
            o = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
            if only:
                return o[:, :, 0, :]
            out = torch.empty_like(q)
            out[rows] = o[:, :, 0, :]
            decode_rows = set(seqs)
        else:
            out = torch.empty_like(q)
        start = 0
        for i, q_len in enumerate(meta.query_lens):
            end = start + q_len
            if i not in decode_rows:
                for a, b, keys, values in sequence_keys_values(layer, k, v, meta, kv_cache, i, start, end):
                    out[a:b] = self._attend_chunk(q[a:b], keys, values, scale)
            start = end
        return out
