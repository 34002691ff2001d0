"""Zeroed tensors for the KV cache whose pages the kernel maps on first write.

`torch.zeros` writes every byte of a cache sized for the worst case at start-up (a second or
more per GiB in a VM, where first touches are slow), and the process then holds all of it
whether requests ever use it. An anonymous memory map reads as zeros and takes memory only
where written, so a cache costs start-up nothing and resident memory what it holds.
"""

from __future__ import annotations

import math
import mmap

import torch

LAZY_FROM_BYTES = 1 << 20  # smaller tensors: plain torch.zeros (a map per tensor has a cost)


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor; from LAZY_FROM_BYTES up, backed by its own anonymous memory map (the
    tensor keeps the map alive)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes < LAZY_FROM_BYTES:
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(shape)
