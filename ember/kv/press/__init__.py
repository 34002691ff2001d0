"""Token-level KV compression (presses), registered by name; `compact` applies one to a sequence."""

from ember.kv.press.base import KV_PRESSES, KVPress, parse_press
from ember.kv.press import expected_attention, knorm, kvcrush, merge, observed, snapkv, streaming, tova  # noqa: F401  (registers them)

__all__ = ["KV_PRESSES", "KVPress", "parse_press"]
