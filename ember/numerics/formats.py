"""One entry point to every number format in ``ember.numerics``.

Scalar formats (each value encoded on its own) share one interface::

    fmt = get_format("fp8_e4m3")          # or get_format("fp8_e4m3", saturate=True)
    codes = fmt.encode(x)                 # integer codes (bit patterns)
    y = fmt.decode(codes)                 # float32
    y = fmt.quantize(x)                   # decode(encode(x))
    fmt.bits, fmt.code_dtype, fmt.max_value

    fp8_e4m3, fp8_e5m2   (minifloat.py; ``saturate`` option)
    fp6_e2m3, fp6_e3m2, fp4_e2m1          (always saturating, OCP MX elements)
    posit4_1, posit8_0, posit8_2, posit16_1 (posit.py)

Grouped formats return codes plus their shared scales and decode from both:

    mx_encode(x, "mxfp4") -> MXTensor          mx.py (mxfp8_e4m3, mxfp8_e5m2,
                                               mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8)
    bfp_encode(x, block_size, mantissa_bits)   bfp.py (block floating point)
    dfp_encode(x, bits=16) -> DFPTensor        bfp.py (dynamic fixed point)
    int_encode(x, bits, group_size, signed, symmetric) -> IntKTensor   intk.py

Each module's docstring states its rounding, saturation, NaN/inf handling and
subnormals.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from .bfp import BFPTensor, DFPTensor, bfp_decode, bfp_encode, bfp_quantize, dfp_decode, dfp_encode
from .intk import IntKTensor, int_decode, int_encode, int_encode_with, int_quantize
from .minifloat import MiniFloat, fp4_e2m1, fp6_e2m3, fp6_e3m2, fp8_e4m3, fp8_e5m2
from .mx import MX_FORMATS, MXFormat, MXTensor, mx_decode, mx_encode, mx_quantize
from .posit import Posit


class ScalarFormat(Protocol):
    name: str

    @property
    def bits(self) -> int: ...

    @property
    def code_dtype(self) -> torch.dtype: ...

    @property
    def max_value(self) -> float: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    def quantize(self, x: torch.Tensor) -> torch.Tensor: ...


_SCALAR: dict[str, Callable[..., ScalarFormat]] = {
    "fp8_e4m3": fp8_e4m3,
    "fp8_e5m2": fp8_e5m2,
    "fp6_e2m3": fp6_e2m3,
    "fp6_e3m2": fp6_e3m2,
    "fp4_e2m1": fp4_e2m1,
    "posit4_1": lambda: Posit(4, 1),
    "posit8_0": lambda: Posit(8, 0),
    "posit8_2": lambda: Posit(8, 2),
    "posit16_1": lambda: Posit(16, 1),
}


def scalar_format_names() -> list[str]:
    return list(_SCALAR)


def get_format(name: str, **options) -> ScalarFormat:
    """The scalar format registered as ``name``; options go to its constructor
    (only the fp8 formats take one: ``saturate``)."""
    try:
        factory = _SCALAR[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(_SCALAR)}") from None
    return factory(**options)


__all__ = [
    "BFPTensor", "DFPTensor", "IntKTensor", "MXFormat", "MXTensor", "MX_FORMATS", "MiniFloat", "Posit",
    "ScalarFormat", "bfp_decode", "bfp_encode", "bfp_quantize", "dfp_decode", "dfp_encode", "get_format",
    "int_decode", "int_encode", "int_encode_with", "int_quantize", "mx_decode", "mx_encode", "mx_quantize",
    "scalar_format_names",
]
