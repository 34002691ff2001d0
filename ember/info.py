"""`ember info`: what a model is and what it costs, read from its file without running it."""

from __future__ import annotations

import dataclasses
import os

import torch

from ember.config import EngineConfig
from ember.kernels import native
from ember.kv.spec import kv_cache_spec
from ember.loader import describe_model, resolve_model_path
from ember.loader.auto import resolve_auto


SCRATCH_HINT_SHARE = 0.25  # above this share of the cache, `ember info` says how to shrink the pool


def model_info(cfg: EngineConfig, energy: bool = False) -> dict:
    path = resolve_model_path(cfg.model)
    mc, fmt, stored = describe_model(path)
    resolved = resolve_auto(cfg.linear, cfg.dtype, fmt, stored)
    cfg = dataclasses.replace(cfg, linear=resolved.linear, dtype=resolved.dtype)
    dtype = cfg.torch_dtype
    spec = kv_cache_spec(cfg, mc)
    params = mc.num_parameters()
    file_bytes = os.path.getsize(path) if os.path.isfile(path) else sum(
        os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    info = {
        "model": path,
        "format": fmt,
        "name": mc.name,
        "architecture": mc.architecture,
        "parameters": params,
        "layers": mc.num_layers,
        "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size,
        "heads": mc.num_heads,
        "kv_heads": mc.num_kv_heads,
        "head_dim": mc.head_dim,
        "vocab_size": mc.vocab_size,
        "context_length": mc.max_position,
        "rope_theta": mc.rope_theta,
        "tied_embeddings": mc.tie_embeddings,
        "layer_shapes": {
            "qkv_proj": [mc.q_size + 2 * mc.kv_size, mc.hidden_size],
            "o_proj": [mc.hidden_size, mc.q_size],
            "gate_up_proj": [2 * mc.intermediate_size, mc.hidden_size],
            "down_proj": [mc.hidden_size, mc.intermediate_size],
            "embedding": [mc.vocab_size, mc.hidden_size],
        },
        "file_bytes": file_bytes,
        "dtype": cfg.dtype,
        "linear": cfg.linear,
        "auto": list(resolved.notes),
        "weight_bytes_loaded": _loaded_weight_bytes(mc, cfg.linear, dtype),
        "kv_cache_dtype": cfg.kv_cache_dtype,
        "kv_bytes_per_token": spec.bytes_per_token,  # the blocks alone
        "kv_scratch_slots": spec.num_scratch,  # a codec's pool for open blocks (KIVI's residual)
        "kv_scratch_bytes": spec.scratch_bytes,
        "kv_bytes_per_token_held": round(spec.bytes_per_token_held, 1),  # kv_cache_bytes / kv_cache_tokens
        "kv_cache_blocks": spec.num_blocks,
        "kv_cache_tokens": spec.num_tokens,
        "kv_cache_bytes": spec.total_bytes,
        "max_num_seqs": spec.max_num_seqs,  # --max-num-seqs, or what the scratch pool caps it to
        "kv_seqs_note": spec.seqs_note(cfg),
        "c_kernels": native.describe(),
    }
    if energy:
        info["energy"] = _energy(mc, cfg)
    return info


def _loaded_weight_bytes(mc, linear: str, dtype: torch.dtype) -> int | None:
    """What the loaded model will hold (LlamaForCausalLM.weight_bytes), from each LinearMethod's
    packed_bytes: the float embedding and norms, the projections, and the output head in the
    method the body names for it; None when a method can't say."""
    from ember.kernels.linear import get_linear_method

    method = get_linear_method(linear)
    head = get_linear_method(method.head_method or "dense")
    elem = torch.empty((), dtype=dtype).element_size()
    shapes = [(mc.q_size + 2 * mc.kv_size, mc.hidden_size), (mc.hidden_size, mc.q_size),
              (2 * mc.intermediate_size, mc.hidden_size), (mc.hidden_size, mc.intermediate_size)]
    parts = [method.packed_bytes(o, i, dtype) for o, i in shapes]
    head_bytes = 0 if mc.tie_embeddings and head.name == "dense" else head.packed_bytes(mc.vocab_size, mc.hidden_size, dtype)
    if None in parts or head_bytes is None:
        return None
    bias = (mc.q_size + 2 * mc.kv_size) * elem if mc.extra.get("qkv_bias") else 0
    per_layer = sum(parts) + bias + 2 * mc.hidden_size * elem  # + the two norms
    return (mc.vocab_size + 1) * mc.hidden_size * elem + mc.num_layers * per_layer + head_bytes


def _energy(mc, cfg: EngineConfig, context_len: int = 1024) -> dict:
    """Estimated energy per generated token at `context_len`: an op-count model, not a measurement."""
    from ember.numerics.energy import DecoderShape, estimate_decode_energy, format_report

    shape = DecoderShape(hidden=mc.hidden_size, intermediate=mc.intermediate_size, n_layers=mc.num_layers,
                         n_heads=mc.num_heads, n_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim,
                         vocab=mc.vocab_size, tied_embeddings=mc.tie_embeddings)
    from ember.kernels.linear import get_linear_method

    stored = {"fp32": "fp32", "bf16": "bf16"}[cfg.dtype]
    linear = "lmul" if cfg.linear == "lmul" else "dense"
    # A method with its own op-count model (the lookup-table ones) says how to price it.
    model = {"linear": linear, "weight_dtype": stored} | (get_linear_method(cfg.linear).energy_model() or {})
    estimate = estimate_decode_energy(shape, kv_dtype=stored, context_len=context_len, **model)
    data = estimate.as_dict()
    data["report"] = format_report(estimate)
    return data


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:g} B"
        n /= 1024
    return str(n)


def format_info(info: dict) -> str:
    lines = [
        f"model         {info['model']} ({info['format']})",
        f"name          {info['name']}",
        f"architecture  {info['architecture']}: {info['layers']} layers, hidden {info['hidden_size']}, "
        f"intermediate {info['intermediate_size']}",
        f"attention     {info['heads']} heads, {info['kv_heads']} KV heads, head_dim {info['head_dim']}, "
        f"rope theta {info['rope_theta']:g}",
        f"vocabulary    {info['vocab_size']} (embeddings {'tied' if info['tied_embeddings'] else 'untied'})",
        f"context       {info['context_length']} tokens",
        f"parameters    {info['parameters']:,} ({info['parameters'] / 1e6:.1f} M)",
        f"file size     {_size(info['file_bytes'])}",
    ]
    if info["weight_bytes_loaded"] is not None:
        lines.append(f"weights       {_size(info['weight_bytes_loaded'])} once loaded (linear {info['linear']}, "
                     f"dtype {info['dtype']})")
    lines.extend(f"auto          {note}" for note in info["auto"])
    lines.append("layer shapes  " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in info["layer_shapes"].items()))
    kv_dtype = info["kv_cache_dtype"] if info["kv_cache_dtype"] != "auto" else info["dtype"]
    lines.append(f"KV per token  {_size(info['kv_bytes_per_token'])} in {kv_dtype} (scales included; "
                 f"{info['kv_bytes_per_token_held']:,.0f} B counting the scratch pool)"
                 if info["kv_scratch_slots"] else
                 f"KV per token  {_size(info['kv_bytes_per_token'])} in {kv_dtype} (scales included)")
    scratch = (f", of which {_size(info['kv_scratch_bytes'])} scratch: {info['kv_scratch_slots']} slots a layer for "
               "open blocks" if info["kv_scratch_slots"] else "")
    lines.append(f"KV cache      {info['kv_cache_tokens']:,} tokens in {info['kv_cache_blocks']} blocks "
                 f"({_size(info['kv_cache_bytes'])}{scratch})")
    if info["kv_scratch_bytes"] > SCRATCH_HINT_SHARE * info["kv_cache_bytes"]:
        lines.append(f"hint          the scratch pool has a slot per running sequence (--max-num-seqs "
                     f"{info['max_num_seqs']}) and takes {info['kv_scratch_bytes'] / info['kv_cache_bytes']:.0%} "
                     "of this cache: a lower --max-num-seqs leaves more of it to blocks")
    if info["kv_seqs_note"]:
        lines.append(f"note          {info['kv_seqs_note']}")
    lines.append(f"C kernels     {info['c_kernels']}")
    if "energy" in info:
        lines.append(info["energy"]["report"])
    return "\n".join(lines)
