"""`auto` (the model's dtype), `fp32`, `bf16`: K and V stored as plain floats, no scales."""

from __future__ import annotations

import torch

from ember.kv.codecs.base import KV_CODECS, KVCodec


class PlainCodec(KVCodec):
    storage: torch.dtype | None = None  # None: the model's dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.storage or self.model_dtype

    @property
    def native_kind(self) -> str | None:
        return {torch.float32: "f32", torch.bfloat16: "bf16"}.get(self.dtype)

    def tensor_specs(self):
        shape = (self.block_size, self.num_kv_heads, self.head_dim)
        return {"k": (shape, self.dtype), "v": (shape, self.dtype)}

    def write(self, tensors, slots, k, v):
        flat = (-1, self.num_kv_heads, self.head_dim)
        tensors["k"].view(flat).index_copy_(0, slots, k.to(self.dtype))
        tensors["v"].view(flat).index_copy_(0, slots, v.to(self.dtype))

    def read(self, tensors, blocks):
        return tensors["k"][blocks].to(self.model_dtype), tensors["v"][blocks].to(self.model_dtype)


@KV_CODECS.register("auto")
class AutoCodec(PlainCodec):
    name = "auto"


@KV_CODECS.register("fp32")
class Fp32Codec(PlainCodec):
    name, storage = "fp32", torch.float32


@KV_CODECS.register("bf16")
class Bf16Codec(PlainCodec):
    name, storage = "bf16", torch.bfloat16
