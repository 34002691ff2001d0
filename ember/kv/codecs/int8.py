"""`int8`: K and V as int8 codes with one fp32 scale per token and KV head (symmetric).

scale = max|x| / 127 over the head's D values; code = round(x / scale), ties to even, so a
row's largest value is exact and the rest are within half a step. Per-token scales make the
contents independent of how a sequence's tokens were split into writes.
"""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec

QMAX = 127


def encode_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (int8 codes [..., D], fp32 scales [...]); the reference for csrc's store."""
    x = x.float()
    scale = x.abs().amax(-1) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / safe[..., None]).clamp_(-QMAX, QMAX)
    return codes.to(torch.int8), scale


@KV_CODECS.register("int8")
class Int8Codec(KVCodec):
    name = "int8"
    native_kind = "int8"

    def tensor_specs(self):
        data, scale = (self.block_size, self.num_kv_heads, self.head_dim), (self.block_size, self.num_kv_heads)
        return {"k": (data, torch.int8), "v": (data, torch.int8),
                "k_scale": (scale, torch.float32), "v_scale": (scale, torch.float32)}

    def write(self, tensors, slots, k, v):
        for name, x in (("k", k), ("v", v)):
            codes, scale = encode_rows(x)
            tensors[name].view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, codes)
            tensors[name + "_scale"].view(-1, self.num_kv_heads).index_copy_(0, slots, scale)

    def read(self, tensors, blocks):
        def one(name):
            return (tensors[name][blocks].float() * tensors[name + "_scale"][blocks][..., None]).to(self.model_dtype)
        return one("k"), one("v")
