"""L-Mul: linear-complexity multiplication (Luo & Sun, arXiv 2410.00907).

For x = (1 + xm) 2^xe and y = (1 + ym) 2^ye with m-bit mantissas, L-Mul
replaces the mantissa product (1 + xm)(1 + ym) = 1 + xm + ym + xm*ym by
1 + xm + ym + 2^-l(m), l(m) = m for m <= 3, 3 for m == 4, 4 for m > 4, so a
product costs one integer addition instead of a multiplier.

Operands. Both inputs are first rounded, to nearest even, to a float with 8
exponent bits (float32's range and bias) and ``m`` mantissa bits; for m = 7
this is exactly bfloat16. Subnormal inputs (|x| < 2^-126, the subnormals of
that format) are flushed to zero, sign kept: the integer trick below assumes
an implicit leading one, which subnormals lack, and the paper does not define
them. Values that round above the format's largest finite value become inf.

Two definitions are provided:

``mode="bits"`` (``lmul_bits``), what the paper simulates and what hardware
would run: add the two operands' exponent|mantissa bit fields as integers,
subtract the exponent bias (127 << 23) and add the offset 2^-l(m) in mantissa
units (1 << (23 - l)). A mantissa sum >= 1 carries into the exponent, so with
s = xm + ym + 2^-l(m) and E = xe + ye the result is

    (1 + s) 2^E        if s < 1,
    2 s 2^E            if 1 <= s < 2   (one carry),
    4 (s - 1) 2^E      if s >= 2       (two carries).

The two-carry case needs xm + ym >= 2 - 2^-l, so it occurs only when l(m) < m,
i.e. for m >= 4 (e.g. m = 4: xm = ym = 15/16). It is what the integer adder
does, and it is accurate there: the exact product is then close to 4 * 2^E.

``mode="formula"`` (``lmul_formula``): the paper's formula read literally,
(1 + s) 2^E for every s (the mantissa may reach 3 + 2^-l). Both agree whenever
s < 1; ``mode="bits"`` is the default since it is the hardware definition.

For both: the sign is the xor of the signs; a zero operand gives an exactly
zero product (no offset is added); a result of magnitude >= 2^128 is +-inf and
one below 2^-126 is flushed to +-0, consistent with the input flush; NaN
operands give NaN, inf times zero is NaN and inf times nonzero is +-inf. The
result always has at most m mantissa bits in "bits" mode (the offset sits at or
above the last mantissa bit since l(m) <= m).

``lmul_matmul`` sums L-Mul products along the inner dimension (accumulation in
float32 by default, as the paper assumes for dot products).
"""

from __future__ import annotations

import torch

from ._bits import pow2

_BIAS_FIELD = 127 << 23
_MIN_NORMAL_FIELD = 1 << 23
_INF_FIELD = 0x7F800000


def offset_exponent(mantissa_bits: int) -> int:
    """l(m) of the paper: the offset added to the mantissa sum is 2^-l(m)."""
    if mantissa_bits < 1:
        raise ValueError("mantissa_bits must be >= 1")
    if mantissa_bits <= 3:
        return mantissa_bits
    return 3 if mantissa_bits == 4 else 4


def round_mantissa(x: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Round float32 x to 8 exponent / ``mantissa_bits`` mantissa bits (nearest
    even), flushing subnormals to signed zero; overflow rounds to inf."""
    if not 1 <= mantissa_bits <= 23:
        raise ValueError("mantissa_bits must be in [1, 23]")
    x = x.to(torch.float32)
    bits = x.view(torch.int32).to(torch.int64)
    drop = 23 - mantissa_bits
    if drop:
        # Classic bf16-style rounding on the bit pattern: adding half an ulp
        # (minus one unless the kept lsb is odd) then truncating is round to
        # nearest even, and a carry walks into the exponent (up to inf).
        lsb = (bits >> drop) & 1
        bits = (bits + (1 << (drop - 1)) - 1 + lsb) & ~((1 << drop) - 1)
    out = bits.to(torch.int32).view(torch.float32)
    subnormal = x.abs() < 2.0**-126
    out = torch.where(subnormal, torch.copysign(torch.zeros_like(x), x), out)
    return torch.where(torch.isnan(x), x, out)


def _specials(xr: torch.Tensor, yr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Apply the zero / inf / NaN rules (module docstring) on top of ``out``."""
    sign_neg = torch.signbit(xr) ^ torch.signbit(yr)
    zero = (xr == 0) | (yr == 0)
    inf = torch.isinf(xr) | torch.isinf(yr)
    signed_zero = torch.where(sign_neg, -0.0, 0.0).to(out.dtype)
    signed_inf = torch.where(sign_neg, float("-inf"), float("inf")).to(out.dtype)
    out = torch.where(zero, signed_zero, out)
    out = torch.where(inf, signed_inf, out)
    nan = torch.isnan(xr) | torch.isnan(yr) | (zero & inf)
    return torch.where(nan, torch.full_like(out, float("nan")), out)


def lmul_bits(x: torch.Tensor, y: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Elementwise L-Mul by integer addition of bit fields (broadcasting)."""
    xr, yr = round_mantissa(x, mantissa_bits), round_mantissa(y, mantissa_bits)
    xr, yr = torch.broadcast_tensors(xr, yr)
    fx = xr.view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    fy = yr.view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    # int64 so an exponent overflow cannot wrap before it is detected.
    r = fx + fy - _BIAS_FIELD + (1 << (23 - offset_exponent(mantissa_bits)))
    r = torch.where(r >= _INF_FIELD, _INF_FIELD, r)
    r = torch.where(r < _MIN_NORMAL_FIELD, 0, r)
    # Setting bit 31 of an int32 is subtracting 2^31 from the non-negative r.
    r = torch.where(torch.signbit(xr) ^ torch.signbit(yr), r - (1 << 31), r)
    out = r.to(torch.int32).view(torch.float32)
    return _specials(xr, yr, out)


def lmul_formula(x: torch.Tensor, y: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Elementwise (1 + xm + ym + 2^-l(m)) * 2^(xe + ye), no carry rule."""
    xr, yr = round_mantissa(x, mantissa_bits), round_mantissa(y, mantissa_bits)
    xr, yr = torch.broadcast_tensors(xr, yr)
    # Non-finite operands are settled by _specials; keep frexp on finite input.
    ax = torch.where(torch.isfinite(xr), xr.abs(), 1.0).to(torch.float64)
    ay = torch.where(torch.isfinite(yr), yr.abs(), 1.0).to(torch.float64)
    mx, ex = torch.frexp(ax)  # ax = mx 2^ex, mx in [0.5, 1): 1 + xm = 2 mx
    my, ey = torch.frexp(ay)
    s = 2 * mx + 2 * my - 1 + 2.0 ** -offset_exponent(mantissa_bits)  # 1 + xm + ym + 2^-l
    mag = s * pow2(ex.to(torch.int64) + ey.to(torch.int64) - 2)  # exact: s has few bits
    mag = torch.where(mag < 2.0**-126, 0.0, mag)
    out = torch.where(torch.signbit(xr) ^ torch.signbit(yr), -mag, mag).to(torch.float32)
    return _specials(xr, yr, out)


def lmul(x: torch.Tensor, y: torch.Tensor, mantissa_bits: int, mode: str = "bits") -> torch.Tensor:
    """Elementwise L-Mul; ``mode`` is "bits" (default) or "formula"."""
    if mode == "bits":
        return lmul_bits(x, y, mantissa_bits)
    if mode == "formula":
        return lmul_formula(x, y, mantissa_bits)
    raise ValueError(f"unknown L-Mul mode {mode!r}")


# ---------------------------------------------------------------------------
# Matrix product with L-Mul products and ordinary float accumulation.
# ---------------------------------------------------------------------------

# Elementwise fallback: at most this many products materialised at once.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def lmul_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    mantissa_bits: int,
    mode: str = "bits",
    accumulate: torch.dtype = torch.float32,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """sum_k lmul(a[..., i, k], b[..., k, j]): a [..., M, K], b [K, N] or [..., K, N].

    Works for a linear layer (``lmul_matmul(x, weight.T, m)``) and for attention
    scores (``lmul_matmul(q, k.transpose(-1, -2), m)``). Every product equals
    ``lmul(x, y, m, mode)`` exactly; only the order of the float
    (``accumulate``-dtype) summation differs between the two code paths:

    * fast path: an L-Mul product splits into terms that are ordinary products
      of exact powers of two and short mantissas, so the sum over k becomes a
      few dense matmuls. "formula": a @ P(b) + P(a) @ Q(b) with P(v) = sign 2^e
      and Q(y) = P(y) (ym + 2^-l). "bits": the carry rule depends on xm + ym,
      so a is split by its mantissa value u (at most 2^m buckets, empty ones
      skipped) and each bucket is one matmul with the factor for that u.
      Used when all inputs are finite and no product can leave the float32
      normal range (where the flush/inf rules would apply).
    * otherwise the products are formed elementwise in chunks of at most
      ``chunk_elements`` and summed, so memory stays bounded.
    """
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError("lmul_matmul needs a [..., M, K] and b [..., K, N]")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: {a.shape[-1]} vs {b.shape[-2]}")
    if mode not in ("bits", "formula"):
        raise ValueError(f"unknown L-Mul mode {mode!r}")
    ar, br = round_mantissa(a, mantissa_bits), round_mantissa(b, mantissa_bits)
    if _fast_path_ok(ar, br):
        return _matmul_decomposed(ar, br, mantissa_bits, mode, accumulate)
    return _matmul_elementwise(ar, br, mantissa_bits, mode, accumulate, chunk_elements)


def _exponent_range(v: torch.Tensor) -> tuple[int, int] | None:
    """(min, max) unbiased exponent over nonzero entries; None if all zero."""
    e = ((v.view(torch.int32) >> 23) & 0xFF) - 127
    nz = v != 0
    if not bool(nz.any()):
        return None
    e = e[nz]
    return int(e.min()), int(e.max())


def _fast_path_ok(ar: torch.Tensor, br: torch.Tensor) -> bool:
    if not (bool(torch.isfinite(ar).all()) and bool(torch.isfinite(br).all())):
        return False
    ra, rb = _exponent_range(ar), _exponent_range(br)
    if ra is None or rb is None:
        return True  # every product is an exact zero
    # A product's magnitude lies in [2^(xe+ye), 2^(xe+ye+2)); the decomposed
    # factors reach 2^(ye+2). Keep all of it inside the float32 normal range.
    return ra[0] + rb[0] >= -126 and ra[1] + rb[1] <= 125 and rb[1] <= 125


def _split(v: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v (already m-bit) -> (sign * 2^exponent as float32, mantissa integer u)."""
    bits = v.view(torch.int32)
    # Clearing the mantissa bits leaves sign * 2^e exactly (and 0 for zero).
    pow2_part = (bits & ~0x7FFFFF).view(torch.float32)
    u = (bits >> (23 - m)) & ((1 << m) - 1)
    return pow2_part, u


def _matmul_decomposed(ar, br, m, mode, acc):
    pa, ua = _split(ar, m)
    pb, ub = _split(br, m)
    pa, pb = pa.to(acc), pb.to(acc)
    scale = 2.0**-m
    off = 1 << (m - offset_exponent(m))  # 2^-l in units of 2^-m
    if mode == "formula":
        # sum_k sx sy 2^(xe+ye) [(1 + xm) + (ym + 2^-l)]
        return torch.matmul(ar.to(acc), pb) + torch.matmul(pa, pb * ((ub + off).to(acc) * scale))
    # Mantissa factor for every (u, w) pair: the three carry cases of the module
    # docstring, with s = u + w + off in units of 2^-m. One gather per bucket.
    w = torch.arange(1 << m)
    s = w[:, None] + w[None, :] + off
    g = torch.where(s < (1 << m), s + (1 << m), torch.where(s < (2 << m), 2 * s, 4 * (s - (1 << m))))
    g = g.to(acc) * scale
    ub = ub.to(torch.int64)
    out = None
    for u in torch.unique(ua).tolist():
        term = torch.matmul(torch.where(ua == u, pa, 0.0), pb * g[u][ub])
        out = term if out is None else out + term
    return out


def _matmul_elementwise(ar, br, m, mode, acc, chunk_elements):
    batch = torch.broadcast_shapes(ar.shape[:-2], br.shape[:-2])
    M, K, N = ar.shape[-2], ar.shape[-1], br.shape[-1]
    nbatch = 1
    for d in batch:
        nbatch *= d
    per_row = max(1, nbatch * K * N)
    rows = max(1, chunk_elements // per_row)
    cols = N if per_row <= chunk_elements else max(1, chunk_elements // max(1, nbatch * K))
    out = torch.empty(*batch, M, N, dtype=acc)
    bx = br.unsqueeze(-3)  # [..., 1, K, N]
    for i in range(0, M, rows):
        ax = ar[..., i : i + rows, :, None]  # [..., rows, K, 1]
        for j in range(0, N, cols):
            prod = lmul(ax, bx[..., j : j + cols], m, mode)
            out[..., i : i + rows, j : j + cols] = prod.to(acc).sum(dim=-2)
    return out
