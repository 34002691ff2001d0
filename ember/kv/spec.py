"""KV sizing in one place: engine config + model config -> codec, block bytes, number of blocks.

The engine, `ember info` and swap all ask this, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.kv.codecs import KVCodec, get_kv_codec

# The most of --kv-cache-memory a codec's open scratch pool may take. The pool needs a slot per
# running sequence (KIVI: its open block's full-precision keys), so sizing it for every one of
# --max-num-seqs could take most of a small cache; past this share the engine runs fewer
# sequences at once instead (`KVCacheSpec.max_num_seqs`), and says so.
SCRATCH_SHARE = 0.25


@dataclass(frozen=True)
class KVCacheSpec:
    codec: KVCodec
    num_layers: int
    block_size: int
    num_blocks: int
    max_model_len: int  # the longest sequence the cache and the model allow
    num_scratch: int = 0  # slots of the codec's open scratch pool, per layer (kv/scratch.py; 0: it keeps none)
    num_pass: int = 0  # slots of its pass pool, shared by the layers
    max_num_seqs: int = 0  # sequences a step may hold: --max-num-seqs, or fewer where the scratch pool caps it

    @property
    def bytes_per_block(self) -> int:
        """All layers' K and V (with scales) for one block of tokens (not the scratch pool)."""
        return self.num_layers * self.codec.bytes_per_block()

    @property
    def scratch_bytes(self) -> int:
        """The scratch pools, all layers (KIVI: the open blocks' full-precision keys)."""
        return (self.num_scratch * self.num_layers + self.num_pass) * self.codec.bytes_per_scratch_slot()

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_per_block / self.block_size

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block + self.scratch_bytes

    @property
    def bytes_per_token_held(self) -> float:
        """total_bytes per token of capacity: the blocks with the scratch pool spread over them."""
        return self.total_bytes / self.num_tokens

    def seqs_note(self, config) -> str | None:
        """Why a step holds fewer than --max-num-seqs sequences, when the scratch pool caps it."""
        if self.max_num_seqs >= config.max_num_seqs:
            return None
        slot = self.num_layers * self.codec.bytes_per_scratch_slot() / 2 ** 20
        return (f"max_num_seqs {config.max_num_seqs} -> {self.max_num_seqs}: {self.codec.name} keeps a scratch slot "
                f"({slot:.2f} MiB over the layers) per running sequence, and its pool takes at most "
                f"{SCRATCH_SHARE:.0%} of kv_cache_memory {config.kv_cache_memory} (a larger --kv-cache-memory "
                "or a smaller --block-size runs more at once)")

    def blocks_in(self, num_bytes: int) -> int:
        """How many whole blocks `num_bytes` hold (the host swap pool's size)."""
        return num_bytes // self.bytes_per_block


def kv_cache_spec(config, model_config) -> KVCacheSpec:
    """config: an EngineConfig; model_config: the model's ModelConfig."""
    from ember.config import parse_bytes

    mc, bs = model_config, config.block_size
    codec = get_kv_codec(config.kv_cache_dtype, bs, mc.num_kv_heads, mc.head_dim, config.torch_dtype)
    block_bytes = mc.num_layers * codec.bytes_per_block()
    # Scratch slots (only open blocks hold one, kv/scratch.py): per layer, one per sequence (its
    # partial last block) and 2 for prefill chunks that fill one block and open the next in
    # the same step (more at once grows the pool); shared by the layers, one per block a
    # step's token budget can open and fill.
    scratch = codec.scratch_specs()
    max_num_seqs = config.max_num_seqs
    num_pass = -(-config.max_num_batched_tokens // bs) + 1 if scratch else 0
    if scratch and not config.kv_cache_tokens:  # a memory budget: the pool takes at most its share
        slot_bytes = mc.num_layers * codec.bytes_per_scratch_slot()
        share = SCRATCH_SHARE * parse_bytes(config.kv_cache_memory) - num_pass * codec.bytes_per_scratch_slot()
        max_num_seqs = max(1, min(max_num_seqs, int(share // slot_bytes) - 2))
    num_scratch = max_num_seqs + 2 if scratch else 0
    scratch_bytes = (num_scratch * mc.num_layers + num_pass) * codec.bytes_per_scratch_slot()
    if config.kv_cache_tokens:
        num_blocks = -(-config.kv_cache_tokens // bs)
    else:  # the memory holds the scratch pool and the blocks
        num_blocks = (parse_bytes(config.kv_cache_memory) - scratch_bytes) // block_bytes
    limit = config.max_model_len or mc.max_position
    # Never allocate more than max_num_seqs full-length sequences could use.
    num_blocks = max(1, min(num_blocks, max_num_seqs * -(-limit // bs) + 1))
    max_model_len = min(limit, mc.max_position, num_blocks * bs)
    return KVCacheSpec(codec, mc.num_layers, bs, num_blocks, max_model_len, num_scratch, num_pass, max_num_seqs)
