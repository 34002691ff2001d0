"""`--linear auto`: the LinearMethod that keeps what the file stores, chosen from how the
model's projections are stored.

- GGUF Q4_0/Q4_1: int4, whose grid is theirs: codes and fp16 scales are repacked bit for bit.
- GGUF Q8_0: int8 (per-row scales: the 32-wide block scales become one per row, a small
  rounding step; 4x fewer bytes than fp32 and the int8 C kernels).
- any other quantized GGUF type (K-quants, Q5_*): int8, dequantized then requantized per row
  (more bits than int4, so less loss; dense fp32 would be 4x the memory).
- GGUF TQ1_0/TQ2_0 (ternary): ternary, whose trits and scales are theirs (a weight that is
  already ternary per group keeps its magnitude as the group's scale: linear/ternary.py).
- float tensors (GGUF F32/F16/BF16, a Hugging Face directory): dense.
A file that mixes storage types gets the most precise method any of its projections needs,
so no projection is stored with fewer bits than the file gave it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})
INT4_TYPES = frozenset({"Q4_0", "Q4_1"})
TERNARY_TYPES = frozenset({"TQ1_0", "TQ2_0"})
_PRECISION = ("ternary", "int4", "int8", "dense")  # least to most precise


@dataclass(frozen=True)
class AutoChoice:
    """What an `auto` option resolved to, and a one-line reason (`ember serve`, `ember info`)."""
    value: str
    reason: str


def _method_for(storage: str) -> str:
    if storage in FLOAT_TYPES:
        return "dense"
    if storage in TERNARY_TYPES:
        return "ternary"
    return "int4" if storage in INT4_TYPES else "int8"


def choose_linear(source_format: str, projection_types: Iterable[str]) -> AutoChoice:
    """The method for `--linear auto`: `source_format` "gguf" or "hf", `projection_types` the
    storage types of the layers' projections (GGUF type names such as "Q4_1"; ignored for "hf")."""
    if source_format == "hf":
        return AutoChoice("dense", "Hugging Face directory: float weights stay dense")
    types = sorted(set(projection_types))
    if not types:
        return AutoChoice("dense", "no projection storage types read: dense")
    method = max((_method_for(t) for t in types), key=_PRECISION.index)
    stored = "/".join(types)
    if method in ("int4", "ternary"):
        why = f"GGUF {stored} projections kept as stored"
    elif method == "dense":
        why = f"GGUF {stored} projections: float weights stay dense"
    elif types == ["Q8_0"]:
        why = "GGUF Q8_0 projections: int8 with a scale per row"
    else:
        why = f"GGUF {stored} projections: int8 with a scale per row, no fewer bits than stored"
    return AutoChoice(method, why)
