"""Read a GGUF file: metadata, model shape and tensors, dequantized with the `gguf` package.

Weights come out in Hugging Face naming and layout (`[out, in]`), with llama.cpp's
Q/K row permutation undone, so one model definition serves GGUF and safetensors alike.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch

from ember.kernels.linear.ggml_blocks import BLOCK_BYTES, GGMLBlocks
from ember.loader.errors import ModelLoadError
from ember.models.config import ModelConfig

# Types `gguf.quants.dequantize` handles that we test and promise; others may work too.
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K",
                   "TQ1_0", "TQ2_0"}

# Architectures whose GGUF conversion permuted Q and K rows for llama.cpp's interleaved RoPE.
PERMUTED_QK_ARCHS = {"llama", "mistral"}
LLAMA_FAMILY = {"llama", "mistral", "qwen2"}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `layers.3.self_attn.q_proj.weight`; None for tensors we do not use."""
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, idx, part = base.split(".", 2)
        if part in _LAYER_NAMES:
            return f"layers.{idx}.{_LAYER_NAMES[part]}.{suffix}"
        return None
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    return None


def unpermute_qk(weight: torch.Tensor | GGMLBlocks, n_heads: int) -> torch.Tensor | GGMLBlocks:
    """Undo llama.cpp's convert-time permutation (pairs interleaved -> two halves per head).
    It only reorders rows, so raw quantized blocks are reordered as they are."""
    out = weight.shape[0]
    order = torch.arange(out).reshape(n_heads, out // n_heads // 2, 2).transpose(1, 2).reshape(out)
    return weight.permute_rows(order) if isinstance(weight, GGMLBlocks) else weight[order]


class GGUFFile:
    """A GGUF file opened by memory map (gguf_reader.py). `metadata` holds every key with Python values."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelLoadError(f"GGUF file not found: {path}")
        from ember.loader.gguf_reader import read_gguf

        try:
            self.metadata, self._tensors = read_gguf(path)
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"not a readable GGUF file: {path} ({exc})") from exc
        self.path = path

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def _arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def model_config(self) -> ModelConfig:
        arch = self.architecture
        if arch not in LLAMA_FAMILY:
            raise ModelLoadError(
                f"unknown architecture {arch!r} in {self.path}; supported: {sorted(LLAMA_FAMILY)}"
            )
        missing = [f"{arch}.{k}" for k in ("embedding_length", "attention.head_count", "feed_forward_length",
                                           "block_count") if self._arch_key(k) is None]
        if missing:
            raise ModelLoadError(f"GGUF metadata in {self.path} lacks {', '.join(missing)}")
        hidden = int(self._arch_key("embedding_length"))
        n_heads = int(self._arch_key("attention.head_count"))
        n_kv = int(self._arch_key("attention.head_count_kv", n_heads))
        head_dim = int(self._arch_key("attention.key_length", hidden // n_heads))
        vocab = self._arch_key("vocab_size")
        if vocab is None:
            vocab = len(self.metadata.get("tokenizer.ggml.tokens", []))
        rope_scaling = None
        scaling_type = self._arch_key("rope.scaling.type")
        if scaling_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": float(self._arch_key("rope.scaling.factor"))}
        elif scaling_type not in (None, "none"):
            raise ModelLoadError(f"unsupported rope scaling {scaling_type!r} in {self.path}")
        if "rope_freqs.weight" in self._tensors:
            # llama3-style scaling ships as per-frequency divisors; the model applies them directly.
            rope_scaling = {"rope_type": "freq_factors"}
        return ModelConfig(
            architecture="llama",
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(self._arch_key("feed_forward_length")),
            num_layers=int(self._arch_key("block_count")),
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            rms_norm_eps=float(self._arch_key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(self._arch_key("rope.freq_base", 10000.0)),
            rope_scaling=rope_scaling,
            max_position=int(self._arch_key("context_length", 2048)),
            tie_embeddings="output.weight" not in self._tensors,
            name=str(self.metadata.get("general.name", os.path.basename(self.path))),
            extra={"qkv_bias": "blk.0.attn_q.bias" in self._tensors},
        )

    def tensor_type(self, name: str) -> str:
        return self._tensors[name].tensor_type.name

    def projection_types(self) -> set[str]:
        """The storage types of the layers' projections (attention and MLP), e.g. {"Q4_1"}."""
        return {self.tensor_type(n) for n in self._tensors if (hf_name(n) or "").endswith("proj.weight")}

    def raw(self, name: str):
        """The GGUFTensor (gguf_reader.py), for kernels that repack quantized blocks without going through float."""
        return self._tensors[name]

    def dequantize(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        tensor = self._tensors[name]
        qtype = tensor.tensor_type.name
        if qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"tensor {name} in {self.path} has quantization type {qtype}, which Ember does not "
                f"support; supported: {sorted(SUPPORTED_TYPES)}"
            )
        if qtype in BLOCK_BYTES and len(tensor.shape) == 2:  # in torch: ~10x the `gguf` package's numpy
            return self.blocks(name).dequantize(torch.float32).to(dtype)
        import gguf

        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims innermost first
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        if not values.flags.writeable:  # a view of the read-only memory map (F32 tensors): copy it
            values = values.copy()
        return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)

    def blocks(self, name: str) -> GGMLBlocks:
        """A Q4_0/Q4_1/Q8_0 tensor's raw blocks, copied out of the memory map (no float step)."""
        tensor = self._tensors[name]
        cols = int(tensor.shape[0])  # GGUF lists dims innermost first
        data = np.array(tensor.data, dtype=np.uint8, copy=True).reshape(-1, cols // 32 * BLOCK_BYTES[tensor.tensor_type.name])
        return GGMLBlocks(tensor.tensor_type.name, torch.from_numpy(data), cols)

    def weights(self, config: ModelConfig, dtype: torch.dtype,
                keep_blocks: bool = False) -> Iterator[tuple[str, torch.Tensor | GGMLBlocks]]:
        """(hf_name, tensor) pairs for every tensor the model uses, Q/K unpermuted. With
        `keep_blocks`, projections stored as Q4_0/Q4_1/Q8_0 come as their raw GGMLBlocks, for
        the LinearMethods to repack (LinearMethod.pack_quantized); the rest come dequantized."""
        permuted = self.architecture in PERMUTED_QK_ARCHS
        for name in self._tensors:
            target = hf_name(name)
            if target is None:
                continue
            raw = (keep_blocks and self.tensor_type(name) in BLOCK_BYTES
                   and (target.endswith("proj.weight") or target == "lm_head.weight"))
            weight = self.blocks(name) if raw else self.dequantize(name, torch.float32)
            if permuted and target.endswith("q_proj.weight"):
                weight = unpermute_qk(weight, config.num_heads)
            elif permuted and target.endswith("k_proj.weight"):
                weight = unpermute_qk(weight, config.num_kv_heads)
            yield target, weight if raw else weight.to(dtype)
        if "rope_freqs.weight" in self._tensors:
            yield "rope_freqs", self.dequantize("rope_freqs.weight", torch.float32)

    def num_tensors(self) -> int:
        return sum(1 for n in self._tensors if hf_name(n) is not None)
