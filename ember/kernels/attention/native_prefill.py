"""Causal attention of a prefill chunk on the C kernel of csrc/attention.c.

`attend_causal(q, keys, values, scale)` computes what `TorchAttention.attend_one` does for a
chunk with more than one query, in fp32, and returns None where the kernel can't take the
inputs (no compiler, another dtype, a head size that is not a multiple of 32 up to 256), so
the caller keeps its torch path.
"""

from __future__ import annotations

import ctypes

import torch

from ember.kernels import native


def attend_causal(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor | None:
    """q [q_len, H, D] (rows may be strided), keys/values [ctx, Hkv, D] -> [q_len, H, D]."""
    q_len, heads, dim = q.shape
    ctx, kv_heads = keys.shape[0], keys.shape[1]
    if (q.dtype != torch.float32 or keys.dtype != torch.float32 or values.dtype != torch.float32
            or dim % 32 or dim > 256 or heads % kv_heads or q_len > ctx or q.stride(2) != 1 or q.stride(1) != dim):
        return None
    lib = native.load("attention")
    if lib is None:
        return None
    keys, values = keys.contiguous(), values.contiguous()
    out = torch.empty(q_len, heads, dim)
    p = ctypes.c_void_p
    lib.ember_attend_causal(p(q.data_ptr()), ctypes.c_long(q.stride(0)), p(keys.data_ptr()), p(values.data_ptr()),
                            ctypes.c_long(q_len), ctypes.c_long(ctx), ctypes.c_long(heads), ctypes.c_long(kv_heads),
                            ctypes.c_long(dim), ctypes.c_float(scale), p(out.data_ptr()),
                            ctypes.c_int(torch.get_num_threads()))
    return out
