"""`ember` command line: serve | generate | chat | info | eval ppl | eval kv | bench | sim."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ember.cli_args import add_engine_args, add_sampling_args, engine_config, sampling_params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Ember: a readable, efficient LLM inference engine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                       description="Serve the model over an OpenAI-compatible HTTP API "
                                   "(/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics).")
    from ember.serve.server import add_server_args
    add_server_args(p)
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="generate a continuation of one prompt, streamed to stdout",
                       description="Generate from one prompt and stream the text to stdout.")
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="wrap the prompt as one user message in the chat template (default when the model has one)")
    mode.add_argument("--raw", dest="chat", action="store_false", help="use the prompt text as is")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    add_sampling_args(p, max_tokens=256)
    add_engine_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat in the terminal",
                       description="Chat with the model. Commands: /reset clears the history, /quit exits.")
    p.add_argument("--system", default=None, help="system message")
    add_sampling_args(p, max_tokens=512)
    add_engine_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="model architecture, sizes and KV-cache capacity",
                       description="Print the model's architecture, parameter count, layer shapes and memory.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--energy", action="store_true", help="add an op-count energy estimate per generated token")
    add_engine_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="evaluations (ppl, kv)", description="Evaluations.")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    esub.required = True
    e = esub.add_parser("ppl", help="perplexity over non-overlapping windows",
                        description="Perplexity over non-overlapping windows of a text, each run without cache. "
                                    "The default text is the English documentation every Python carries "
                                    "(pydoc_data.topics).")
    e.add_argument("--text", default=None, help="a UTF-8 text file (default: pydoc_data.topics)")
    e.add_argument("--context", type=int, default=512, help="window length in tokens (default: 512)")
    e.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens of the text")
    e.add_argument("--score", choices=["all", "second-half"], default="all",
                   help="score every prediction, or only the second half of each window as llama.cpp does")
    e.add_argument("--windows-per-batch", type=int, default=4, help="windows per forward pass (default: 4)")
    e.add_argument("--decode", action="store_true",
                   help="teacher-forced decode: feed each window one token per step through the KV cache, "
                        "as generation runs (the decode kernels' perplexity; slower)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_args(e)
    e.set_defaults(func=cmd_eval_ppl)
    from ember.eval.kv.cli import add_kv_eval_parser
    add_kv_eval_parser(esub)
    from ember.bench.cli import add_bench_parser
    add_bench_parser(sub)
    from ember.sim.cli import add_sim_parser
    add_sim_parser(sub)
    return parser


# --- commands ---------------------------------------------------------------------------------
def _llm(args, progress: bool = True):
    from ember.llm import LLM

    cfg = engine_config(args)
    return LLM(progress=progress, **dataclasses.asdict(cfg))


def cmd_serve(args) -> int:
    from ember.serve.server import serve, server_config

    return serve(engine_config(args), server_config(args))


def cmd_generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = sampling_params(args)
    llm = _llm(args)
    use_chat = args.chat if args.chat is not None else bool(llm.tokenizer.chat_template)
    if use_chat:
        if not llm.tokenizer.chat_template:
            raise SystemExit("error: --chat: this model has no chat template; use --raw")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": prompt}]
        source = {"prompt_token_ids": llm.encode_chat(messages)}
    else:
        source = prompt
    for piece in llm.stream(source, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    llm = _llm(args)
    if not llm.tokenizer.chat_template:
        raise SystemExit("error: this model has no chat template; use `ember generate --raw`")
    params = sampling_params(args)
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    interactive = sys.stdin.isatty()
    print("Chat with the model. /reset clears the history, /quit or Ctrl-D exits.", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = list(base)
            continue
        history.append({"role": "user", "content": line})
        ids = llm.encode_chat(history)
        if len(ids) + 1 >= llm.engine.max_model_len:
            print(f"[the conversation is {len(ids)} tokens, over the {llm.engine.max_model_len}-token limit; "
                  "use /reset]", file=sys.stderr)
            history.pop()
            continue
        reply = []
        try:
            for piece in llm.stream({"prompt_token_ids": ids}, params):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # stop this reply, keep the chat
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_info(args) -> int:
    from ember.info import model_info

    info = model_info(engine_config(args), energy=args.energy)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        from ember.info import format_info
        print(format_info(info))
    return 0


def cmd_eval_ppl(args) -> int:
    from ember.eval.perplexity import evaluate_perplexity, load_eval_text
    from ember.loader import dtype_name, load_model

    cfg = engine_config(args)
    text = load_eval_text(args.text)
    cfg.apply_threads()
    lm = load_model(cfg.model, cfg.dtype, cfg.linear, cfg.attention, progress=not args.json,
                    quantizer=cfg.quantizer, calibration_tokens=cfg.calibration_tokens)
    cfg = dataclasses.replace(cfg, linear=lm.linear, dtype=dtype_name(lm.model.dtype))  # `auto` resolved
    if not args.json:
        for note in lm.auto_notes:
            print(note, file=sys.stderr)
    result = evaluate_perplexity(lm.model, lm.tokenizer, text, context=args.context, max_tokens=args.max_tokens,
                                 score=args.score, windows_per_batch=args.windows_per_batch, progress=not args.json,
                                 decode=args.decode, fused_decode=cfg.fused_decode != "off",
                                 kv_cache_dtype=cfg.kv_cache_dtype)
    data = result.to_json()
    data.update(model=lm.path, dtype=cfg.dtype, linear=cfg.linear, kv_cache_dtype=cfg.kv_cache_dtype, text=args.text or "pydoc_data.topics",
                mode="decode" if args.decode else "prefill")
    if args.json:
        print(json.dumps(data))
    else:
        print(f"perplexity {result.perplexity:.4f} over {result.tokens_scored} tokens scored "
              f"({result.windows} windows of {args.context}, score={args.score}, linear={cfg.linear}, dtype={cfg.dtype}, "
              f"{'' if cfg.kv_cache_dtype == 'auto' else f'kv {cfg.kv_cache_dtype}, '}"
              f"{'decode, ' if args.decode else ''}"
              f"{result.seconds:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ember.loader.errors import ModelLoadError

    try:
        return args.func(args)
    except (ValueError, ModelLoadError) as exc:  # bad values and bad files: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
