"""The forward step of LlamaForCausalLM as one C call (csrc/llama_decode.c).

A step's whole layer stack runs inside one OpenMP region: no Python, no torch dispatch per
op, threads forked once per step. Decode steps always fit; prefill chunks (alone or mixed
with decodes) come too when every projection's kernel is the fast one at large batches
(`takes_prefill`: int4, and bf16 on CPUs without native bf16 GEMMs), since otherwise torch's GEMM on the PyTorch path beats the C
kernels there. It reads the same packed weights as the PyTorch path (each projection's
LinearMethod describes its storage with `native_weight`) and writes the same paged KV cache,
so steps of either path can follow each other freely. The model's own forward with the
`torch` attention backend is its reference (tests/models/test_native_decode.py).
"""

from __future__ import annotations

import ctypes

import torch

from ember.kernels import native
from ember.kernels.attention import AttentionBackend, AttentionMetadata


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", native.Weight), ("o", native.Weight), ("gate_up", native.Weight), ("down", native.Weight),
                ("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("kv", native.KVLayer)]


class _Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim",
                                                     "intermediate")] + \
               [("eps", ctypes.c_double), ("scale", ctypes.c_double), ("embed", ctypes.c_void_p),
                ("final_norm", ctypes.c_void_p), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
                ("layers", ctypes.POINTER(_Layer)), ("phase_seconds", ctypes.c_void_p),
                ("embed_bf16", ctypes.c_int64), ("kv", native.KVLayout)]


_STRUCTS = {"ember_model": _Model, "ember_layer": _Layer, "ember_weight": native.Weight,
            "ember_kv_layout": native.KVLayout, "ember_kv_layer": native.KVLayer}


class NativeDecoder:
    """Callable (input_ids, positions, meta) -> final hidden states [M, hidden], for decode
    batches and, where `takes_prefill`, any batch over the paged cache. Raises
    native.NativeUnavailable at construction when it can't run this model."""

    def __init__(self, model, kv_cache, attention: AttentionBackend):
        cfg = model.cfg
        self._refuse_unless(model.dtype in (torch.float32, torch.bfloat16),
                            f"it runs fp32 and bf16 models only (this one is {model.dtype})")
        self._refuse_unless(getattr(attention, "plain_softmax", False),
                            f"the {attention.name!r} attention backend is not plain softmax attention")
        self._refuse_unless(kv_cache is not None, "it runs over a paged KV cache")
        self._refuse_unless(cfg.hidden_size % 32 == 0 and cfg.intermediate_size % 32 == 0 and cfg.head_dim % 32 == 0
                            and cfg.num_heads % cfg.num_kv_heads == 0, "the model's sizes don't fit its kernels")
        lib = native.load("llama_decode")
        self._refuse_unless(lib is not None, "the C kernels can't be built here (no C compiler or no AVX2)")
        abi = native.check_abi(lib, "ember_llama_decode_abi", _STRUCTS)
        codec = kv_cache.codec
        self._refuse_unless(codec.native_kind in abi["kv_kinds"],
                            f"it can't read the {codec.name!r} KV cache layout")
        self._refuse_unless(all(t.is_contiguous() for layer in kv_cache.layers for t in layer.values()),
                            "it needs a contiguous KV cache")
        self._refuse_unless(not codec.needs_positions or all("xq_to_latent" in layer for layer in kv_cache.layers),
                            f"the {codec.name!r} KV cache is not bound to the model (PagedKVCache.bind_model)")
        self._lib, self.cfg, self._model = lib, cfg, model
        # Small tables the C code reads as fp32 (norm weights, RoPE): widened copies for bf16.
        f32 = lambda t: t if t.dtype == torch.float32 else t.float()  # noqa: E731
        self._norms = [(f32(layer.input_norm), f32(layer.post_attention_norm)) for layer in model.layers]
        self._tables = (f32(model.norm), f32(model.cos), f32(model.sin))
        layers = (_Layer * cfg.num_layers)()
        for i, layer in enumerate(model.layers):
            ws = []
            for part in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                lin = getattr(layer, part)
                w = lin.method.native_weight(lin.params)
                self._refuse_unless(w is not None, f"linear method {lin.method.name!r} has no C kernel for this weight")
                ws.append(w)
            layers[i] = _Layer(*ws, self._norms[i][0].data_ptr(), self._norms[i][1].data_ptr(),
                               native.kv_layer(kv_cache.layers[i]))
        self._layers = layers  # the structs point into model and cache tensors, which outlive self
        self._kv_cache, self._kv_version = kv_cache, kv_cache.scratch_version
        # XQuant computes every entry's K again for each query token that reads it: a prefill
        # chunk's tokens would each redo their whole context (work quadratic in the chunk), where
        # the PyTorch path decodes a layer's entries once per chunk.
        self.takes_prefill = not codec.needs_positions and all(
            lin.method.kernel_takes_large_batches(lin.params) for layer in model.layers
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj))
        self._kv_layout, self._fp8_table = native.kv_layout(codec, abi["kv_kinds"])
        self._desc = _Model(cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            cfg.intermediate_size, cfg.rms_norm_eps, cfg.head_dim ** -0.5,
                            model.embed.data_ptr(), *(t.data_ptr() for t in self._tables), layers, None,
                            model.embed.dtype == torch.bfloat16, self._kv_layout)
        self._work_per_row = 2 * cfg.hidden_size + cfg.q_size + 2 * cfg.kv_size + cfg.q_size + 3 * cfg.intermediate_size
        self._work = torch.empty(0)
        self.phase_seconds: torch.Tensor | None = None

    PHASES = ("linear projections", "attention and KV write", "norms, SiLU, embedding")

    def time_phases(self, on: bool = True) -> None:
        """Accumulate wall seconds per phase (PHASES) into `phase_seconds` [3] from now on, for
        step-time breakdowns; each phase's share includes the barrier that closes it."""
        self.phase_seconds = torch.zeros(3, dtype=torch.float64) if on else None
        self._desc.phase_seconds = self.phase_seconds.data_ptr() if on else None

    @staticmethod
    def _refuse_unless(ok: bool, why: str) -> None:
        if not ok:
            raise native.NativeUnavailable(why)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        m = input_ids.shape[0]
        if m != sum(meta.query_lens) or meta.block_tables is None:
            raise ValueError("the fused step takes a batch over the paged cache, one row per new token")
        if m and int(positions.max()) >= self.cfg.max_position:
            raise ValueError(f"position {int(positions.max())} is beyond the model's context of {self.cfg.max_position}")
        if self._work.numel() < m * self._work_per_row:
            self._work = torch.empty(m * self._work_per_row)
        out = torch.empty(m, self.cfg.hidden_size)
        tables = meta.block_tables.contiguous()
        ctx = torch.tensor(meta.context_lens, dtype=torch.int64)
        if meta.is_decode_only:
            seq = torch.arange(m)
        else:
            seq = torch.repeat_interleave(torch.arange(len(meta.query_lens)), torch.tensor(meta.query_lens))
        ids, pos, slots = input_ids.contiguous(), positions.contiguous(), meta.slot_mapping.contiguous()
        self._kv_cache.open(meta.slot_mapping)  # scratch slots for the blocks written (a codec's residual)
        if self._kv_cache.scratch_version != self._kv_version:  # the scratch pool grew: new pointers
            for i in range(self.cfg.num_layers):
                self._layers[i].kv = native.kv_layer(self._kv_cache.layers[i])
            self._kv_version = self._kv_cache.scratch_version
        p = ctypes.c_void_p
        self._lib.ember_llama_decode(ctypes.byref(self._desc), ctypes.c_long(m), p(ids.data_ptr()), p(pos.data_ptr()),
                                     p(slots.data_ptr()), p(seq.data_ptr()), ctypes.c_long(len(meta.query_lens)),
                                     p(tables.data_ptr()), ctypes.c_long(tables.shape[1]),
                                     p(ctx.data_ptr()), p(out.data_ptr()), p(self._work.data_ptr()),
                                     ctypes.c_int(torch.get_num_threads()))
        return out.to(self._model.dtype)
