"""Low-bit linear methods against `int4`, same process, same threads: perplexity, single-stream
decode and prefill speed, kernel NMSE, weight memory and the energy estimate.

Per method (`--methods`, default int4,tmac-w4,tmac-w2,ternary; `NAME:gptq` (or `NAME:gptq-mse`)
quantizes NAME's weights with GPTQ, quant/gptq.py, on --calibration-tokens from the text's
tail, which the perplexity never scores; `--ppl-only` skips the speed rounds):
  ppl      `ember eval ppl`'s recipe (pydoc_data.topics, windows of 512, every prediction scored)
           over the first --ppl-tokens tokens, fp32;
  prefill  one 512-token prompt, one output token: 512 / time to first token (the fused step
           takes the chunk where the method's kernel serves large batches);
  decode   a 32-token prompt then 128 greedy tokens: 127 / (time of the 128-token call - time of
           a 1-token call), as benchmarks/single_stream.py; median of --repeats after a warm-up,
           measured in rounds that visit every method (all models stay loaded), so a shared
           machine's changing load falls on every method alike;
  NMSE     each layer's projections (layers 0, 15, 29) on real activations (the inputs the fp32
           dense model gives them over a 128-token prompt), the method's C kernel against
           (a) the float product of the same quantized weights (T-MAC's check) and (b) the
           product of the original float weights; mean over the 12 projections;
  memory, energy: `ember info` and `ember info --energy` (an op-count model, not a measurement).

    python benchmarks/lowbit.py --output benchmarks/results/lowbit.json
"""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as F
from common import PromptMaker, base_parser, environment, log, median, print_table, set_threads, write_json
from single_stream import ember_time

NMSE_LAYERS = (0, 15, 29)


def nmse(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((y.double() - ref.double()) ** 2).mean() / (ref.double() ** 2).mean())


def real_activations(dense_lm, ids: list[int]) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """(layer, projection) -> (its float weight, the inputs it got) over one prompt of the fp32 model."""
    from ember.models.llama import Linear

    seen, names = {}, {}
    for i in NMSE_LAYERS:
        for part in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            names[id(getattr(dense_lm.model.layers[i], part))] = (i, part)
    original = Linear.forward

    def spy(self, x):
        if id(self) in names:
            seen[names[id(self)]] = (self.params["weight"], x.reshape(-1, x.shape[-1]).clone())
        return original(self, x)

    Linear.forward = spy
    try:
        from ember import LLM, SamplingParams
        LLM(loaded=dense_lm, kv_cache_tokens=1024, threads=torch.get_num_threads(), linear="dense",
            fused_decode="off").generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=1),
                                         use_tqdm=False)
    finally:
        Linear.forward = original
    return seen


def kernel_nmse(method_name: str, acts) -> dict:
    from ember.kernels.linear import get_linear_method

    method = get_linear_method(method_name)
    vs_quant, vs_float = [], []
    for w, x in acts.values():
        params = method.pack(w, None, torch.float32)
        y = method.apply(x, params)
        vs_quant.append(nmse(y, F.linear(x, method.dequantize(params, torch.float32))))
        vs_float.append(nmse(y, F.linear(x, w)))
    return {"nmse_vs_same_quantized_weights": sum(vs_quant) / len(vs_quant), "nmse_vs_same_quantized_max": max(vs_quant),
            "nmse_vs_float_weights": sum(vs_float) / len(vs_float)}


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def main() -> None:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--methods", default="int4,tmac-w4,tmac-w2,ternary")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--calibration-tokens", type=int, default=8192)
    ap.add_argument("--ppl-only", action="store_true", help="perplexity, memory, energy and NMSE only")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    env = environment(threads)
    from ember import LLM
    from ember.config import EngineConfig
    from ember.eval.perplexity import evaluate_perplexity, load_eval_text
    from ember.info import model_info
    from ember.kernels import native
    from ember.loader import default_model_path, load_model

    path = args.model or default_model_path()
    env["c_kernels"] = native.describe()
    env["cpu_flags"] = sorted(f for f in native.cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    log(f"threads={threads} load={env['loadavg_at_start']} kernels={env['c_kernels']}")
    dense = load_model(path, dtype=torch.float32, linear="dense")
    acts = real_activations(dense, dense.tokenizer.encode(load_eval_text(None)[:2000])[:128])
    del dense
    gc.collect()

    text = load_eval_text(None)
    rows, results = [], {"env": env, "args": vars(args), "results": []}
    engines = {}
    for spec in [m.strip() for m in args.methods.split(",") if m.strip()]:
        name, _, quantizer = spec.partition(":")
        quantizer = quantizer or "rtn"
        log(f"[{spec}] load")
        lm = load_model(path, dtype=torch.float32, linear=name, quantizer=quantizer,
                        calibration_tokens=args.calibration_tokens)
        log(f"[{name}] perplexity over {args.ppl_tokens} tokens")
        ppl = evaluate_perplexity(lm.model, lm.tokenizer, text, context=512, max_tokens=args.ppl_tokens, progress=False)
        info = model_info(EngineConfig(model=path, linear=name, dtype="fp32"), energy=True)
        entry = {"method": spec, "perplexity": ppl.perplexity, "ppl_tokens_scored": ppl.tokens_scored,
                 "weight_bytes_loaded": info["weight_bytes_loaded"],
                 "energy_uj_per_token": info["energy"]["total_pj"] / 1e6}
        if name not in ("int4", "dense", "int8") and quantizer == "rtn":
            entry.update(kernel_nmse(name, acts))
        results["results"].append(entry)
        if args.ppl_only:
            del lm
            gc.collect()
            continue
        engines[spec] = LLM(loaded=lm, threads=threads, linear=name, enable_prefix_caching=False, kv_cache_tokens=4096)

    if args.ppl_only:
        print_table([{"method": r["method"], "ppl": r["perplexity"], "weights MiB": r["weight_bytes_loaded"] / 2 ** 20,
                      "uJ/token": r["energy_uj_per_token"]} for r in results["results"]],
                    title=f"low-bit linears, fp32 activations (ppl over {args.ppl_tokens} tokens)")
        write_json(args.output, results)
        return
    # Speed in rounds over all methods (round 0 warms up): on a shared machine, load that comes
    # and goes then falls on every method alike instead of on whichever ran at the time.
    make = PromptMaker(next(iter(engines.values())).tokenizer, offset=1000 * (1 + args.seed))
    prefill_s = {name: [] for name in engines}
    decode = {name: [] for name in engines}
    for rnd in range(args.repeats + 1):
        log(f"speed round {rnd} of {args.repeats} (0: warm-up)")
        long_prompt, short_prompt = make(args.prefill_len), make(32)
        for name, llm in engines.items():
            dt, _ = ember_time(llm, long_prompt, 1)
            t1, _ = ember_time(llm, short_prompt, 1)
            tn, _ = ember_time(llm, short_prompt, args.new_tokens)
            if rnd:
                prefill_s[name].append(dt)
                decode[name].append((args.new_tokens - 1) / max(tn - t1, 1e-9))
    for entry in results["results"]:
        name = entry["method"]
        entry.update(prefill_tok_s=args.prefill_len / median(prefill_s[name]), decode_tok_s=median(decode[name]),
                     decode_tok_s_all=decode[name], prefill_s_all=prefill_s[name])
    base = next((r for r in results["results"] if r["method"] == "int4"), None)
    for r in results["results"]:
        rows.append({"method": r["method"], "ppl": r["perplexity"], "decode tok/s": r["decode_tok_s"],
                     "x int4": r["decode_tok_s"] / base["decode_tok_s"] if base else float("nan"),
                     "prefill tok/s": r["prefill_tok_s"],
                     "x int4 ": r["prefill_tok_s"] / base["prefill_tok_s"] if base else float("nan"),
                     "weights MiB": r["weight_bytes_loaded"] / 2 ** 20, "uJ/token": r["energy_uj_per_token"],
                     "NMSE q": _sci(r.get("nmse_vs_same_quantized_weights")),
                     "NMSE f": _sci(r.get("nmse_vs_float_weights"))})
    print_table(rows, title=f"low-bit linears, {threads} threads, fp32 activations, median of {args.repeats} "
                            f"(ppl over {args.ppl_tokens} tokens)")
    write_json(args.output, results)


if __name__ == "__main__":
    main()
