"""KV codecs, registered by name (`--kv-cache-dtype`)."""

from ember.kv.codecs.base import KV_CODECS, KVCodec
from ember.kv.codecs import bfp, fp8, int8, kivi, plain, xquant  # noqa: F401  (register the codecs)


def get_kv_codec(name: str, block_size: int, num_kv_heads: int, head_dim: int, model_dtype) -> KVCodec:
    return KV_CODECS.create(name, block_size, num_kv_heads, head_dim, model_dtype)


__all__ = ["KV_CODECS", "KVCodec", "get_kv_codec"]
