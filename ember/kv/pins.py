"""KV pinned past its request: blocks a finished request leaves held for a time, by key (the
`continuum` policy keeps an agent program's context for its next turn this way).

A pin holds a reference on the request's blocks that are indexed in the prefix cache, so
they stay cached, and findable, after the request is freed; releasing it makes them ordinary
cached blocks again (evictable, LRU). The scheduler releases a pin when its key's next
request is admitted, when it expires, or when blocks run short (before it preempts).
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.kv.manager import KVCacheManager
from ember.request import Request


@dataclass
class Pin:
    blocks: list[int]
    expires: float


class KVPins:
    def __init__(self, kv: KVCacheManager):
        self.kv = kv
        self._pins: dict[str, Pin] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._pins

    def __getitem__(self, key: str) -> Pin:
        return self._pins[key]

    def __iter__(self):
        return iter(self._pins)

    def __len__(self) -> int:
        return len(self._pins)

    @property
    def num_blocks(self) -> int:
        return sum(len(p.blocks) for p in self._pins.values())

    def hold(self, key: str, request: Request, expires: float) -> None:
        """Pin `request`'s cached blocks under `key` (replacing the key's earlier pin); call
        before the request's blocks are freed."""
        self.release(key)
        self._pins[key] = Pin(self.kv.pin(request), expires)

    def release(self, key: str) -> bool:
        pin = self._pins.pop(key, None)
        if pin is not None:
            self.kv.unpin(pin.blocks)
        return pin is not None

    def release_oldest(self) -> bool:
        """Give back the pin closest to expiry; False when nothing is pinned."""
        if not self._pins:
            return False
        return self.release(min(self._pins, key=lambda k: self._pins[k].expires))

    def expire(self, now: float) -> None:
        for key in [k for k, pin in self._pins.items() if pin.expires <= now]:
            self.release(key)
