"""What `--linear auto --dtype auto` should choose, measured: prefill and decode throughput of
several linear/dtype configurations of Ember in ONE process, in alternating rounds (the order
rotates each round), so a shared machine's slow spells fall on every configuration alike.

Each round times, per configuration and batch size, one batch of B prompts of P tokens with
max_tokens=1 (`ember bench latency`'s `run_latency`, one iteration): prefill tok/s = B*P / its
wall time; then another batch generating O tokens, whose decode-only engine steps (B rows, no
prefill) are timed one by one: decode tok/s = B / the median step. Fresh text every time. The
report gives the median over rounds and the range.

    .venv/bin/python benchmarks/auto_defaults.py --configs auto/auto,int4/fp32,int4/bf16,dense/fp32,dense/bf16 \
        --batch-sizes 1,16 --rounds 5 --output results/auto_defaults.json
"""

from __future__ import annotations

import statistics

from common import base_parser, environment, log, model_path, print_table, set_threads, write_json


def load(config: str, threads: int, model: str | None, kv_tokens: int):
    from ember import LLM

    linear, dtype = config.split("/")
    llm = LLM(model=model_path(model), linear=linear, dtype=dtype, threads=threads, kv_cache_tokens=kv_tokens,
              enable_prefix_caching=False)
    e = llm.engine
    return llm, {"linear": e.config.linear, "dtype": e.config.dtype, "auto": list(e.auto_notes),
                 "fused_decode": e.fused_decode_off_reason or "on"}


def decode_step_ms(llm, batch: list[list[int]], steps: int) -> float:
    """Median wall ms of the engine steps that decode exactly len(batch) rows (one token for
    each sequence, no prefill in the step): a step-level figure, robust to a slow spell."""
    import time

    from ember import SamplingParams

    engine, b = llm.engine, len(batch)
    params = SamplingParams(max_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    for ids in batch:
        engine.add_request({"prompt_token_ids": ids}, params)
    times = []
    while engine.has_unfinished():
        t0 = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t0
        if engine.last_step.num_seqs == b and engine.last_step.num_scheduled_tokens == b:
            times.append(dt)
    return statistics.median(times) * 1000.0


def main() -> None:
    ap = base_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="auto/auto,int4/fp32,int4/bf16,dense/fp32,dense/bf16",
                    help="linear/dtype pairs, comma-separated (auto/auto: the defaults)")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (one untimed warm-up round first)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    from ember.bench.corpus import PromptMaker
    from ember.bench.latency import run_latency

    configs = args.configs.split(",")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    kv_tokens = max(sizes) * (args.input_len + args.output_len) + 256
    llms, resolved = {}, {}
    for c in configs:
        llms[c], resolved[c] = load(c, threads, args.model, kv_tokens)
        log(f"{c}: {resolved[c]}")
    samples = {(c, b, k): [] for c in configs for b in sizes for k in ("prefill", "decode")}
    for r in range(args.rounds + 1):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for c in order:
            for b in sizes:
                m = run_latency(llms[c], b, args.input_len, 1, iters=1, warmup=0,
                                seed=args.seed + 1000 * r)["metrics"]
                maker = PromptMaker(llms[c].tokenizer, seed=args.seed + 1000 * r + 7 * b)
                ms = decode_step_ms(llms[c], [maker.token_ids(args.input_len) for _ in range(b)], args.output_len)
                if r:  # round 0 warms every configuration up
                    samples[c, b, "prefill"].append(m["prefill_tok_per_s"])
                    samples[c, b, "decode"].append(b * 1000.0 / ms)
        log(f"round {r} done" + (" (warm-up)" if r == 0 else ""))
    rows = []
    for c in configs:
        row = {"config": c, "resolved": f"{resolved[c]['linear']}/{resolved[c]['dtype']}"}
        for b in sizes:
            for k in ("prefill", "decode"):
                xs = samples[c, b, k]
                row[f"{k} tok/s b={b}"] = f"{statistics.median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"
        rows.append(row)
    print_table(rows, title=f"median (range) over {args.rounds} rounds, prompts {args.input_len}, "
                            f"{args.output_len} new, {threads} threads")
    write_json(args.output, {"environment": environment(threads), "args": vars(args), "resolved": resolved,
                             "samples": {f"{c}|{b}|{k}": v for (c, b, k), v in samples.items()}})


if __name__ == "__main__":
    main()
