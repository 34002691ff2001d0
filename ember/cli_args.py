"""Flags shared by `ember`'s commands and `ember bench`: EngineConfig's fields and the sampling
options, and how parsed arguments become an EngineConfig and SamplingParams.

Apart from cli.py so that `ember/bench/` can use them without importing the command line
(cli.py imports bench/ to add its subcommands)."""

from __future__ import annotations

import argparse
import dataclasses

from ember.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser, overrides_only: bool = False) -> None:
    """Every EngineConfig field becomes a flag of the same name (`max_num_seqs` -> `--max-num-seqs`).
    `overrides_only`: flags not given stay out of the namespace (to override a recorded config)."""
    group = parser.add_argument_group("engine options")
    for f in dataclasses.fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = argparse.SUPPRESS if overrides_only else f.default
        if f.type in ("bool", bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{help_text} (default: {f.default})")
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            group.add_argument(flag, dest=f.name, type=kind, default=default,
                               metavar=f.name.upper(), help=f"{help_text} (default: {f.default})")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    return EngineConfig(**{k: v for k, v in vars(args).items() if k in names})


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens to generate (default: {max_tokens})")
    g.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default: 0.7)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0, off)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (default: 0, off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g = parser.add_argument_group("structured output (one of)")
    g.add_argument("--json-schema", default=None, metavar="SCHEMA",
                   help="hold the output to a JSON schema: its JSON text, or a file that holds it")
    g.add_argument("--json-object", action="store_true", help="the output is one JSON object")
    g.add_argument("--regex", default=None, help="the output matches this regex (Rust regex syntax), whole")
    g.add_argument("--choice", action="append", default=None, help="the output is one of these (repeatable)")
    g.add_argument("--grammar", default=None, metavar="FILE", help="a Lark or GBNF grammar file")


def structured_outputs(args):
    """StructuredOutputsParams from the flags above (None when none is given)."""
    import os

    from ember.structured import StructuredOutputsParams

    def text(value: str | None) -> str | None:
        if value is not None and os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                return f.read()
        return value

    kinds = {"json": text(getattr(args, "json_schema", None)), "json_object": getattr(args, "json_object", False),
             "regex": getattr(args, "regex", None), "choice": getattr(args, "choice", None),
             "grammar": text(getattr(args, "grammar", None))}
    kinds = {k: v for k, v in kinds.items() if v not in (None, False)}
    return StructuredOutputsParams(**kinds) if kinds else None


def sampling_params(args):
    from ember.sampling_params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          stop=args.stop, seed=args.seed,  # --seed makes the sampling reproducible
                          structured_outputs=structured_outputs(args))
