"""`bcq-w2`, `bcq-w3`, `bcq-w4`: ShiftAddLLM's binary-coding quantization on the lookup-table
kernel of planes.py (csrc/linear_planes.h).

Each group of 64 inputs of a row is approximated as w ~= sum_i alpha_i b_i, b_i in {-1, +1}^64
(GATECH-EIC/ShiftAddLLM, quantizers/bcq_quant/bcq.py, ../shared/papers/NOTES.md): greedy
start (b = sign(r), alpha = mean |r|, r -= alpha b, plane after plane), then `ROUNDS` rounds of
alternating refinement: the alphas by least squares given the signs, then each weight's signs
as the nearest of the 2^bits values sum_i +-alpha_i given the alphas. A sign b = 2u - 1 with a
bit u in {0, 1} turns this into planes.py's form: plane scale 2 alpha_i, minimum -sum alpha_i,
so the product is table lookups and adds, and the kernel never sees a sign.
`bcq-w2-pow2` .. `bcq-w4-pow2`: the paper's "shift" part, every alpha a power of two (one term,
where the paper allows sums of three), so a scale product is an exponent add; after the
unconstrained rounds, `ROUNDS` more keep the constraint (`pow2_alphas` after every least-squares
fit, then the signs refit), not rounding once at the end. Same storage and kernel: a power of
two is exact in fp16.
ShiftAddLLM's own lookup groups 8 activations (256-entry tables); here the tables are T-MAC's
16 entries per 4 activations, the shuffle instruction's size.
"""

from __future__ import annotations

import itertools

import torch

from ember.kernels.linear.base import LINEAR_METHODS
from ember.kernels.linear.planes import ScaledPlanesLinear
from ember.kernels.linear.tmac_ref import GROUP, SCALE_DTYPE

ROUNDS = 10  # alternating refinements; the error stops improving measurably after ~8 here
# Power-of-two alphas stay fp16 normals (2 alpha and sums of them exact or nearly: 2^-14 .. 2^14)
POW2_MIN, POW2_MAX = -15, 13
CHUNK_ROWS = 256  # rows refined at a time: the nearest-value search holds rows x K x 2^bits floats


def _signs(bits: int) -> torch.Tensor:
    """Every sign vector, [2^bits, bits]."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)))


def _nearest_signs(w: torch.Tensor, values: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """w [R, G, 64], values [R, G, 2^bits] -> the sign vectors of the nearest values [R, G, 64, bits],
    by binary search among the midpoints of the sorted values (no R x K x 2^bits distances)."""
    ordered, order = values.sort(-1)
    mids = ((ordered[..., 1:] + ordered[..., :-1]) / 2).contiguous()
    pick = order.gather(-1, torch.searchsorted(mids, w.contiguous()))
    return signs[pick]


def pow2_alphas(a: torch.Tensor) -> torch.Tensor:
    """|a| rounded to the nearest power of two in log space (a sign flip is the codes' to make:
    the signs are refit after). Zeros (singular groups) take the smallest."""
    e = torch.log2(a.abs().clamp_min(2.0 ** POW2_MIN)).round().clamp(POW2_MIN, POW2_MAX)
    return torch.exp2(e)


def _error(w: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Each group's squared reconstruction error, [N, G]."""
    return ((b * a[..., None, :]).sum(-1) - w).pow(2).sum(-1)


def _least_squares(w: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The alphas that fit w best given the signs b."""
    btb = b.transpose(-1, -2) @ b  # [N, G, bits, bits]
    btw = (b * w[..., None]).sum(-2)
    # A small ridge (btb holds counts up to 64) keeps groups whose planes coincide solvable
    # (GGUF-dequantized groups have few distinct values); any still singular keep their alphas.
    solved, info = torch.linalg.solve_ex(btb + 1e-3 * torch.eye(b.shape[-1]), btw.unsqueeze(-1))
    return torch.where((info == 0)[..., None], solved.squeeze(-1), a)


def binary_coding(weight: torch.Tensor, bits: int, rounds: int = ROUNDS, group: int = GROUP,
                  pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> signs [N, K/group, group, bits] in {-1, +1} and alphas fp32 [N, K/group, bits].
    pow2: every alpha a positive power of two. The unconstrained fit comes first, then `rounds`
    more with the constraint (least squares, alphas rounded in log space, signs refit): from
    the greedy start the constrained rounds stall (relative error 0.26 on Gaussian weights at
    3 bits, rounding the unconstrained fit once 0.246, this 0.231)."""
    w = weight.float().view(weight.shape[0], -1, group)
    r, planes, alphas = w.clone(), [], []
    for _ in range(bits):  # greedy: each plane takes the sign and mean magnitude of what is left
        b = torch.where(r >= 0, 1.0, -1.0)
        a = r.abs().mean(-1)
        r = r - a[..., None] * b
        planes.append(b)
        alphas.append(a)
    b, a = torch.stack(planes, -1), torch.stack(alphas, -1)
    signs = _signs(bits)
    for _ in range(rounds):
        a = _least_squares(w, b, a)
        b = _nearest_signs(w, a @ signs.t(), signs)
    if not pow2:
        return b, a
    a = pow2_alphas(a)
    b = _nearest_signs(w, a @ signs.t(), signs)
    best_b, best_a, best = b, a, _error(w, b, a)
    for _ in range(rounds):
        a = pow2_alphas(_least_squares(w, b, a))
        b = _nearest_signs(w, a @ signs.t(), signs)
        # a rounded refit can be worse than the last: each group keeps its best so far
        err = _error(w, b, a)
        better = err < best
        best = torch.where(better, err, best)
        best_a = torch.where(better[..., None], a, best_a)
        best_b = torch.where(better[..., None, None], b, best_b)
    return best_b, best_a


def bcq_planes(weight: torch.Tensor, bits: int, rounds: int = ROUNDS,
               pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> bit planes uint8 [bits, N, K], fp16 plane scales 2 alpha [bits, N, K/64] and minimum
    -sum alpha [N, K/64]: w ~= sum_i scale_i u_i + minimum with u = (b + 1) / 2. The signs are
    chosen last against the fp16 values the kernel will use."""
    n, k = weight.shape
    if k % GROUP:
        raise ValueError(f"bcq needs the input size ({k}) to be a multiple of {GROUP}")
    planes = torch.empty(bits, n, k, dtype=torch.uint8)
    scales = torch.empty(bits, n, k // GROUP, dtype=SCALE_DTYPE)
    minimum = torch.empty(n, k // GROUP, dtype=SCALE_DTYPE)
    signs = _signs(bits)
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        w = weight[rows].float()
        _, a = binary_coding(w, bits, rounds, pow2=pow2)
        s16, m16 = (2 * a).to(SCALE_DTYPE), (-a.sum(-1)).to(SCALE_DTYPE)
        units = (signs + 1) / 2  # [2^bits, bits] in {0, 1}
        values = s16.float() @ units.t() + m16.float()[..., None]
        u = (_nearest_signs(w.view(w.shape[0], -1, GROUP), values, signs) + 1) / 2  # [R, G, 64, bits]
        planes[:, rows] = u.permute(3, 0, 1, 2).reshape(bits, -1, k).to(torch.uint8)
        scales[:, rows] = s16.permute(2, 0, 1)
        minimum[rows] = m16
    return planes, scales, minimum


class BcqLinear(ScaledPlanesLinear):
    pow2 = False  # every alpha a power of two (the -pow2 methods)

    def quantize(self, weight):
        return bcq_planes(weight, self.bits, pow2=self.pow2)


@LINEAR_METHODS.register("bcq-w2")
class BcqW2(BcqLinear):
    name = "bcq-w2"
    bits = 2


@LINEAR_METHODS.register("bcq-w3")
class BcqW3(BcqLinear):
    name = "bcq-w3"
    bits = 3


@LINEAR_METHODS.register("bcq-w4")
class BcqW4(BcqLinear):
    name = "bcq-w4"
    bits = 4


for _bits in (2, 3, 4):  # bcq-w2-pow2 .. bcq-w4-pow2
    LINEAR_METHODS.register(f"bcq-w{_bits}-pow2")(type(f"BcqW{_bits}Pow2", (BcqLinear,), {
        "name": f"bcq-w{_bits}-pow2", "bits": _bits, "pow2": True, "__module__": __name__}))
