"""L-Mul against its closed forms, exhaustively over a stated set of operands.

The exhaustive set for mantissa width m: zero and every value
+-(1 + u / 2^m) * 2^e, u in [0, 2^m), e in [-4, 4] for m = 2..7 (all
bf16-representable) and e in [-1, 1] for m = 8; every ordered pair of it. The closed forms are evaluated from the
integers (sign, e, u) with numpy int64 arithmetic, sharing nothing with the
implementation's bit tricks or frexp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.numerics.lmul import (
    _matmul_elementwise,
    lmul,
    lmul_bits,
    lmul_formula,
    lmul_matmul,
    offset_exponent,
    round_mantissa,
)

def exponents(m: int) -> range:
    return range(-4, 5) if m <= 7 else range(-1, 2)  # m = 8: keep the pair count ~2.4M


def operand_set(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(values float64, sign +-1, exponent, mantissa integer u); zero first."""
    sign, exp, man = [1], [0], [0]
    for s in (1, -1):
        for e in exponents(m):
            for u in range(1 << m):
                sign.append(s), exp.append(e), man.append(u)
    sign, exp, man = (np.array(v, dtype=np.int64) for v in (sign, exp, man))
    values = sign * ((1 << m) + man) * np.exp2(exp - m)
    values[0] = 0.0
    return values, sign, exp, man


def closed_forms(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs: (operand values, bits-mode products, formula-mode products)."""
    values, sign, exp, man = operand_set(m)
    off = 1 << (m - offset_exponent(m))  # 2^-l in units of 2^-m
    S = man[:, None] + man[None, :] + off  # mantissa sum in units of 2^-m
    E = exp[:, None] + exp[None, :]
    sgn = sign[:, None] * sign[None, :]
    one = 1 << m
    bits = np.where(S < one, one + S, np.where(S < 2 * one, 2 * S, 4 * (S - one)))
    bits_val = sgn * bits * np.exp2(E - m)
    formula_val = sgn * (one + S) * np.exp2(E - m)
    zero = (values[:, None] == 0) | (values[None, :] == 0)
    return values, np.where(zero, 0.0, bits_val), np.where(zero, 0.0, formula_val)


def test_offset_exponent_table():
    assert [offset_exponent(m) for m in range(1, 9)] == [1, 2, 3, 3, 4, 4, 4, 4]


@pytest.mark.parametrize("m", [2, 3, 4, 5, 6, 7, 8])
def test_bits_and_formula_exhaustive_over_all_pairs(m):
    values, ref_bits, ref_formula = closed_forms(m)
    x = torch.from_numpy(values).to(torch.float32)
    got_bits = lmul_bits(x[:, None], x[None, :], m).to(torch.float64).numpy()
    got_formula = lmul_formula(x[:, None], x[None, :], m).to(torch.float64).numpy()
    np.testing.assert_array_equal(got_bits, ref_bits)
    np.testing.assert_array_equal(got_formula, ref_formula)


def test_bits_result_has_at_most_m_mantissa_bits():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10_000, generator=g), torch.randn(10_000, generator=g)
    for m in (2, 3, 4, 5, 7):
        p = lmul_bits(x, y, m)
        low = p.view(torch.int32) & ((1 << (23 - m)) - 1)
        assert not low.any()


def test_operands_are_rounded_to_nearest_even_first():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5000, generator=g), torch.randn(5000, generator=g)
    # m = 7 rounding is exactly float32 -> bfloat16 (round to nearest even).
    assert torch.equal(round_mantissa(x, 7), x.to(torch.bfloat16).to(torch.float32))
    for m in (2, 4, 7):
        assert torch.equal(lmul(x, y, m), lmul(round_mantissa(x, m), round_mantissa(y, m), m))
    # A tie: 1 + 1/16 lies halfway between 1 and 1 + 1/8 at m = 3; even is 1.
    assert round_mantissa(torch.tensor([1.0625, 1.1875]), 3).tolist() == [1.0, 1.25]


# ---- named special cases ---------------------------------------------------


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_zero_product_is_exact_signed_zero(mode):
    x = torch.tensor([0.0, -0.0, 0.0, 3.0, -3.0])
    y = torch.tensor([5.0, 5.0, -5.0, -0.0, 0.0])
    p = lmul(x, y, 3, mode)
    assert p.tolist() == [0.0] * 5  # no offset added to a zero product
    assert torch.signbit(p).tolist() == [False, True, True, True, True]


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_sign_is_xor(mode):
    a, b = torch.tensor([1.5, -1.5, 1.5, -1.5]), torch.tensor([1.25, 1.25, -1.25, -1.25])
    p = lmul(a, b, 3, mode)
    assert torch.equal(p.abs(), p[0].abs().expand(4)) and (p > 0).tolist() == [True, False, False, True]


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_subnormal_inputs_flush_to_zero(mode):
    tiny = torch.tensor([1e-40, -1e-40])  # float32 subnormals
    assert torch.equal(round_mantissa(tiny, 4), torch.tensor([0.0, -0.0]))
    p = lmul(tiny, torch.tensor([1e30, 1e30]), 4, mode)
    assert p.tolist() == [0.0, 0.0] and torch.signbit(p).tolist() == [False, True]


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_overflow_gives_inf_and_underflow_gives_zero(mode):
    p = lmul(torch.tensor([2.0**100, -(2.0**100), 2.0**-100]), torch.tensor([2.0**100, 2.0**100, 2.0**-100]), 4, mode)
    assert p.tolist() == [float("inf"), float("-inf"), 0.0]


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_nan_and_inf_operands(mode):
    x = torch.tensor([float("nan"), 2.0, float("inf"), float("inf"), float("-inf")])
    y = torch.tensor([1.0, float("nan"), 0.0, 2.0, 2.0])
    p = lmul(x, y, 4, mode)
    assert torch.isnan(p[:3]).all()  # NaN in, and inf * 0
    assert p[3:].tolist() == [float("inf"), float("-inf")]


def test_carry_cases_by_hand():
    # m = 3, l = 3: 1.875 * 1.875: s = 7/8 + 7/8 + 1/8 = 15/8 >= 1.
    x = torch.tensor([1.875])
    assert lmul_bits(x, x, 3).item() == 3.75  # one carry: 2 s = 3.75
    assert lmul_formula(x, x, 3).item() == 2.875  # literal formula: 1 + s
    # m = 4, l = 3: 1.9375^2: s = 15/16 + 15/16 + 1/8 = 2: two carries, 4 (s - 1) = 4.
    x = torch.tensor([1.9375])
    assert lmul_bits(x, x, 4).item() == 4.0
    # No carry: m = 3, 1.25 * 1.5 = 1 + 1/4 + 1/2 + 1/8 = 1.875 in both modes.
    assert lmul(torch.tensor([1.25]), torch.tensor([1.5]), 3).item() == 1.875
    assert lmul(torch.tensor([1.25]), torch.tensor([1.5]), 3, "formula").item() == 1.875


# ---- lmul_matmul -------------------------------------------------------------


def explicit_reference(a, b, m, mode):
    """Elementwise L-Mul and a float64 sum, written out with broadcasting."""
    return lmul(a.unsqueeze(-1), b.unsqueeze(-3), m, mode).to(torch.float64).sum(dim=-2)


@pytest.mark.parametrize("mode", ["bits", "formula"])
@pytest.mark.parametrize("m", [2, 3, 4, 5, 7])
def test_matmul_equals_elementwise_reference_exactly_in_float64(m, mode):
    g = torch.Generator().manual_seed(m)
    # Operands on a coarse grid so every partial sum is exact in float64.
    a = torch.randint(-64, 64, (2, 5, 17), generator=g).to(torch.float32) / 16
    b = torch.randint(-64, 64, (17, 6), generator=g).to(torch.float32) / 16
    got = lmul_matmul(a, b, m, mode, accumulate=torch.float64)
    assert torch.equal(got, explicit_reference(a, b, m, mode))


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_matmul_float32_accumulation_close_to_reference(mode):
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, 9, 64, generator=g), torch.randn(4, 64, 11, generator=g)  # batched b
    got = lmul_matmul(a, b, 4, mode).to(torch.float64)
    ref = explicit_reference(a, b, 4, mode)
    mag = lmul(a.unsqueeze(-1), b.unsqueeze(-3), 4, mode).abs().to(torch.float64).sum(dim=-2)
    assert got.dtype == torch.float64 and torch.all((got - ref).abs() <= 64 * 2.0**-24 * mag)


@pytest.mark.parametrize("mode", ["bits", "formula"])
def test_matmul_elementwise_fallback_with_specials_and_extreme_exponents(mode):
    a = torch.tensor([[1.0, 2.0**100, -3.0], [float("nan"), 1.0, 1.0], [2.0**-100, 1.0, 0.0]])
    b = torch.tensor([[2.0, 1.0], [2.0**100, 1.0], [1e-40, float("inf")]])
    got = lmul_matmul(a, b, 3, mode)
    ref = lmul(a.unsqueeze(-1), b.unsqueeze(-3), 3, mode).sum(dim=-2)
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    assert torch.equal(got[ok], ref[ok])
    assert got[0].tolist() == [float("inf"), float("-inf")]  # overflow; -3 * inf
    assert torch.isnan(got[1]).all() and torch.isnan(got[2, 1])  # NaN operand; 0 * inf


def test_matmul_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 7, 16, generator=g), torch.randn(16, 5, generator=g)
    ar, br = round_mantissa(a, 4), round_mantissa(b, 4)
    whole = _matmul_elementwise(ar, br, 4, "bits", torch.float64, 1 << 24)
    for chunk in (1, 17, 80, 500):
        assert torch.equal(_matmul_elementwise(ar, br, 4, "bits", torch.float64, chunk), whole)
    assert torch.equal(lmul_matmul(a, b, 4, accumulate=torch.float64), whole)


def test_matmul_as_attention_scores():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g)
    s = lmul_matmul(q, k.transpose(-1, -2), 5)
    assert s.shape == (2, 3, 5, 7)
    # Close to the exact product: L-Mul keeps most of the dot product.
    exact = q @ k.transpose(-1, -2)
    assert torch.corrcoef(torch.stack([s.flatten(), exact.flatten()]))[0, 1] > 0.95


def test_matmul_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="inner"):
        lmul_matmul(torch.ones(2, 3), torch.ones(4, 2), 3)
    with pytest.raises(ValueError, match="mode"):
        lmul_matmul(torch.ones(2, 3), torch.ones(3, 2), 3, mode="log")
