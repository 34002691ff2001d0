"""Number formats (bit-exact encode/decode), L-Mul, and an op-count energy model.

formats.py is the entry point to the formats (registry of scalar formats, MX,
block floating point, dynamic fixed point, int-k); lmul.py holds L-Mul and its
matmul; energy.py the per-token energy estimate.
"""

from .energy import DecodeEnergy, DecoderShape, estimate_decode_energy, format_report
from .formats import get_format, scalar_format_names
from .lmul import lmul, lmul_matmul

__all__ = [
    "DecodeEnergy", "DecoderShape", "estimate_decode_energy", "format_report",
    "get_format", "scalar_format_names", "lmul", "lmul_matmul",
]
