"""How a step's time grows when it runs on part of the machine: the exponents of
`ember sim run --semi-pd-scaling` (and `sim_disagg.py --semi-pd-scaling`), measured.

A semi-PD worker on a share s of the machine takes t x s^-a for a step that takes t on all of it.
Here s = 1/2: the same prefill step (one --prompt-len-token prompt) and the same decode step
(--batch sequences of --context tokens each) run at --threads and at half of them, each in a
fresh process, alternating, --repeats times; a = log2(t_half / t_full), median over repeats.
a = 1: the step is bound by compute (halving the cores doubles it); a = 0: the core count does
not matter (bound by memory bandwidth, or by single-threaded overhead).

    python benchmarks/semi_pd_scaling.py --output benchmarks/results/semi_pd_scaling.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import environment, write_json  # noqa: E402


def worker(threads: int, prompt_len: int, batch: int, context: int, steps: int) -> dict:
    from ember import LLM, SamplingParams
    from common import PromptMaker

    llm = LLM(threads=threads, enable_prefix_caching=False, max_num_seqs=batch, max_num_batched_tokens=2048,
              kv_cache_tokens=batch * (context + steps + 32) + prompt_len + 64)
    make = PromptMaker(offset=7000)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate([{"prompt_token_ids": make(prompt_len)}], one)  # warm-up
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": make(prompt_len)}], one)
    prefill = time.perf_counter() - t
    engine = llm.engine
    for _ in range(batch):
        engine.add_request({"prompt_token_ids": make(context)}, SamplingParams(temperature=0, max_tokens=steps + 2,
                                                                               ignore_eos=True))
    while any(r.num_computed_tokens < len(r.prompt_token_ids) for r in engine.scheduler.running) \
            or engine.scheduler.waiting:
        engine.step()  # the prompts in
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return {"threads": threads, "prefill_s": prefill, "decode_step_s": statistics.median(times)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="the whole machine's threads (halved for the share)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.prompt_len, args.batch, args.context, args.steps)))
        return 0
    half = max(1, args.threads // 2)
    runs: dict[int, list[dict]] = {args.threads: [], half: []}
    for _ in range(args.repeats):
        for t in (args.threads, half):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(t), "--prompt-len", str(args.prompt_len),
                   "--batch", str(args.batch), "--context", str(args.context), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[t].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[t][-1], file=sys.stderr)
    share = half / args.threads
    exps = {}
    for key, name in (("prefill_s", "prefill"), ("decode_step_s", "decode")):
        ratios = [h[key] / f[key] for h, f in zip(runs[half], runs[args.threads])]
        exps[name] = statistics.median(math.log(r) / math.log(1 / share) for r in ratios)
    print(f"--semi-pd-scaling prefill={exps['prefill']:.2f},decode={exps['decode']:.2f}")
    write_json(args.output, {"environment": environment(args.threads), "share": share, "exponents": exps,
                             "runs": {str(k): v for k, v in runs.items()}, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
