"""The Llama family (Llama, SmolLM, Mistral, Qwen2) in plain PyTorch over a flat varlen batch.

Projections go through a LinearMethod and attention through an AttentionBackend: this file
never knows which technique is active. Q/K/V and gate/up are fused into one projection each
so a layer costs a few large matrix products rather than many small ones.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ember.kernels.attention import AttentionBackend, AttentionMetadata
from ember.kernels.linear import LinearMethod, get_linear_method
from ember.kernels.linear.ggml_blocks import GGMLBlocks, cat_rows
from ember.models.config import ModelConfig
from ember.models.rope import apply_rope, cos_sin_table, inverse_frequencies


class Linear(nn.Module):
    """A projection whose storage and product belong to its LinearMethod."""

    def __init__(self, method: LinearMethod):
        super().__init__()
        self.method = method
        self.params: dict[str, torch.Tensor] = {}

    def load(self, weight: torch.Tensor | GGMLBlocks, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.params = self.method.load(weight, bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(x, self.params)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Computed in fp32 and cast back before the weight, as the reference implementation does.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, method: LinearMethod):
        super().__init__()
        self.cfg, self.index = cfg, index
        self.qkv_proj, self.o_proj = Linear(method), Linear(method)
        self.gate_up_proj, self.down_proj = Linear(method), Linear(method)
        self.input_norm = nn.Parameter(torch.empty(0), requires_grad=False)
        self.post_attention_norm = nn.Parameter(torch.empty(0), requires_grad=False)
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache, attention: AttentionBackend):
        cfg = self.cfg
        h = rms_norm(x, self.input_norm, cfg.rms_norm_eps)
        qkv = self.qkv_proj(h)
        # Q and K heads side by side get their rotation in one pass (half the small ops).
        qk = apply_rope(qkv[:, :cfg.q_size + cfg.kv_size].view(-1, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim),
                        cos, sin)
        q, k = qk[:, :cfg.num_heads], qk[:, cfg.num_heads:]
        v = qkv[:, cfg.q_size + cfg.kv_size:].view(-1, cfg.num_kv_heads, cfg.head_dim)
        attn = attention.forward(self.index, q, k, v, meta, kv_cache, self.scale)
        x = x + self.o_proj(attn.reshape(-1, cfg.q_size))
        h = rms_norm(x, self.post_attention_norm, cfg.rms_norm_eps)
        gate, up = self.gate_up_proj(h).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, method: LinearMethod, backend: AttentionBackend,
                 dtype: torch.dtype = torch.float32, lm_head_method: LinearMethod | None = None):
        super().__init__()
        self.cfg, self.dtype = cfg, dtype
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, method) for i in range(cfg.num_layers))
        self.attention = backend  # the default; a caller may pass another per forward
        self.embed = nn.Parameter(torch.empty(0), requires_grad=False)
        self.norm = nn.Parameter(torch.empty(0), requires_grad=False)
        # The output head is the largest matrix; it keeps its own method (dense unless asked),
        # except that a quantized body method names the head precision it is validated with.
        if method.head_method is not None:
            lm_head_method = get_linear_method(method.head_method)
        self.lm_head = Linear(lm_head_method or method)
        self.cos = self.sin = torch.empty(0)

    # --- loading ------------------------------------------------------------------------------
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take Hugging Face-named tensors (float, or projections still in a GGUF's quantized
        blocks); fuse and pack them through the LinearMethods.

        Consumes `weights`: each tensor leaves the dict once packed, so the float copy of a
        quantized model shrinks layer by layer instead of peaking beside the packed one.
        Missing tensors and shapes the config does not expect raise ValueError (the loader
        turns it into its ModelLoadError)."""
        cfg, dt = self.cfg, self.dtype
        missing = [n for n in self._required_names() if n not in weights]
        if missing:
            raise ValueError(f"missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self._check_shape(weights, "embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))
        self.embed.data = weights["embed_tokens.weight"].to(dt)
        self.norm.data = weights["norm.weight"].to(dt)
        for i, layer in enumerate(self.layers):
            p = f"layers.{i}."
            w = lambda n: weights.pop(p + n + ".weight")  # noqa: E731
            b = lambda n: weights.pop(p + n + ".bias", None)  # noqa: E731
            self._check_shape(weights, p + "self_attn.q_proj.weight", (cfg.q_size, cfg.hidden_size))
            self._check_shape(weights, p + "self_attn.k_proj.weight", (cfg.kv_size, cfg.hidden_size))
            self._check_shape(weights, p + "mlp.gate_proj.weight", (cfg.intermediate_size, cfg.hidden_size))
            qkv = cat_rows([w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")])
            biases = [b("self_attn.q_proj"), b("self_attn.k_proj"), b("self_attn.v_proj")]
            qkv_bias = torch.cat(biases) if all(x is not None for x in biases) else None
            layer.qkv_proj.load(qkv, qkv_bias, dt)
            layer.o_proj.load(w("self_attn.o_proj"), None, dt)
            layer.gate_up_proj.load(cat_rows([w("mlp.gate_proj"), w("mlp.up_proj")]), None, dt)
            layer.down_proj.load(w("mlp.down_proj"), None, dt)
            layer.input_norm.data = w("input_layernorm").to(dt)
            layer.post_attention_norm.data = w("post_attention_layernorm").to(dt)
        head = self.embed.data if cfg.tie_embeddings else weights.pop("lm_head.weight")
        self.lm_head.load(head, None, dt)
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, weights.get("rope_freqs"))
        cos, sin = cos_sin_table(inv_freq, cfg.max_position)
        self.cos, self.sin = cos.to(dt), sin.to(dt)

    def _required_names(self) -> list[str]:
        names = ["embed_tokens.weight", "norm.weight"] + ([] if self.cfg.tie_embeddings else ["lm_head.weight"])
        parts = ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                 "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        return names + [f"layers.{i}.{p}.weight" for i in range(self.cfg.num_layers) for p in parts]

    @staticmethod
    def _check_shape(weights, name, shape):
        if tuple(weights[name].shape) != tuple(shape):
            raise ValueError(f"tensor {name} has shape {tuple(weights[name].shape)}, expected {tuple(shape)}")

    # --- running ------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache=None, attention: AttentionBackend | None = None) -> torch.Tensor:
        """Final hidden states [T, hidden] for a flat batch of T tokens."""
        attention = attention or self.attention
        if positions.numel() and int(positions.max()) >= self.cfg.max_position:
            raise ValueError(f"position {int(positions.max())} is beyond the model's context of {self.cfg.max_position}")
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.cos[positions], self.sin[positions]
        if meta.positions is None and meta.slot_mapping is not None:  # where the rows written sit
            meta = dataclasses.replace(meta, positions=positions)
        for layer in self.layers:
            x = layer(x, cos, sin, meta, kv_cache, attention)
        return rms_norm(x, self.norm, self.cfg.rms_norm_eps)

    def native_decoder(self, kv_cache, attention: AttentionBackend):
        """This model's decode step as one C call (models/llama_native.py), over `kv_cache`;
        raises kernels.native.NativeUnavailable with the reason when it can't run."""
        from ember.models.llama_native import NativeDecoder
        return NativeDecoder(self, kv_cache, attention)

    def blend_prefill(self, kv_cache, token_ids, block_ids, plan, ratio: float, check_layer: int = 1) -> int:
        """CacheBlend's prefill of plan's range from cached chunk KV (models/llama_blend.py)."""
        from ember.models.llama_blend import blend_prefill
        return blend_prefill(self, kv_cache, token_ids, block_ids, plan, ratio, check_layer)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [N, vocab] for the given hidden states."""
        return self.lm_head(hidden).float()

    def weight_bytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in (self.embed, self.norm))
        for layer in self.layers:
            total += layer.input_norm.numel() * layer.input_norm.element_size() * 2
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                total += lin.method.weight_bytes(lin.params)
        head = self.lm_head.params.get("weight")
        if not (self.cfg.tie_embeddings and head is not None and head.data_ptr() == self.embed.data_ptr()):
            total += self.lm_head.method.weight_bytes(self.lm_head.params)
        return total
