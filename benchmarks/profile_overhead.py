"""Profile overhead: decode step time with the engine's step profile on and off, in one run.

--concurrency C sequences (default 32, 32-token prompts) decode together. After their
prefills, the run alternates blocks of --block-steps decode steps with `engine.profiler` on
and off, in pairs ordered on-off, off-on, ... so that the growing context favours neither,
and times each `engine.step()` from outside. Reported: mean µs per decode step off and on,
the difference and its share of the step, and the spread of the per-pair differences (on a
shared machine that spread is the noise, and it is much larger than the effect).

Then the profiler's own work per step, timed alone in a loop on the same batch: a clock, the
marks a step makes, the composition loop over the C rows, reading the fused step's timers and
writing the CSV line (on), or the no-op clock (off). This is the overhead without the noise.

    python benchmarks/profile_overhead.py --concurrency 32 --pairs 8 --block-steps 16 \\
        --output benchmarks/results/profile_overhead.json
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from common import PromptMaker, base_parser, environment, load_ember, log, print_table, set_threads, write_json

from ember import SamplingParams
from ember.engine.scheduler import SchedulerOutput

# The marks LLMEngine.step makes after `scheduled` (ModelRunner.execute's three, then the engine's).
STEP_MARKS = ("prepare", "forward", "logits", "update", "update", "sample", "detokenize")


def decode_step(engine, c: int) -> float | None:
    """One engine step, timed; None unless it decoded exactly the c sequences."""
    t0 = time.perf_counter()
    engine.step()
    dt = time.perf_counter() - t0
    st = engine.last_step
    return dt if st.num_seqs == c and st.num_scheduled_tokens == c else None


def alternating_blocks(engine, c: int, pairs: int, block_steps: int, path: str) -> list[dict]:
    blocks = []
    for pair in range(pairs):
        for profiled in ((True, False) if pair % 2 == 0 else (False, True)):
            if profiled:
                engine.profiler.enable(path)
            times = [decode_step(engine, c) for _ in range(block_steps)]
            engine.profiler.disable()
            blocks.append({"pair": pair, "profiled": profiled, "step_s": [t for t in times if t is not None]})
    return blocks


def profiler_work_per_step(engine, c: int, iterations: int, path: str) -> dict:
    """Seconds per step of the profiler's own calls, on and off, on a batch of the c running rows."""
    batch = SchedulerOutput([(r, 1) for r in engine.scheduler.running[:c]])
    profiler, out = engine.profiler, {}
    for state in ("off", "on"):
        if state == "on":
            profiler.enable(path)
        t0 = time.perf_counter()
        for _ in range(iterations):
            clock = profiler.clock()
            clock.scheduled(batch, engine.scheduler)
            for phase in STEP_MARKS:
                clock.mark(phase)
            profiler.record(clock)
        out[state] = (time.perf_counter() - t0) / iterations
        profiler.disable()
    return out


def main() -> None:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32, help="sequences decoding together")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8, help="on/off pairs of blocks")
    ap.add_argument("--block-steps", type=int, default=16, help="decode steps per block")
    ap.add_argument("--iterations", type=int, default=20000, help="loops of the profiler's own calls")
    ap.add_argument("--linear", default="dense", help="Ember's LinearMethod")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    env = environment(threads)
    log(f"threads={threads} load={env['loadavg_at_start']}")
    c, dtype = args.concurrency, args.dtype.split(",")[0]
    llm = load_ember(dtype, threads, args.model, max_num_seqs=c, linear=args.linear)
    engine = llm.engine
    fused = engine.runner.decoder is not None
    log(f"[{dtype}] decode steps: {'fused' if fused else 'PyTorch path: ' + engine.fused_decode_off_reason}")
    make = PromptMaker(llm.tokenizer, offset=40000 * (1 + args.seed))
    new_tokens = 2 * args.pairs * args.block_steps + 16  # + warm-up, and room for the direct timing
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    ids = [engine.add_request({"prompt_token_ids": make(args.prompt_len)}, params) for _ in range(c)]
    while engine.scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens
                                          for r in engine.scheduler.running):
        engine.step()  # prefills
    for _ in range(4):
        engine.step()  # warm-up decodes
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "steps.csv")
        log(f"[{dtype}] {args.pairs} pairs of {args.block_steps}-step blocks at {c} sequences")
        blocks = alternating_blocks(engine, c, args.pairs, args.block_steps, path)
        log(f"[{dtype}] the profiler's own calls, {args.iterations} loops each way")
        work = profiler_work_per_step(engine, c, args.iterations, path)
    for i in ids:
        engine.abort_request(i)
        engine.release(i)

    def mean_us(profiled, pair=None):
        ts = [t for b in blocks if b["profiled"] == profiled and pair in (None, b["pair"]) for t in b["step_s"]]
        return 1e6 * statistics.mean(ts), len(ts)

    off_us, off_n = mean_us(False)
    on_us, on_n = mean_us(True)
    diffs = [mean_us(True, p)[0] - mean_us(False, p)[0] for p in range(args.pairs)]
    spread = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    own_on, own_off = 1e6 * work["on"], 1e6 * work["off"]
    rows = [
        {"figure": "decode step, profile off (µs)", "value": off_us, "steps": off_n},
        {"figure": "decode step, profile on (µs)", "value": on_us, "steps": on_n},
        {"figure": "on - off (µs per step)", "value": on_us - off_us, "steps": ""},
        {"figure": "on - off (% of the step)", "value": 100 * (on_us - off_us) / off_us, "steps": ""},
        {"figure": "std. error of on - off over pairs (µs)", "value": spread, "steps": args.pairs},
        {"figure": "profiler's own calls, on (µs per step)", "value": own_on, "steps": args.iterations},
        {"figure": "profiler's own calls, off (µs per step)", "value": own_off, "steps": args.iterations},
        {"figure": "own calls on - off (% of the step)", "value": 100 * (own_on - own_off) / off_us, "steps": ""},
    ]
    print_table(rows, title=f"[{dtype}] step profile overhead, {c} sequences decoding, {threads} threads, "
                            f"{'fused' if fused else 'PyTorch'} decode")
    write_json(args.output, {"dtype": dtype, "concurrency": c, "fused_decode": fused, "linear": args.linear,
                             "off_us_per_step": off_us, "on_us_per_step": on_us,
                             "on_minus_off_us": on_us - off_us, "on_minus_off_pct": 100 * (on_us - off_us) / off_us,
                             "pair_diffs_us": diffs, "pair_diff_std_error_us": spread,
                             "profiler_calls_on_us": own_on, "profiler_calls_off_us": own_off,
                             "profiler_calls_pct_of_step": 100 * (own_on - own_off) / off_us,
                             "blocks": blocks, "env": env, "args": vars(args),
                             "loadavg_at_end": os.getloadavg()})


if __name__ == "__main__":
    main()
