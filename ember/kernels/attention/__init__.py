"""AttentionBackend: attention over a flat varlen batch and an (optional) paged KV cache."""

from ember.kernels.attention.base import ATTENTION_BACKENDS, AttentionBackend, AttentionMetadata
from ember.kernels.attention import batched, lmul, torch_ref  # noqa: F401  (register the backends)


def get_attention_backend(name: str) -> AttentionBackend:
    return ATTENTION_BACKENDS.create(name)


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "AttentionMetadata", "get_attention_backend"]
