"""Why llama-cpp-python measures llama.cpp slower than llama.cpp's own tools (issue 21, item 3).

The same GGUF, threads and token ids, in alternating rounds: llama.cpp's `llama-bench` and
`llama-batched-bench` (peers/llamacpp_tools.sh), and the llama-cpp-python worker
(peers/llamacpp_worker.py, the low-level `llama_decode` API) once per setting that differs
between them:

  worker            flash attention auto (llama.cpp's default), one KV cache for all sequences
  flash off         flash attention off: what llama-cpp-python's `Llama` class and its server
                    set unless `flash_attn=True` is passed
  per-seq KV        one KV stream per sequence, as llama-batched-bench runs (kv_unified off)
  server defaults   flash off and the logits of every prompt token copied out
                    (llama-cpp-python's server defaults `logits_all=True`)

Figures: prefill 512 (tok/s), single-stream decode (128 after a 32-token prompt), decode at C
sequences; medians over --rounds, and each setting's ratio to the tools. The build's
`llama_print_system_info()` is recorded (GGML_NATIVE bakes the build machine's ISA into the
library: a venv built on an AVX2 machine runs AVX2 code on an AVX-512 one). Usage:

    python benchmarks/peers/llamacpp_gap.py --rounds 2 --output benchmarks/results/llamacpp_gap.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common import PromptMaker, environment, log, model_path, print_table  # noqa: E402
from cpu_vs_llamacpp import llama_tools, llama_tools_dir, llamacpp_python, run_worker  # noqa: E402

SETTINGS = {
    "worker": {},
    "flash off": {"flash_attn": "off"},
    "per-seq KV": {"kv_unified": False},
    "server defaults": {"flash_attn": "off", "logits_all": True},
}


def figures(res: dict, conc: int) -> dict:
    return {"prefill": res["prefill_tok_s"], "decode": res["decode_tok_s"],
            f"decode at {conc}": res[f"batched_{conc}"]["decode_tok_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="worker settings to run, comma-separated")
    ap.add_argument("--llamacpp-python", default=None)
    ap.add_argument("--llama-tools", default="auto", metavar="DIR|auto")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")

    env = environment(args.threads)
    make = PromptMaker(offset=5000)
    n = args.repeats + 1
    job = {"model": model_path(None), "threads": args.threads, "new_tokens": 128,
           "prefill": [make(512) for _ in range(n)], "decode": [make(32) for _ in range(n)],
           "batched": {str(args.concurrency): [make(32) for _ in range(args.concurrency)]}}
    tools_dir = llama_tools_dir(args.llama_tools)
    tool_args = argparse.Namespace(prefill_len=512, new_tokens=128, repeats=args.repeats, decode_prompt_len=32)
    cmd = [llamacpp_python(args.llamacpp_python), os.path.join(HERE, "llamacpp_worker.py")]
    runs: dict[str, list[dict]] = {name: [] for name in ["tools", *settings]}
    raw: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            log(f"round {r + 1}/{args.rounds}: {name}")
            if name == "tools":
                res = llama_tools(tools_dir, job["model"], args.threads, tool_args, [args.concurrency])
            else:
                res = run_worker(cmd, dict(job, **SETTINGS[name]))
                res.pop("decode_tokens", None)
            raw[name].append(res)
            runs[name].append(figures(res, args.concurrency))

    med = {name: {k: statistics.median(f[k] for f in fs) for k in fs[0]} for name, fs in runs.items()}
    rows = [{"llama.cpp": name, **{f"{k} tok/s": v for k, v in m.items()}} for name, m in med.items()]
    rows += [{"llama.cpp": f"{name} / tools", **{f"{k} tok/s": v / med["tools"][k] for k, v in m.items()}}
             for name, m in med.items() if name != "tools"]
    print_table(rows, title=f"llama-cpp-python worker settings against llama.cpp's own tools, "
                            f"{args.threads} threads, medians of {args.rounds} rounds")
    info = next((x["system_info"] for x in raw.get(settings[0], []) if "system_info" in x), "") if settings else ""
    print("worker build:", info)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        json.dump({"env": env, "args": vars(args), "settings": {k: SETTINGS[k] for k in settings},
                   "medians": med, "rounds": runs, "raw": raw}, open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
