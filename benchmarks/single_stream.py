"""Single-stream prefill and decode: Ember vs Hugging Face transformers, same process, same threads.

prefill: one 512-token prompt, one output token; tokens/s = 512 / time to first token.
decode:  a 32-token prompt then 128 greedy tokens (ignore_eos); decode tokens/s =
         127 / (time of the 128-token call - time of a 1-token call on the same prompt),
         i.e. the prefill (and its first token) is excluded in the same way for both engines.

Each measurement: one warm-up, then --repeats runs on fresh prompts (no prefix-cache hits);
the median is reported. Usage:

    python benchmarks/single_stream.py --dtype fp32,bf16 --repeats 3 --output results/single.json
"""

from __future__ import annotations

import gc
import time

from common import (PromptMaker, base_parser, environment, hf_generate, load_ember, load_hf, log, median,
                    parse_dtypes, peak_rss_mib, print_table, set_threads, write_json)


def ember_time(llm, ids: list[int], new_tokens: int):
    from ember import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
    dt = time.perf_counter() - t0
    assert len(out.outputs[0].token_ids) == new_tokens, len(out.outputs[0].token_ids)
    return dt, out


def run_engine(name: str, gen, prompts_prefill, prompts_decode, prefill_len, new_tokens):
    """`gen(ids, n) -> (seconds, token_ids, extra_decode_seconds or None)`; index 0 is the warm-up."""
    prefill_s, decode_rates, internal_rates, tokens = [], [], [], []
    for i, ids in enumerate(prompts_prefill):
        dt, _, _ = gen(ids, 1)
        if i:
            prefill_s.append(dt)
    for i, ids in enumerate(prompts_decode):
        t1, _, _ = gen(ids, 1)
        tn, toks, internal = gen(ids, new_tokens)
        if i:
            decode_rates.append((new_tokens - 1) / max(tn - t1, 1e-9))
            if internal:
                internal_rates.append((new_tokens - 1) / internal)
        tokens.append(toks)
    ttft = median(prefill_s)
    res = {"engine": name, "prefill_ttft_s": ttft, "prefill_tok_s": prefill_len / ttft,
           "decode_tok_s": median(decode_rates), "decode_tok_s_all": decode_rates,
           "prefill_ttft_all": prefill_s}
    if internal_rates:
        res["decode_tok_s_engine_metrics"] = median(internal_rates)
    return res, tokens


def main() -> None:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-hf", action="store_true", help="measure Ember only")
    ap.add_argument("--attention", default=None, help="Ember: AttentionBackend (default: the engine's)")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    dtypes = parse_dtypes(args.dtype)
    env = environment(threads)
    log(f"threads={threads} dtypes={dtypes} repeats={args.repeats} load={env['loadavg_at_start']}")

    rows, results = [], {"env": env, "args": vars(args), "results": []}
    for dtype in dtypes:
        llm = load_ember(dtype, threads, args.model, **({"attention": args.attention} if args.attention else {}))
        make = PromptMaker(llm.tokenizer, offset=1000 * (1 + args.seed))
        n = args.repeats + 1  # + the warm-up
        prompts_prefill = [make(args.prefill_len) for _ in range(n)]
        prompts_decode = [make(args.decode_prompt_len) for _ in range(n)]

        def gen_ember(ids, k):
            dt, out = ember_time(llm, ids, k)
            m = out.metrics
            internal = (m.finished_time - m.first_token_time) if k > 1 and m.finished_time else None
            return dt, list(out.outputs[0].token_ids), internal

        log(f"[{dtype}] ember")
        ember_res, ember_tokens = run_engine("ember", gen_ember, prompts_prefill, prompts_decode,
                                             args.prefill_len, args.new_tokens)
        del llm
        gc.collect()
        entry = {"dtype": dtype, "ember": ember_res}
        if not args.no_hf:
            set_threads(args.threads)
            model = load_hf(dtype, args.model)
            pad = model.generation_config.pad_token_id

            def gen_hf(ids, k):
                dt, out = hf_generate(model, [ids], k, pad_id=pad)
                return dt, out[0].tolist(), None

            log(f"[{dtype}] transformers")
            hf_res, hf_tokens = run_engine("transformers", gen_hf, prompts_prefill, prompts_decode,
                                           args.prefill_len, args.new_tokens)
            del model
            gc.collect()
            agree = []
            for a, b in zip(ember_tokens, hf_tokens):
                k = 0
                while k < min(len(a), len(b)) and a[k] == b[k]:
                    k += 1
                agree.append(k)
            entry["transformers"] = hf_res
            entry["ratio_prefill"] = ember_res["prefill_tok_s"] / hf_res["prefill_tok_s"]
            entry["ratio_decode"] = ember_res["decode_tok_s"] / hf_res["decode_tok_s"]
            entry["greedy_agreement_prefix"] = agree
        entry["peak_rss_mib"] = peak_rss_mib()
        results["results"].append(entry)
        for eng in ("ember", "transformers"):
            if eng in entry:
                r = entry[eng]
                rows.append({"dtype": dtype, "engine": eng, "prefill tok/s": r["prefill_tok_s"],
                             "TTFT 512 (s)": r["prefill_ttft_s"], "decode tok/s": r["decode_tok_s"]})
        if "ratio_decode" in entry:
            rows.append({"dtype": dtype, "engine": "ratio ember/hf", "prefill tok/s": entry["ratio_prefill"],
                         "TTFT 512 (s)": float("nan"), "decode tok/s": entry["ratio_decode"]})

    print_table(rows, title=f"single stream, {threads} threads, median of {args.repeats} "
                            f"(prefill {args.prefill_len} tokens; decode {args.new_tokens} after {args.decode_prompt_len})")
    for e in results["results"]:
        if "greedy_agreement_prefix" in e:
            print(f"[{e['dtype']}] greedy tokens equal to transformers' (leading tokens per run, of "
                  f"{args.new_tokens}): {e['greedy_agreement_prefix']}")
        if "decode_tok_s_engine_metrics" in e["ember"]:
            print(f"[{e['dtype']}] ember decode tok/s from its own request metrics: "
                  f"{e['ember']['decode_tok_s_engine_metrics']:.1f}")
    print(f"peak RSS (whole process, both engines): {peak_rss_mib():.0f} MiB")
    write_json(args.output, results)


if __name__ == "__main__":
    main()
