"""Energy estimate per generated token of a Llama-style decoder, from op counts.

This is an op-count model, not a measurement: count the multiplies, adds and
bytes moved that one decode step needs, and price them with per-operation
energies of a 45 nm process.

Energy per operation, 45 nm, 0.9 V: M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014, keynote, table of arithmetic
energies (as quoted in ../shared/papers/NOTES.md, L-Mul section):

    fp32 mul 3.7 pJ, fp32 add 0.9 pJ, fp16 mul 1.1 pJ, fp16 add 0.4 pJ,
    int32 mul 3.1 pJ, int32 add 0.1 pJ, int8 mul 0.2 pJ, int8 add 0.03 pJ.

Memory, from the same keynote's memory table: a 64-bit DRAM access costs
1.3-2.6 nJ; we use the low end, 1.3 nJ / 8 bytes = 162.5 pJ per byte, so the
memory share is if anything understated.

Derived entries (NOT in Horowitz's table; estimates labelled as such):
  bf16 mul: an array multiplier's energy grows roughly with the square of the
      significand width: fp16 mul * (8/11)^2 = 0.58 pJ. bf16 add: taken equal
      to the fp16 add (same 16-bit width), 0.4 pJ.
  int4 mul: int8 mul * (4/8)^2 = 0.05 pJ (the same square law); w4a4 mul: COMET's mix of
      7/8 int4 and 1/8 int8 products, 0.069 pJ.
  fp8 (e4m3) mul: fp16 mul * (4/11)^2 = 0.15 pJ; fp8 add: not used (fp8
      products are accumulated in fp32, as fp8 matrix units do).
  L-Mul: one integer addition over the operand's exponent+mantissa field
      (8 + m bits in ``ember.numerics.lmul``) priced as the int32 add scaled
      linearly with width (ripple-carry): 0.1 pJ * (8 + m) / 32. This is the
      paper's own argument (L-Mul costs an integer add); the sign xor and the
      offset constant are free.

What is counted per generated token (one query at position ``context_len``):
  * linear layers (q, k, v, o, gate, up, down per layer, then the LM head):
    a dot product of length K costs K multiplies and K - 1 adds per output;
  * attention: Q.K^T over ``context_len`` cached keys and the weighted sum of
    as many values, per query head (grouped-query heads share K/V reads);
  * bytes: every weight read once, the token's embedding row, the KV cache of
    ``context_len`` positions read and one position written, per layer.
Lookup-table linears (``linear="lut"``, T-MAC: ember/kernels/linear/tmac.py), per layer
of K inputs and N outputs with b bit planes (labelled estimates, no multiplier in the loop):
  * N * K/4 * b table lookups, each a register byte select, priced as an int8 add; as
    many int16 adds sum them (int32 add scaled to 16 bits, 0.05 pJ, as L-Mul's add is);
  * per group of 64 inputs and output, 2 fp32 multiplies and 2 adds (scale, minimum);
  * per token, K/4 tables of 16 fp32 sums, each entry quantized to int8 (16 adds and
    16 multiplies a table), counted once per linear shape (q, k and v build their own);
  * weights at ``lut_weight_bits`` per weight (scales included); the LM head, which these
    methods keep in int8, at 8 bits with fp32 multiply-adds (the int8 C kernel's).
Not counted: norms, RoPE, softmax, SiLU, residual adds, scale/dequantization
steps (all O(hidden) per layer, about 1% of the ops for SmolLM2-135M), and
on-chip activation traffic. Tied embeddings change the parameter count, not the
bytes read per token: the LM head reads the full vocab x hidden matrix either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .lmul import offset_exponent

# (operation kind, op) -> pJ, Horowitz 2014, 45 nm.
HOROWITZ_45NM_PJ: dict[tuple[str, str], float] = {
    ("fp32", "mul"): 3.7,
    ("fp32", "add"): 0.9,
    ("fp16", "mul"): 1.1,
    ("fp16", "add"): 0.4,
    ("int32", "mul"): 3.1,
    ("int32", "add"): 0.1,
    ("int8", "mul"): 0.2,
    ("int8", "add"): 0.03,
}
DRAM_PJ_PER_BYTE = 1300.0 / 8  # 1.3 nJ per 64-bit access, low end of 1.3-2.6 nJ


def _derived_pj() -> dict[tuple[str, str], float]:
    """The labelled estimates of the module docstring."""
    return {
        ("bf16", "mul"): HOROWITZ_45NM_PJ[("fp16", "mul")] * (8 / 11) ** 2,
        ("bf16", "add"): HOROWITZ_45NM_PJ[("fp16", "add")],
        ("fp8", "mul"): HOROWITZ_45NM_PJ[("fp16", "mul")] * (4 / 11) ** 2,
        ("int16", "add"): HOROWITZ_45NM_PJ[("int32", "add")] * 16 / 32,
        ("lut", "lookup"): HOROWITZ_45NM_PJ[("int8", "add")],
        # int4 mul: int8 mul * (4/8)^2 (the same square law); w4a4's products: COMET's mix,
        # 7 of 8 groups 4 x 4 bits, 1 of 8 (the outlier blocks) 8 x 8 bits
        ("int4", "mul"): HOROWITZ_45NM_PJ[("int8", "mul")] * (4 / 8) ** 2,
        ("w4a4", "mul"): (7 * HOROWITZ_45NM_PJ[("int8", "mul")] * (4 / 8) ** 2 + HOROWITZ_45NM_PJ[("int8", "mul")]) / 8,
    }


def op_energy_pj(kind: str, op: str, lmul_mantissa_bits: int = 4) -> float:
    """Energy of one ``op`` ("mul"/"add") of ``kind`` (fp32, fp16, bf16, fp8, int8,
    int32, lmul) in pJ; "lmul" "mul" is the integer add of an L-Mul product."""
    if kind == "lmul" and op == "mul":
        offset_exponent(lmul_mantissa_bits)  # validates m
        return HOROWITZ_45NM_PJ[("int32", "add")] * (8 + lmul_mantissa_bits) / 32
    table = {**HOROWITZ_45NM_PJ, **_derived_pj()}
    try:
        return table[(kind, op)]
    except KeyError:
        raise KeyError(f"no energy figure for {kind} {op}") from None


# weight dtype -> (storage bits per weight, multiply kind of a dense matmul, accumulate kind)
WEIGHT_DTYPES: dict[str, tuple[float, str, str]] = {
    "fp32": (32, "fp32", "fp32"),
    "fp16": (16, "fp16", "fp32"),
    "bf16": (16, "bf16", "fp32"),
    "fp8": (8, "fp8", "fp32"),
    "int8": (8, "int8", "int32"),  # W8A8: int8 products, int32 accumulation
    "int4": (4, "int8", "int32"),  # W4A8: int4 weights widened to int8 multipliers
    # GGUF Q4_1: 4-bit codes + fp16 scale and min per 32 weights = 5 bits; the
    # engine dequantizes at load and multiplies in fp32.
    "q4_1": (5, "fp32", "fp32"),
    # Ember's `int4`: Q4_1's grid (5 bits with its scale and minimum), int8 activations and
    # integer dots (csrc/linear_int4.h).
    "int4-w4a8": (5, "int8", "int32"),
    # Ember's `w4a4`: the same weights, activations on 4 bits with 1/8 of the groups on 8 (COMET)
    "int4-w4a4": (5, "w4a4", "int32"),
}


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = True

    @classmethod
    def smollm2_135m(cls) -> "DecoderShape":
        return cls(hidden=576, intermediate=1536, n_layers=30, n_heads=9, n_kv_heads=3,
                   head_dim=64, vocab=49152, tied_embeddings=True)

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer run per token, LM head last."""
        h, q, kv, i = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.intermediate
        per_layer = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
        return per_layer * self.n_layers + [(h, self.vocab)]

    @property
    def parameters(self) -> int:
        """Weights of the linear layers and embeddings (norm weights excluded)."""
        linear = sum(a * b for a, b in self.linear_shapes()[:-1])
        emb = self.vocab * self.hidden
        return linear + emb * (1 if self.tied_embeddings else 2)


@dataclass(frozen=True)
class DecodeEnergy:
    """Counts and energy for one generated token (see module docstring)."""

    linear_muls: int
    linear_adds: int
    attention_muls: int
    attention_adds: int
    weight_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float
    compute_pj: float
    memory_pj: float
    linear_mul_kind: str
    attention_mul_kind: str
    context_len: int
    linear_lookups: int = 0  # table lookups of linear="lut" (none otherwise)

    @property
    def multiplies(self) -> int:
        return self.linear_muls + self.attention_muls

    @property
    def adds(self) -> int:
        return self.linear_adds + self.attention_adds

    @property
    def bytes_moved(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(multiplies=self.multiplies, adds=self.adds, bytes_moved=self.bytes_moved, total_pj=self.total_pj)
        return d


def estimate_decode_energy(
    shape: DecoderShape | dict,
    linear: str = "dense",
    weight_dtype: str = "fp32",
    attention_mul: str = "exact",
    context_len: int = 1024,
    kv_dtype: str = "fp32",
    lmul_mantissa_bits: int = 4,
    lut_planes: int = 2,
    lut_weight_bits: float = 2.5,
    head_weight_bits: float | None = None,
) -> DecodeEnergy:
    """Op counts and estimated pJ for one decode step.

    linear: "dense" (multiplies of the kind ``weight_dtype`` implies, see
    WEIGHT_DTYPES) or "lmul" (L-Mul products with ``lmul_mantissa_bits``,
    fp32 accumulation; weights still stored as ``weight_dtype``) or "lut" (T-MAC's
    lookup tables with ``lut_planes`` bit planes and ``lut_weight_bits`` bits per weight).
    head_weight_bits: bits per weight the LM head is read with, where a method keeps it
    in another storage than the body (int4 and the lookup-table methods keep it int8);
    None: ``weight_dtype``'s (8 for "lut").
    attention_mul: "exact" (multiplies in ``kv_dtype``, fp32 accumulation) or
    "lmul". kv_dtype: storage and compute type of the KV cache (fp32, fp16,
    bf16, fp8 or int8).
    """
    if isinstance(shape, dict):
        shape = DecoderShape(**shape)
    if context_len < 1:
        raise ValueError("context_len counts the attended positions, itself included: >= 1")
    if weight_dtype not in WEIGHT_DTYPES:
        raise KeyError(f"unknown weight dtype {weight_dtype!r}; known: {', '.join(WEIGHT_DTYPES)}")
    if kv_dtype not in ("fp32", "fp16", "bf16", "fp8", "int8"):
        raise KeyError(f"unknown kv dtype {kv_dtype!r}")
    w_bits, dense_mul, dense_acc = WEIGHT_DTYPES[weight_dtype]
    if linear == "dense":
        lin_mul, lin_acc = dense_mul, dense_acc
    elif linear == "lmul":
        lin_mul, lin_acc = "lmul", "fp32"
    elif linear == "lut":
        lin_mul, lin_acc = "fp32", "fp32"
    else:
        raise ValueError(f"linear must be 'dense', 'lmul' or 'lut', not {linear!r}")
    if attention_mul == "exact":
        att_mul, att_acc = kv_dtype, ("int32" if kv_dtype == "int8" else "fp32")
    elif attention_mul == "lmul":
        att_mul, att_acc = "lmul", "fp32"
    else:
        raise ValueError(f"attention_mul must be 'exact' or 'lmul', not {attention_mul!r}")

    shapes = shape.linear_shapes()
    lin_muls = sum(k * n for k, n in shapes)
    lin_adds = sum((k - 1) * n for k, n in shapes)
    ctx, hd, nh, L = context_len, shape.head_dim, shape.n_heads, shape.n_layers
    # Scores: per head, ctx dot products of length hd. Output: per head, hd dot
    # products of length ctx (softmax weights times values).
    att_muls = L * (nh * ctx * hd + nh * hd * ctx)
    att_adds = L * (nh * ctx * (hd - 1) + nh * hd * (ctx - 1))

    head_k, head_n = shapes[-1]
    head_bits = w_bits if head_weight_bits is None else head_weight_bits
    # every weight once + one embedding row
    weight_bytes = ((lin_muls - head_k * head_n + shape.hidden) * w_bits + head_k * head_n * head_bits) / 8
    kv_bytes = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}[kv_dtype]
    kv_per_pos = 2 * L * shape.n_kv_heads * hd * kv_bytes  # K and V, all layers
    kv_read, kv_write = kv_per_pos * ctx, kv_per_pos

    m = lmul_mantissa_bits
    lookups, lookup_pj = 0, 0.0
    if linear == "lut":
        lin_muls, lin_adds, lookups, lookup_pj, weight_bytes = _lut_linear_counts(
            shape, lut_planes, lut_weight_bits, 8 if head_weight_bits is None else head_weight_bits)
    compute = (
        lin_muls * op_energy_pj(lin_mul, "mul", m)
        + lin_adds * op_energy_pj(lin_acc, "add", m)
        + lookup_pj
        + att_muls * op_energy_pj(att_mul, "mul", m)
        + att_adds * op_energy_pj(att_acc, "add", m)
    )
    memory = (weight_bytes + kv_read + kv_write) * DRAM_PJ_PER_BYTE
    return DecodeEnergy(lin_muls, lin_adds, att_muls, att_adds, weight_bytes, kv_read, kv_write,
                        compute, memory, lin_mul, att_mul, ctx, lookups)


LUT_GROUP = 64  # inputs per (scale, minimum) and per table scale (tmac_ref.GROUP)


def _lut_linear_counts(shape: DecoderShape, planes: int, weight_bits: float,
                       head_bits: float) -> tuple[int, int, int, float, float]:
    """(fp32 muls, fp32 adds, lookups, pJ of the lookups and their int16 sums, weight bytes) of
    the linear layers of linear="lut" (module docstring); the LM head as fp32 multiply-adds."""
    *body, (head_k, head_n) = shape.linear_shapes()
    lookups = sum(n * k // 4 * planes for k, n in body)
    per_group = sum(n * (k // LUT_GROUP) for k, n in body)
    tables = sum(k // 4 for k, _ in body)
    muls = 2 * per_group + 16 * tables + head_k * head_n
    adds = 2 * per_group + 16 * tables + (head_k - 1) * head_n
    pj = lookups * (op_energy_pj("lut", "lookup") + op_energy_pj("int16", "add"))
    weight_bytes = (sum(k * n for k, n in body) * weight_bits + head_k * head_n * head_bits) / 8 + shape.hidden * 4
    return muls, adds, lookups, pj, weight_bytes


def format_report(e: DecodeEnergy) -> str:
    """A short human-readable summary; always says what kind of number it is."""
    lines = [
        "Energy per generated token: estimate from an op-count model, not a measurement",
        "(45 nm per-op energies, Horowitz ISSCC 2014; DRAM 162.5 pJ/byte; see ember.numerics.energy).",
        f"  context length          {e.context_len}",
        f"  linear multiplies       {e.linear_muls:>16,}  ({e.linear_mul_kind})",
        f"  attention multiplies    {e.attention_muls:>16,}  ({e.attention_mul_kind})",
        *([f"  linear table lookups    {e.linear_lookups:>16,}  (int8 tables, T-MAC)"] if e.linear_lookups else []),
        f"  adds                    {e.adds:>16,}",
        f"  weight bytes read       {e.weight_bytes:>16,.0f}",
        f"  KV bytes read/written   {e.kv_read_bytes:>16,.0f} / {e.kv_write_bytes:,.0f}",
        f"  compute                 {e.compute_pj / 1e6:>16,.2f} uJ",
        f"  memory (DRAM)           {e.memory_pj / 1e6:>16,.2f} uJ",
        f"  total                   {e.total_pj / 1e6:>16,.2f} uJ",
    ]
    return "\n".join(lines)
