"""CacheBlend through the serving engine on the rag workload: time to first token and throughput
against full prefill and the prefix cache alone; quality (teacher-forced log-likelihood of the
text that follows) against TTFT at several recompute ratios; the cost of precomputing a context
against what each query saves. One process, one loaded model, the engine's default path.

    .venv/bin/python benchmarks/cacheblend.py --output benchmarks/results/cacheblend.json
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time

from common import base_parser, environment, set_threads, write_json  # noqa: I001  (common puts the checkout on sys.path)

from ember import LLM, SamplingParams
from ember.bench.offline import prompts_of, run_throughput
from ember.bench.workloads import WorkloadSpec, build_workload
from ember.eval.kv.continuation import ForcedSampler
from ember.eval.perplexity import default_eval_text
from ember.loader import load_model

RATIOS = (0.0, 0.05, 0.16, 0.3, 0.5, 1.0)


def fresh(cfg: dict) -> LLM:
    """An engine for one measurement; the previous ones' KV caches (GBs each) are collected first."""
    gc.collect()
    return LLM(**cfg)


def engines(lm, threads: int, kv_tokens: int):
    """name -> config of each condition."""
    base = dict(loaded=lm, threads=threads, kv_cache_tokens=kv_tokens)
    return {
        "full prefill": dict(base, enable_chunk_cache=False, enable_prefix_caching=False),
        "prefix cache": dict(base, enable_chunk_cache=False, enable_prefix_caching=True),
        **{f"blend {r:g}": dict(base, blend_recompute_ratio=r) for r in RATIOS},
    }


def ttft_sequential(llm: LLM, prompts: list, warm_docs: list[str] | None) -> dict:
    """Each prompt alone, one token: its prefill latency. `warm_docs`: precomputed first."""
    warm = llm.warm_chunks(warm_docs) if warm_docs else None
    times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        llm.generate(prompt, SamplingParams(max_tokens=1, temperature=0))
        times.append(time.perf_counter() - t0)
    stats = llm.engine.kv.chunks.stats
    return {"ttft_ms_median": 1e3 * statistics.median(times), "ttft_ms_mean": 1e3 * statistics.mean(times),
            "ttft_ms": [round(1e3 * t, 2) for t in times], "warm": warm,
            "chunk_hits": stats.hits, "chunk_lookups": stats.lookups,
            "recomputed_share": stats.tokens_recomputed / max(1, stats.tokens_reused + stats.tokens_recomputed)}


def quality_windows(tokenizer, n: int, k: int, doc_len: int, question: int, cont: int, seed: int):
    """`n` prompts of k corpus passages (as chunk spans) + the question that follows the last
    passage in the corpus; and the `cont` tokens after it, to score."""
    ids = tokenizer.encode(default_eval_text())
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        starts = [rng.randrange(0, len(ids) - doc_len - question - cont) for _ in range(k)]
        tokens, spans = [], []
        for s in starts:
            spans.append((len(tokens), len(tokens) + doc_len))
            tokens += ids[s:s + doc_len]
        last = starts[-1] + doc_len
        tokens += ids[last:last + question]
        out.append((tokens, spans, ids[last + question:last + question + cont]))
    return out


def continuation_nll(llm: LLM, windows, with_docs: bool = True) -> float:
    engine = llm.engine
    rids = []
    for tokens, spans, target in windows:
        prompt = {"prompt_token_ids": tokens, "chunk_spans": spans} if with_docs else \
            {"prompt_token_ids": tokens[spans[-1][1]:]}
        rids.append(engine.add_request(prompt, SamplingParams(max_tokens=len(target), temperature=0, ignore_eos=True)))
    seqs = [engine.groups[r][0] for r in rids]
    sampler = ForcedSampler({s.request_id: w[2] for s, w in zip(seqs, windows)})
    saved, engine.sampler = engine.sampler, sampler
    try:
        while engine.has_unfinished():
            engine.step()
    finally:
        engine.sampler = saved
        for r in rids:
            engine.release(r)
    nll = [x for s in seqs for x in sampler.nll[s.request_id]]
    return sum(nll) / len(nll)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--num-docs", type=int, default=8)
    p.add_argument("--doc-len", type=int, default=256)
    p.add_argument("--docs-per-request", type=int, default=4)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--quality-prompts", type=int, default=16)
    p.add_argument("--continuation", type=int, default=64)
    p.add_argument("--kv-cache-tokens", type=int, default=24576, help="per engine; fits all requests at once")
    p.add_argument("--plot", default=None, help="PNG path (default: beside --output)")
    args = p.parse_args()
    set_threads(args.threads)
    lm = load_model(args.model, "auto", "auto", "batched")
    configs = engines(lm, args.threads, args.kv_cache_tokens)
    spec = WorkloadSpec(name="rag", num_prompts=args.num_prompts, seed=args.seed, input_len=args.question_len,
                        output_len=args.output_len, num_docs=args.num_docs, doc_len=args.doc_len,
                        docs_per_request=args.docs_per_request, doc_reuse=1.0)
    sessions = build_workload(spec, lm.tokenizer)
    marked = [prompt for prompt, _ in prompts_of(sessions, chunk_marks=True)]
    plain = [prompt for prompt, _ in prompts_of(sessions, chunk_marks=False)]
    pool = sorted({d for s in sessions for d in (x + "\n\n" for x in s.turns[0].documents)})
    fresh(configs["full prefill"]).generate(plain[:2], SamplingParams(max_tokens=2))  # first-call costs out of the way
    result = {"environment": environment(args.threads), "workload": vars(spec), "linear": lm.linear,
              "dtype": str(lm.model.dtype).removeprefix("torch."), "ttft": {}, "throughput": {}, "quality": {}}

    print("TTFT, one request at a time")
    for name, cfg in configs.items():
        if name.startswith("blend") and name not in ("blend 0.16", "blend 0", "blend 1"):
            continue
        prompts = plain if not name.startswith("blend") else marked
        result["ttft"][name] = ttft_sequential(fresh(cfg), prompts, pool if name.startswith("blend") else None)
        if name == "blend 0.16":  # the cold run: every chunk computed when first cited
            result["ttft"]["blend 0.16 cold"] = ttft_sequential(fresh(cfg), marked, None)
        print(f"  {name:14s} median {result['ttft'][name]['ttft_ms_median']:8.1f} ms")

    print("throughput, every request at once")
    for name in ("full prefill", "prefix cache", "blend 0.16"):
        llm = fresh(configs[name])
        run = run_throughput(llm, sessions, ignore_eos=True, temperature=0.0, seed=args.seed, progress=False,
                             chunk_marks=name.startswith("blend"))
        m = run["metrics"]
        result["throughput"][name] = {k: m[k] for k in ("duration_s", "request_throughput", "output_throughput",
                                                         "total_token_throughput")}
        result["throughput"][name]["ttft_ms_median"] = m["ttft_ms"]["median"]
        print(f"  {name:14s} {m['total_token_throughput']:8.1f} tok/s, TTFT median {m['ttft_ms']['median']:.0f} ms")

    print("quality: teacher-forced NLL of the text after the last passage")
    windows = quality_windows(lm.tokenizer, args.quality_prompts, args.docs_per_request, args.doc_len,
                              args.question_len, args.continuation, args.seed)
    result["quality"]["full prefill"] = continuation_nll(fresh(configs["full prefill"]), windows)
    result["quality"]["question only (no passages)"] = continuation_nll(fresh(configs["full prefill"]), windows, False)
    for r in RATIOS:
        result["quality"][f"blend {r:g}"] = continuation_nll(fresh(configs[f"blend {r:g}"]), windows)
    for name, nll in result["quality"].items():
        print(f"  {name:28s} NLL {nll:.4f}  ppl {math.exp(nll):.3f}")
    # TTFT of each ratio on the same prompts, cache warm, for the quality-latency plot
    result["ttft_by_ratio"] = {}
    for r in RATIOS:
        llm = fresh(configs[f"blend {r:g}"])
        t = ttft_sequential(llm, marked[:max(4, args.num_prompts // 2)], pool)
        result["ttft_by_ratio"][f"{r:g}"] = t["ttft_ms_median"]

    full, warm = result["ttft"]["full prefill"], result["ttft"]["blend 0.16"]
    per_doc_s = warm["warm"]["seconds"] / max(1, warm["warm"]["computed"])
    context_s = per_doc_s * args.docs_per_request
    saving_s = (full["ttft_ms_median"] - warm["ttft_ms_median"]) / 1e3
    result["warmup"] = {"seconds_per_document": per_doc_s, "seconds_per_context": context_s,
                        "saving_per_query_s": saving_s,
                        "break_even_queries": context_s / saving_s if saving_s > 0 else None,
                        "total_s_by_queries": {q: {"full prefill": q * full["ttft_ms_median"] / 1e3,
                                                   "warm + blend": context_s + q * warm["ttft_ms_median"] / 1e3}
                                               for q in (1, 2, 4, 8, 16)}}
    print(f"warm-up: {context_s:.2f} s per context of {args.docs_per_request} documents; each query saves "
          f"{saving_s:.2f} s -> break-even after {result['warmup']['break_even_queries']} queries")
    if args.output:
        write_json(args.output, result)
        plot(result, args.plot or args.output.rsplit(".", 1)[0] + ".png")


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(result["ttft"])
    ax[0].bar(names, [result["ttft"][n]["ttft_ms_median"] for n in names], color="tab:blue")
    ax[0].set_ylabel("median TTFT, one request at a time (ms)")
    ax[0].tick_params(axis="x", rotation=30)
    ax[0].set_title("time to first token, rag workload")
    xs = [result["ttft_by_ratio"][f"{r:g}"] for r in RATIOS]
    ys = [result["quality"][f"blend {r:g}"] for r in RATIOS]
    ax[1].plot(xs, ys, "o-", label="blend (recompute ratio)")
    for x, y, r in zip(xs, ys, RATIOS):
        ax[1].annotate(f"{r:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax[1].plot([result["ttft"]["full prefill"]["ttft_ms_median"]], [result["quality"]["full prefill"]], "s",
               color="black", label="full prefill")
    ax[1].axhline(result["quality"]["question only (no passages)"], color="gray", ls="--", label="no passages")
    ax[1].set_xlabel("median TTFT (ms)")
    ax[1].set_ylabel("NLL of the continuation (nats/token)")
    ax[1].set_title("quality against latency")
    ax[1].legend()
    w = result["warmup"]["total_s_by_queries"]
    qs = [int(q) for q in w]
    ax[2].plot(qs, [w[q]["full prefill"] for q in w], "o-", label="full prefill each query")
    ax[2].plot(qs, [w[q]["warm + blend"] for q in w], "o-", label="precompute once + blend")
    ax[2].set_xlabel("queries per context")
    ax[2].set_ylabel("prefill seconds in all")
    ax[2].set_title("precompute cost against per-query saving")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
