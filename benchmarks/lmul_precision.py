"""Precision of L-Mul against fp8 multiplication, per product.

Checks the claim of Luo & Sun (arXiv 2410.00907): L-Mul with a 4-bit mantissa
is about as precise as an fp8 e4m3 multiply, and with 3 bits more precise than
fp8 e5m2. For each pair (x, y) the error is |approx - x*y| / |x*y| against the
exact product of the original fp32 inputs (pairs with x*y == 0 are skipped);
the table reports its mean and median.

Methods:
  lmul-bits m    L-Mul as the paper simulates it (integer add of bit fields,
                 operands first rounded to 8 exponent / m mantissa bits)
  lmul-formula m (1 + xm + ym + 2^-l(m)) 2^(xe+ye) read literally (no carry rule)
  fp8 e4m3/e5m2  inputs rounded to the format, the exact product of those
                 rounded back to the format (saturating, so nothing turns NaN)
    raw          the values as they are
    scaled       each operand first multiplied by a power of two that puts its
                 RMS at 1 (per-tensor scaling, as fp8 inference does), undone
                 after the product; shows the format's precision rather than
                 its range

Samples:
  normal         x, y ~ N(0, 1)
  uniform        x, y ~ U(-1, 1)
  smollm2        weights of SmolLM2-135M (the default model's GGUF: q, k, gate
                 and down projections of layers 0, 15 and 29, dequantized)
                 times activation-like values: entries of the model's token
                 embedding table, which is what the first layer multiplies

Usage: python benchmarks/lmul_precision.py [--samples N] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from ember.numerics.formats import get_format
from ember.numerics.lmul import lmul

MANTISSA_BITS = (2, 3, 4, 5)
WEIGHT_TENSORS = [f"blk.{i}.{n}.weight" for i in (0, 15, 29) for n in ("attn_q", "attn_k", "ffn_gate", "ffn_down")]


def sample_random(kind: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "normal":
        return torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return torch.rand(n, generator=gen) * 2 - 1, torch.rand(n, generator=gen) * 2 - 1


def sample_smollm2(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    import gguf

    from ember.loader import default_model_path

    reader = gguf.GGUFReader(default_model_path())
    tensors = {t.name: t for t in reader.tensors}

    def values(name: str) -> torch.Tensor:
        t = tensors[name]
        return torch.from_numpy(np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).ravel())

    weights = torch.cat([values(name) for name in WEIGHT_TENSORS])
    acts = values("token_embd.weight")
    pick = lambda v: v[torch.randint(len(v), (n,), generator=gen)]  # noqa: E731
    return pick(weights), pick(acts)


def rms_scale(v: torch.Tensor) -> float:
    """Power of two putting the RMS of v at about 1 (exact to apply and undo)."""
    return 2.0 ** -round(float(torch.log2(v.pow(2).mean().sqrt())))


def fp8_product(x: torch.Tensor, y: torch.Tensor, name: str, scaled: bool) -> torch.Tensor:
    fmt = get_format(name, saturate=True)
    sx, sy = (rms_scale(x), rms_scale(y)) if scaled else (1.0, 1.0)
    p = fmt.quantize(fmt.quantize(x * sx) * fmt.quantize(y * sy))
    return p.to(torch.float64) / (sx * sy)


def relative_errors(approx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    exact = x.to(torch.float64) * y.to(torch.float64)
    keep = exact != 0
    return ((approx.to(torch.float64) - exact).abs() / exact.abs())[keep]


def methods() -> dict[str, callable]:
    out = {}
    for m in MANTISSA_BITS:
        out[f"lmul-bits m={m}"] = lambda x, y, m=m: lmul(x, y, m, "bits")
    for m in MANTISSA_BITS:
        out[f"lmul-formula m={m}"] = lambda x, y, m=m: lmul(x, y, m, "formula")
    for name in ("fp8_e4m3", "fp8_e5m2"):
        for scaled in (False, True):
            out[f"{name} {'scaled' if scaled else 'raw'}"] = lambda x, y, n=name, s=scaled: fp8_product(x, y, n, s)
    return out


def run(samples: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    datasets = {
        "normal": sample_random("normal", samples, gen),
        "uniform": sample_random("uniform", samples, gen),
        "smollm2": sample_smollm2(samples, gen),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method, fn in methods().items():
        results[method] = {}
        for dname, (x, y) in datasets.items():
            err = relative_errors(fn(x, y), x, y)
            results[method][dname] = {"mean": float(err.mean()), "median": float(err.median())}
    return {"samples": samples, "seed": seed, "results": results}


def format_table(report: dict) -> str:
    res = report["results"]
    dnames = list(next(iter(res.values())))
    head = f"{'method':<20}" + "".join(f"{d + ' mean':>15}{d + ' median':>16}" for d in dnames)
    lines = [head, "-" * len(head)]
    for method, row in res.items():
        lines.append(f"{method:<20}" + "".join(f"{row[d]['mean']:>15.4%}{row[d]['median']:>16.4%}" for d in dnames))
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    res, out = report["results"], []
    for lm, fp in (("lmul-bits m=4", "fp8_e4m3"), ("lmul-bits m=3", "fp8_e5m2")):
        for d in res[lm]:
            a, raw, sc = res[lm][d]["mean"], res[f"{fp} raw"][d]["mean"], res[f"{fp} scaled"][d]["mean"]
            out.append(f"{d:>8}: {lm} mean {a:.3%} vs {fp} raw {raw:.3%} / scaled {sc:.3%}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000, help="pairs per sample set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on small boxes)")
    ap.add_argument("--output", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    report = run(args.samples, args.seed)
    report["seconds"] = round(time.time() - t0, 1)
    print(f"Relative error per product, |approx - x*y| / |x*y|, {args.samples:,} pairs per set\n")
    print(format_table(report))
    print("\nClaim check (means):")
    print("\n".join(verdicts(report)))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
