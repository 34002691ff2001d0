"""`ember eval kv` arguments and command."""

from __future__ import annotations

import dataclasses
import json


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def add_kv_eval_parser(esub) -> None:
    from ember.cli_args import add_engine_args

    e = esub.add_parser(
        "kv", help="KV cache methods: continuation perplexity, passkey retrieval, memory",
        description="Each KV method (a --kv-cache-dtype, a press NAME:RATIO, or CODEC+PRESS:RATIO) runs "
                    "through the serving engine: the first --context tokens of each window are the prompt "
                    "(pressed once in the cache), the next --continuation tokens are scored one decode step "
                    "at a time; passkey prompts are answered greedily. Writes JSON, and a PNG with --plot.")
    e.add_argument("--methods", default="auto,int8,kivi4,kivi2,streaming:0.5,knorm:0.5,snapkv:0.5,tova:0.5",
                   help="comma-separated KV methods, e.g. auto,kivi4,snapkv:0.75,kivi4+snapkv:0.5")
    e.add_argument("--text", default=None, help="a UTF-8 text file (default: pydoc_data.topics)")
    e.add_argument("--context", type=int, default=1024, help="prompt tokens per window (default: 1024)")
    e.add_argument("--continuation", type=int, default=128, help="tokens scored after the prompt (default: 128)")
    e.add_argument("--windows", type=int, default=4, help="windows, run as one batch (default: 4)")
    e.add_argument("--passkey-lengths", default="1024,2048",
                   help="passkey prompt lengths in tokens, comma-separated; empty: skip retrieval")
    e.add_argument("--passkey-depths", default="0,0.25,0.5,0.75,1", help="where the key sits (0: first, 1: last)")
    e.add_argument("--passkey-per-cell", type=int, default=2, help="prompts per length and depth (default: 2)")
    e.add_argument("--output", default=None, help="write the results as JSON to this file")
    e.add_argument("--plot", default=None, help="write perplexity and accuracy against compression as a PNG")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_args(e)
    e.set_defaults(func=cmd_eval_kv)


def cmd_eval_kv(args) -> int:
    from ember.cli_args import engine_config
    from ember.eval.kv.methods import KVMethod
    from ember.eval.kv.plot import plot_kv_eval
    from ember.eval.kv.run import run_kv_eval
    from ember.eval.perplexity import load_eval_text
    from ember.loader import dtype_name, load_model

    methods = [KVMethod.parse(m) for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods: name at least one KV method")
    for name in ("context", "continuation", "windows", "passkey_per_cell"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.continuation < 2:  # the memory figure reads the blocks a sequence holds at its second token
        raise ValueError(f"--continuation must be at least 2 (the bytes held are read once the press has run, "
                         f"at the second scored token), got {args.continuation}")
    lengths, depths = _ints(args.passkey_lengths), _floats(args.passkey_depths)
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"--passkey-depths must lie in [0, 1], got {args.passkey_depths!r}")
    cfg = engine_config(args)
    text = load_eval_text(args.text)
    cfg.apply_threads()
    loaded = load_model(cfg.model, cfg.dtype, cfg.linear, cfg.attention, progress=not args.json,
                        quantizer=cfg.quantizer, calibration_tokens=cfg.calibration_tokens)
    cfg = dataclasses.replace(cfg, linear=loaded.linear, dtype=dtype_name(loaded.model.dtype))  # `auto` resolved
    longest = max([args.context + args.continuation] + lengths)
    config = {k: getattr(cfg, k) for k in ("dtype", "linear", "attention", "fused_decode", "threads", "block_size",
                                           "max_num_batched_tokens", "seed")}
    config.update(max_model_len=longest + 16, max_num_seqs=max(args.windows, 16),
                  kv_cache_memory=cfg.kv_cache_memory, kv_cache_tokens=cfg.kv_cache_tokens)
    result = run_kv_eval(loaded, config, methods, text, context=args.context, continuation=args.continuation,
                         windows=args.windows, passkey_lengths=lengths, passkey_depths=depths,
                         passkey_per_cell=args.passkey_per_cell, progress=not args.json)
    result.update(model=loaded.path, dtype=cfg.dtype, linear=cfg.linear, text=args.text or "pydoc_data.topics")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        plot_kv_eval(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    lines = [f"{'method':24s} {'ppl':>8s} {'bytes/token':>12s} {'vs bf16':>8s} {'seqs fit':>9s} {'passkey':>8s}"]
    for r in result["results"]:
        pk = r.get("passkey", {}).get("accuracy")
        lines.append(f"{r['method']:24s} {r['perplexity']:8.3f} {r['bytes_per_context_token']:12.0f} "
                     f"{r['compression_vs_bf16']:7.2f}x {r['sequences_fit']:9d} {'' if pk is None else f'{pk:8.2f}'}")
    return "\n".join(lines)
