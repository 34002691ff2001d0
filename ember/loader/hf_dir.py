"""Read a Hugging Face model directory: config.json, *.safetensors and tokenizer.json."""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import torch

from ember.loader.errors import ModelLoadError
from ember.models.config import ModelConfig

LLAMA_FAMILY = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "llama"}


def read_config(path: str) -> ModelConfig:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelLoadError(f"no config.json in model directory {path}")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path} is not valid JSON: {exc}") from exc
    archs = cfg.get("architectures") or []
    arch = next((LLAMA_FAMILY[a] for a in archs if a in LLAMA_FAMILY), None)
    if arch is None:
        raise ModelLoadError(f"unknown architecture {archs} in {cfg_path}; supported: {sorted(LLAMA_FAMILY)}")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if cfg.get(k) is None]
    if missing:
        raise ModelLoadError(f"{cfg_path} lacks {', '.join(missing)}")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    rope_scaling = cfg.get("rope_scaling")
    rope_theta = cfg.get("rope_theta")
    rope_params = cfg.get("rope_parameters")  # transformers 5 moved theta and scaling here
    if isinstance(rope_params, dict):
        rope_theta = rope_params.get("rope_theta", rope_theta)
        if rope_params.get("rope_type", "default") != "default":
            rope_scaling = rope_params
    return ModelConfig(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta or 10000.0),
        rope_scaling=rope_scaling,
        max_position=int(cfg.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        name=os.path.basename(os.path.normpath(path)),
    )


def iter_weights(path: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in model directory {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                # HF names start with "model."; the output head does not.
                yield name.removeprefix("model."), f.get_tensor(name).to(dtype)
