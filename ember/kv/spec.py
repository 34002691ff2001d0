"""KV sizing in one place: engine config + model config -> codec, block bytes, number of blocks.

The engine, `ember info` and swap all ask this, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.kv.codecs import KVCodec, get_kv_codec


@dataclass(frozen=True)
class KVCacheSpec:
    codec: KVCodec
    num_layers: int
    block_size: int
    num_blocks: int
    max_model_len: int  # the longest sequence the cache and the model allow

    @property
    def bytes_per_block(self) -> int:
        """All layers' K and V (with scales) for one block of tokens."""
        return self.num_layers * self.codec.bytes_per_block()

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_per_block / self.block_size

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    def blocks_in(self, num_bytes: int) -> int:
        """How many whole blocks `num_bytes` hold (the host swap pool's size)."""
        return num_bytes // self.bytes_per_block


def kv_cache_spec(config, model_config) -> KVCacheSpec:
    """config: an EngineConfig; model_config: the model's ModelConfig."""
    from ember.config import parse_bytes

    mc, bs = model_config, config.block_size
    codec = get_kv_codec(config.kv_cache_dtype, bs, mc.num_kv_heads, mc.head_dim, config.torch_dtype)
    block_bytes = mc.num_layers * codec.bytes_per_block()
    if config.kv_cache_tokens:
        num_blocks = -(-config.kv_cache_tokens // bs)
    else:
        num_blocks = parse_bytes(config.kv_cache_memory) // block_bytes
    limit = config.max_model_len or mc.max_position
    # Never allocate more than max_num_seqs full-length sequences could use.
    num_blocks = max(1, min(num_blocks, config.max_num_seqs * -(-limit // bs) + 1))
    max_model_len = min(limit, mc.max_position, num_blocks * bs)
    return KVCacheSpec(codec, mc.num_layers, bs, num_blocks, max_model_len)
