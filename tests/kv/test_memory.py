"""kv/memory.py: the cache's zeros are mapped on first write, so an engine holds what it uses."""

from __future__ import annotations

import torch

from ember.kv.codecs import get_kv_codec
from ember.kv.memory import LAZY_FROM_BYTES, lazy_zeros


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_large_cache_takes_memory_only_where_written():
    before = rss_bytes()
    t = lazy_zeros((64, 1024, 1024), torch.float32)  # 256 MiB
    assert rss_bytes() - before < 32 << 20
    assert t.is_contiguous() and t.shape == (64, 1024, 1024) and t.dtype == torch.float32
    assert float(t[17].abs().max()) == 0.0
    t[3] = 1.5  # one 4 MiB slice written
    grown = rss_bytes() - before
    assert 4 << 20 <= grown < 48 << 20
    assert float(t[3].sum()) == 1.5 * 1024 * 1024 and float(t[2].sum()) == 0.0


def test_every_dtype_and_small_tensors():
    for dtype in (torch.bfloat16, torch.float16, torch.uint8, torch.int32, torch.float8_e4m3fn):
        t = lazy_zeros((LAZY_FROM_BYTES // 2, 3), dtype)
        assert t.dtype == dtype and t.shape == (LAZY_FROM_BYTES // 2, 3) and not t.float().any()
    small = lazy_zeros((4, 4), torch.float32)
    assert small.shape == (4, 4) and not small.any()


def test_codec_tensors_are_lazy_and_zero():
    codec = get_kv_codec("kivi4", 16, 3, 64, torch.float32)
    before = rss_bytes()
    tensors = codec.allocate(8192)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert total > 64 << 20
    assert rss_bytes() - before < total // 4
    assert all(not t.any() for name, t in tensors.items() if name != "scratch_slot")
