"""Ember vs llama.cpp on the CPU: same GGUF, same thread count, same token ids, one run.

Each engine configuration runs in its own subprocess, one after the other (so each gets the
machine alone and its peak RSS is its own): Ember in this venv for every `--configs` entry
(dtype/linear), llama.cpp under the llama-cpp-python venv (benchmarks/peers/llamacpp_env.sh
builds it; benchmarks/peers/llamacpp_worker.py drives it through llama_decode). Figures:

  prefill      512-token prompt, one output token: tokens/s = 512 / time to first token
  decode       32-token prompt then 128 greedy tokens: 127 / (T(128 tokens) - T(1 token)) for
               Ember, 127 / time of the 127 one-token decode calls for llama.cpp
  batched C    C sequences of 32-token prompts, 128 new tokens each, all in at once: decode
               tok/s over the steps that decode all C (llama.cpp: one llama_decode of C tokens
               per step in one unified KV cache); also generated tokens / total time

Warm-up first, then the median of --repeats fresh prompts (prefix caching off).

`--llama-tools` adds llama.cpp measured by its own tools from the same vendored sources
(peers/llamacpp_tools.sh builds them): `llama-bench` (pp = --prefill-len, tg = --new-tokens) and
`llama-batched-bench` (--decode-prompt-len-token prompts, --new-tokens each, 1 and --concurrency
sequences; its decode speed S_TG). These are llama.cpp at its best on this machine (no Python,
no ctypes, its own batching), the peer the ratios should be read against. With
`--instructions`, each engine also runs once more under valgrind (callgrind), on one thread,
counting only while it generates 4 and then 20 tokens after a 32-token prompt: instructions
per generated token = the difference / 16 (callgrind_marks.py; perf has no hardware counters
on this VM). Usage:

    python benchmarks/cpu_vs_llamacpp.py --threads 2 --output results/cpu_vs_llamacpp.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import callgrind_marks  # noqa: E402
from common import PromptMaker, environment, log, median, model_path, peak_rss_mib, print_table  # noqa: E402

ANCHORS = {"prefill": 488.0, "decode": 154.0, "batched_8": 288.0, "batched_32": 362.0}  # ../shared/anchors


# --- Ember worker (runs in a subprocess of this script) --------------------------------------------
def ember_worker(job: dict) -> dict:
    import torch
    from ember import LLM, SamplingParams
    from offline_throughput import run_fixed_batch

    dtype, linear = job["config"].split("/")
    conc = [int(c) for c in job.get("batched", {})]
    t0 = time.perf_counter()
    llm = LLM(model=job["model"], dtype=dtype, linear=linear, threads=job["threads"],
              enable_prefix_caching=False, max_num_seqs=max(conc + [1]), max_num_batched_tokens=512,
              kv_cache_tokens=max([c * (32 + job["new_tokens"] + 16) for c in conc] + [2048]))
    res = {"engine": "ember", "config": job["config"], "startup_s": time.perf_counter() - t0,
           "threads": torch.get_num_threads()}

    def gen(ids, n):
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        t = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        return time.perf_counter() - t, list(out.outputs[0].token_ids)

    if "prefill" in job:
        times = [gen(ids, 1)[0] for ids in job["prefill"]]
        ttft = median(times[1:])
        res.update(prefill_ttft_s=ttft, prefill_tok_s=len(job["prefill"][0]) / ttft, prefill_all_s=times[1:])
        rates, toks = [], []
        for ids in job["decode"]:
            t1, _ = gen(ids, 1)
            tn, tk = gen(ids, job["new_tokens"])
            rates.append((job["new_tokens"] - 1) / max(tn - t1, 1e-9))
            toks.append(tk)
        res.update(decode_tok_s=median(rates[1:]), decode_tok_s_all=rates[1:], decode_tokens=toks)
    if "count" in job:
        c = job["count"]
        gen(c["prompt"], c["long"])  # warm-up, uncounted
        callgrind_marks.count_decode(lambda n: gen(c["prompt"], n), c["library"], c["short"], c["long"])
    for c, prompts in job.get("batched", {}).items():
        run_fixed_batch(llm.engine, prompts[:4], 8)  # warm-up
        r = run_fixed_batch(llm.engine, prompts, job["new_tokens"])
        res[f"batched_{c}"] = {k: r[k] for k in ("decode_tok_s", "generated_tok_s_overall", "decode_step_ms")}
    res["peak_rss_mib"] = peak_rss_mib()
    return res


# --- driver --------------------------------------------------------------------------------------
def llamacpp_python(explicit: str | None) -> str:
    if explicit:
        return explicit
    out = subprocess.run(["bash", os.path.join(HERE, "peers", "llamacpp_env.sh")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def llama_tools_dir(given: str) -> str:
    if given != "auto":
        return given
    out = subprocess.run(["bash", os.path.join(HERE, "peers", "llamacpp_tools.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llamacpp_tools.sh failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
        elif line.startswith("["):
            out += json.loads(line)
    return out


def llama_tools(bin_dir: str, model: str, threads: int, args, conc: list[int]) -> dict:
    """llama.cpp's own llama-bench and llama-batched-bench, read into this script's figures."""
    bench = subprocess.run([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads),
                            "-p", str(args.prefill_len), "-n", str(args.new_tokens), "-r", str(args.repeats),
                            "-o", "jsonl"], capture_output=True, text=True, check=True)
    rows = _json_lines(bench.stdout)
    res = {"engine": "llama.cpp tools", "threads": threads, "peak_rss_mib": float("nan"),
           "llama_bench": rows}
    res["prefill_tok_s"] = next(r["avg_ts"] for r in rows if r["n_prompt"] and not r["n_gen"])
    res["decode_tok_s"] = next(r["avg_ts"] for r in rows if r["n_gen"] and not r["n_prompt"])
    npl = sorted({1, *conc})
    ctx = max(npl) * (args.decode_prompt_len + args.new_tokens) + 64
    batched = subprocess.run([os.path.join(bin_dir, "llama-batched-bench"), "-m", model, "-t", str(threads),
                              "-tb", str(threads), "-c", str(ctx), "-b", "2048", "-ub", "512",
                              "-npp", str(args.decode_prompt_len), "-ntg", str(args.new_tokens),
                              "-npl", ",".join(map(str, npl)), "--output-format", "jsonl"],
                             capture_output=True, text=True, check=True)
    lines = _json_lines(batched.stdout)
    res["llama_batched_bench"] = lines
    for c in conc:
        row = next(r for r in lines if r["pl"] == c)
        res[f"batched_{c}"] = {"decode_tok_s": row["speed_tg"], "generated_tok_s_overall": c * args.new_tokens / row["t"]}
    return res


def run_worker(cmd: list[str], job: dict, count_instructions: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        jp, op = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        json.dump(job, open(jp, "w"))
        full = cmd + [jp, op]
        if count_instructions:
            full = callgrind_marks.valgrind_command(f"{tmp}/cg.out") + full
        proc = subprocess.run(full, capture_output=True, text=True)
        if proc.returncode == -11 and cmd[-1].endswith("llamacpp_worker.py") and "extra_bufts" not in job \
                and not count_instructions:
            # llama.cpp's choice of weight layout (AMX where the CPU reports it) crashes in some
            # VMs (this one's AMX tiles): run its plain CPU layout and say so in the figures.
            log("llama.cpp worker crashed (SIGSEGV) with its extra weight layouts: again without them")
            res = run_worker(cmd, dict(job, extra_bufts=False))
            res["extra_bufts_crashed"] = True
            return res
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed ({proc.returncode}): {' '.join(full)}\n{proc.stderr[-3000:]}")
        res = json.load(open(op))
        if count_instructions:
            c = job["count"]
            res["instructions_per_token"] = callgrind_marks.instructions_per_token(f"{tmp}/cg.out", c["short"], c["long"])
        return res


def instructions_per_token(cmd: list[str], job: dict, prompt: list[int], short: int = 4, long: int = 20) -> float:
    """One thread: under valgrind threads run one at a time, and a second one would add spin-waits."""
    count = {"prompt": prompt, "short": short, "long": long, "library": callgrind_marks.build()}
    job = {k: v for k, v in job.items() if k not in ("prefill", "decode", "batched")}
    return run_worker(cmd, dict(job, threads=1, count=count), count_instructions=True)["instructions_per_token"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="GGUF file (default: the default model)")
    ap.add_argument("--configs", default="fp32/int4,fp32/int8,fp32/dense",
                    help="Ember configurations, dtype/linear, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="8,32", help="batched decode at these numbers of sequences")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--llamacpp-python", default=None, help="python of the llama-cpp-python venv")
    ap.add_argument("--llama-tools", default=None, metavar="DIR|auto",
                    help="also llama.cpp's own llama-bench and llama-batched-bench from DIR (auto: build them)")
    ap.add_argument("--instructions", action="store_true", help="also count instructions per token (valgrind)")
    ap.add_argument("--output", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.worker:  # python cpu_vs_llamacpp.py --worker ember JOB OUT
        job = json.load(open(rest[0]))
        json.dump(ember_worker(job), open(rest[1], "w"))
        return

    env = environment(args.threads)
    log(f"threads={args.threads} load={env['loadavg_at_start']}")
    make = PromptMaker(offset=5000)
    n = args.repeats + 1
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    job = {"model": model_path(args.model), "threads": args.threads, "new_tokens": args.new_tokens,
           "prefill": [make(args.prefill_len) for _ in range(n)],
           "decode": [make(args.decode_prompt_len) for _ in range(n)],
           "batched": {str(c): [make(args.decode_prompt_len) for _ in range(c)] for c in conc}}
    engines = []
    ember_cmd = [sys.executable, os.path.abspath(__file__), "--worker", "ember"]
    for cfg in [c.strip() for c in args.configs.split(",") if c.strip()]:
        log(f"ember {cfg}")
        engines.append((f"ember {cfg}", ember_cmd, run_worker(ember_cmd, dict(job, config=cfg))))
    if not args.no_llamacpp:
        log("llama.cpp")
        lcmd = [llamacpp_python(args.llamacpp_python), os.path.join(HERE, "peers", "llamacpp_worker.py")]
        engines.append(("llama.cpp", lcmd, run_worker(lcmd, job)))
    tools = None
    if args.llama_tools:
        log("llama.cpp's own tools")
        tools = llama_tools(llama_tools_dir(args.llama_tools), job["model"], args.threads, args, conc)
    if args.instructions:
        for name, cmd, res in engines:
            log(f"instructions per token: {name}")
            extra = {"config": name.split()[-1]} if name.startswith("ember") else {}
            res["instructions_per_token"] = instructions_per_token(cmd, dict(job, **extra), job["decode"][0])

    peer = engines[-1][2] if not args.no_llamacpp else None
    keys = [("prefill", "prefill_tok_s"), ("decode", "decode_tok_s")] + [(f"batched_{c}", f"batched_{c}") for c in conc]

    def fig(res, key):
        v = res.get(key)
        return v["decode_tok_s"] if isinstance(v, dict) else v

    rows = []
    listed = engines + ([("llama.cpp tools", None, tools)] if tools else [])
    for name, _, res in listed:
        row = {"engine": name}
        for label, key in keys:
            row[f"{label} tok/s"] = fig(res, key)
        for c in conc:
            row[f"gen/total {c}"] = res[f"batched_{c}"]["generated_tok_s_overall"]
        row["peak RSS MiB"] = res["peak_rss_mib"]
        if "instructions_per_token" in res:
            row["Minstr/token"] = res["instructions_per_token"] / 1e6
        rows.append(row)
    for name, _, res in engines[:-1] if peer else []:
        row = {"engine": f"ratio {name.split()[-1]} / llama.cpp"}
        for label, key in keys:
            row[f"{label} tok/s"] = fig(res, key) / fig(peer, key)
        rows.append(row)
    for name, _, res in (engines[:-1] if peer else engines) if tools else []:
        row = {"engine": f"ratio {name.split()[-1]} / llama.cpp tools"}
        for label, key in keys:
            row[f"{label} tok/s"] = fig(res, key) / fig(tools, key)
        rows.append(row)
    for name, _, res in engines:
        if name.startswith("ember"):
            row = {"engine": f"ratio {name.split()[-1]} / anchor"}
            for label, key in keys:
                if label in ANCHORS:
                    row[f"{label} tok/s"] = fig(res, key) / ANCHORS[label]
            rows.append(row)
    print_table(rows, title=f"Ember vs llama.cpp, {args.threads} threads (prefill {args.prefill_len}; decode "
                            f"{args.new_tokens} after {args.decode_prompt_len}; batched at {args.concurrency})")
    if peer:
        for name, _, res in engines[:-1]:
            agree = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
                     for x, y in zip(res["decode_tokens"], peer["decode_tokens"])]
            print(f"{name}: leading greedy tokens equal to llama.cpp's, per prompt: {agree}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        json.dump({"env": env, "args": vars(args), "results": {n: r for n, _, r in listed}},
                  open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
