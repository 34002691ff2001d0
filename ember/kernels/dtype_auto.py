"""`--dtype auto`: bf16 only where this CPU multiplies bf16 natively (AVX512-BF16 or AMX,
`native.cpu_has_bf16_gemm`) AND the chosen linear method was measured faster in bf16 there;
fp32 everywhere else. The table follows benchmarks/README.md ("Defaults: what `auto`
chooses"), measured back to back on a Sapphire Rapids CPU (AVX512-BF16, AMX), 2 threads."""

from __future__ import annotations

from ember.kernels import native
from ember.kernels.linear.auto import AutoChoice

# linear method -> why bf16 is (True) or is not (False) the faster dtype for it on a CPU with
# native bf16 arithmetic. A method not listed stays fp32 until someone measures it.
BF16_MEASURED: dict[str, tuple[bool, str]] = {
    "dense": (True, "native bf16 GEMM (AMX/AVX512-BF16) measured faster than fp32 for dense weights"),
    "int8": (True, "int8's prefill GEMM runs on native bf16 (AMX/AVX512-BF16); measured faster than fp32"),
    "int4": (False, "the int4 kernels compute in fp32 with int8 activations; bf16 measured no faster"),
}


def choose_dtype(linear: str) -> AutoChoice:
    """The compute dtype for `--dtype auto` beside the (already resolved) linear method."""
    if not native.cpu_has_bf16_gemm():
        return AutoChoice("fp32", "no native bf16 arithmetic here (no avx512_bf16 or amx_bf16 flag, "
                                  "or EMBER_BF16_GEMM=native)")
    faster, why = BF16_MEASURED.get(linear, (False, f"bf16 not measured for linear {linear!r}"))
    return AutoChoice("bf16" if faster else "fp32", why)
