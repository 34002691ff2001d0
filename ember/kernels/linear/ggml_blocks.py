"""A weight still in GGML's quantized blocks (Q4_0, Q4_1, Q8_0), as a GGUF file stores it.

The GGUF loader hands these to the model instead of float tensors, so a LinearMethod whose
layout matches (`pack_quantized`, e.g. int4 from Q4_0/Q4_1) repacks the codes and scales
without going through float; every other method dequantizes one fused projection at a time.
Blocks run along each row, 32 inputs per block, so rows can be concatenated (fused QKV and
gate/up) and permuted (llama.cpp's Q/K order) as raw bytes.

Block layouts (ggml-common.h), per row of K inputs, K/32 blocks of:
  Q4_0: fp16 d, 16 bytes of codes;          w = (q - 8) * d
  Q4_1: fp16 d, fp16 m, 16 bytes of codes;  w = q * d + m
  Q8_0: fp16 d, 32 int8 codes;              w = q * d
A 4-bit block's byte j holds input j in its low nibble and input j + 16 in its high one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@dataclass
class GGMLBlocks:
    qtype: str
    data: torch.Tensor  # uint8 [rows, K / 32 * BLOCK_BYTES[qtype]]
    cols: int  # K, the input size

    def __post_init__(self):
        if self.qtype not in BLOCK_BYTES:
            raise ValueError(f"no raw-block support for {self.qtype}; supported: {sorted(BLOCK_BYTES)}")
        if self.cols % BLOCK or self.data.shape[-1] != self.cols // BLOCK * BLOCK_BYTES[self.qtype]:
            raise ValueError(f"{self.qtype} data of {self.data.shape[-1]} bytes per row does not hold {self.cols} inputs")

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.data.shape[0], self.cols])

    def _blocks(self) -> torch.Tensor:
        return self.data.reshape(self.data.shape[0], self.cols // BLOCK, BLOCK_BYTES[self.qtype])

    def _half(self, blocks: torch.Tensor, at: int) -> torch.Tensor:
        """The fp16 stored at byte `at` of every block, [rows, K/32]."""
        return blocks[..., at:at + 2].contiguous().view(torch.float16)[..., 0]

    def q4_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """4-bit codes uint8 [rows, K] in 0..15 and fp16 (scale, minimum) [rows, K/32] with
        w = q * scale + minimum: exactly the stored grid (Q4_0's minimum is -8 d, exact in fp16)."""
        if self.qtype not in ("Q4_0", "Q4_1"):
            raise ValueError(f"{self.qtype} has no 4-bit codes")
        b = self._blocks()
        scale = self._half(b, 0)
        if self.qtype == "Q4_1":
            minimum, qs = self._half(b, 2), b[..., 4:]
        else:
            minimum, qs = scale * -8, b[..., 2:]
        q = torch.cat([qs & 15, qs >> 4], dim=-1)  # [rows, K/32, 32]: inputs 0..15, then 16..31
        return q.reshape(self.data.shape[0], self.cols), scale, minimum

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [rows, K], computed as the `gguf` package does (tested equal)."""
        rows = self.data.shape[0]
        if self.qtype == "Q8_0":
            b = self._blocks()
            q = b[..., 2:].contiguous().view(torch.int8).float()
            w = self._half(b, 0).float()[..., None] * q
        else:
            q, scale, minimum = self.q4_codes()
            q = q.view(rows, -1, BLOCK).float()
            if self.qtype == "Q4_0":
                w = scale.float()[..., None] * (q - 8)
            else:
                w = scale.float()[..., None] * q + minimum.float()[..., None]
        return w.reshape(rows, self.cols).to(dtype)

    def permute_rows(self, order: torch.Tensor) -> "GGMLBlocks":
        return GGMLBlocks(self.qtype, self.data[order].contiguous(), self.cols)


Weight = torch.Tensor | GGMLBlocks


def cat_rows(parts: list[Weight]) -> Weight:
    """Stack weights along output rows: raw blocks stay raw when all parts share one layout."""
    if all(isinstance(p, GGMLBlocks) for p in parts) and len({(p.qtype, p.cols) for p in parts}) == 1:
        return GGMLBlocks(parts[0].qtype, torch.cat([p.data for p in parts]), parts[0].cols)
    return torch.cat([p.dequantize() if isinstance(p, GGMLBlocks) else p for p in parts])
