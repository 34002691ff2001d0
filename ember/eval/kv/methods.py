"""A KV method as the evaluation names it: a codec, a press, or both ('kivi4+snapkv:0.5')."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.kv.codecs import KV_CODECS
from ember.kv.press import KV_PRESSES, parse_press


@dataclass(frozen=True)
class KVMethod:
    codec: str = "auto"
    press: str = ""

    @classmethod
    def parse(cls, spec: str) -> "KVMethod":
        """'auto' | CODEC | PRESS[:RATIO] | CODEC+PRESS[:RATIO]."""
        codec, press = "auto", ""
        for part in filter(None, (p.strip() for p in spec.split("+"))):
            name = parse_press(part)[0]
            if part in KV_CODECS and not press and codec == "auto":
                codec = part
            elif name in KV_PRESSES and not press:
                press = part
            else:
                raise ValueError(f"KV method {spec!r}: {part!r} is neither a KV cache dtype "
                                 f"({', '.join(KV_CODECS.names())}) nor a press ({', '.join(KV_PRESSES.names())}), "
                                 "or names a second one")
        if press:
            ratio = parse_press(press)[1]
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"KV method {spec!r}: the press ratio is the share of entries removed, in [0, 1)")
        return cls(codec, press)

    @property
    def name(self) -> str:
        return "+".join(p for p in (self.codec if self.codec != "auto" or not self.press else "", self.press) if p)

    @property
    def kept_share(self) -> float:
        """The share of a prompt's entries the press keeps (1 without a press)."""
        return 1.0 - parse_press(self.press)[1] if self.press else 1.0

    def engine_options(self) -> dict:
        return {"kv_cache_dtype": self.codec, "kv_press": self.press}


def bf16_bytes_per_token(model_config) -> int:
    """The baseline every compression ratio is against: K and V in bf16, all layers."""
    mc = model_config
    return 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * torch.finfo(torch.bfloat16).bits // 8
