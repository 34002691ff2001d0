"""A GGUF header reader: metadata as Python values and tensors as views of one memory map.

The `gguf` package's GGUFReader builds a NumPy view for every part of every field; a
tokenizer's 100k strings make that seconds of start-up. This reads the same header with
`struct` over one buffer (the format: ggml's docs/gguf.md) and keeps the `gguf` package for
type names, block sizes and dequantization. `gguf.GGUFReader` is the oracle in
tests/loader/test_gguf_reader.py.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
# value type -> struct format of one scalar (8: string, 9: array are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_FLOAT_DTYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                 GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
                 GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
                 GGMLQuantizationType.I64: np.int64}


@dataclass
class GGUFTensor:
    """One tensor: `shape` innermost first (as GGUF lists it); `data` a read-only view: the
    element type for float/int tensors, shaped outermost first; bytes [rows, bytes per row]
    for quantized ones (the shape the `gguf` package's dequantize takes)."""
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype == 8:
                return [self.string() for _ in range(count)]
            if etype in _NUMPY:
                arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]  # arrays of arrays
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")
        return self.scalar(_SCALARS[vtype])


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """(metadata, tensors by name) of a GGUF file; ValueError when it is not one."""
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:4] != MAGIC:
        raise ValueError(f"bad magic {bytes(buf[:4])!r}")
    cur = _Cursor(buf)
    cur.pos = 4
    try:
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (2 and 3 are read)")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = tuple(cur.scalar("<Q") for _ in range(cur.scalar("<I")))
            infos.append((name, dims, GGMLQuantizationType(cur.scalar("<I")), cur.scalar("<Q")))
    except struct.error as exc:
        raise ValueError(f"truncated header ({exc})") from None
    align = int(meta.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    data = np.frombuffer(buf, dtype=np.uint8)
    tensors = {}
    for name, dims, ttype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[ttype]
        count = int(np.prod(dims, dtype=np.int64))
        nbytes = count // block * type_size
        at = start + offset
        if at + nbytes > len(data):
            raise ValueError(f"tensor {name} runs past the end of the file")
        raw = data[at:at + nbytes]
        outer = tuple(reversed(dims))
        if ttype in _FLOAT_DTYPES:
            view = raw.view(_FLOAT_DTYPES[ttype]).reshape(outer)
        else:
            view = raw.reshape(*outer[:-1], dims[0] // block * type_size)
        tensors[name] = GGUFTensor(name, ttype, dims, view)
    return meta, tensors
