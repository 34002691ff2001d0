"""EngineConfig: every knob of Ember in one validated dataclass.

CLI flags map one to one onto fields (`--max-num-seqs` is `max_num_seqs`), and
`LLM(**kwargs)` takes the same names.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'2GiB' -> 2147483648; plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512MiB, 2GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class EngineConfig:
    model: str | None = field(default=None, metadata={"help": "GGUF file or Hugging Face model directory (default: SmolLM2-135M-Instruct)"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bf16 where this CPU has native bf16 arithmetic and the chosen linear method measured faster in it; fp32 elsewhere), fp32 or bf16"})
    linear: str = field(default="auto", metadata={"help": "LinearMethod for the projections: auto (from the file's storage: GGUF Q4_0/Q4_1 -> int4 kept as stored, Q8_0 and other quantized types -> int8, float weights -> dense), dense, int8, int4, tmac-w1..w4 (T-MAC lookup tables over 1-4 bit planes, round-to-nearest), bcq-w2..w4 (ShiftAddLLM binary coding on the same tables), bcq-w2-pow2..bcq-w4-pow2 (the same, every alpha a power of two: ShiftAddLLM's shifts), ternary (BitNet b1.58 absmean trits on the 2-bit lookup kernel), w4a4 (COMET: int4 weights, 4-bit activations with outlier groups on 8), lmul, lmul4 (every product an L-Mul on 7 or 4 mantissa bits, head included)"})
    quantizer: str = field(default="rtn", metadata={"help": "how tmac-w1..w4 and bcq-w2..w4 (and -pow2) quantize the weights: rtn (round-to-nearest, or BCQ's own fit, per group of 64), gptq (GPTQ, calibrated layer by layer on --calibration-tokens of the evaluation text's tail, which perplexity then never scores; takes minutes at load, progress on stderr), gptq-mse (the same, each tmac group's range searched for the least squared error, GPTQ's mse option)"})
    calibration_tokens: int = field(default=8192, metadata={"help": "gptq: calibration tokens (whole windows of 512) from the end of the evaluation text"})
    attention: str = field(default="batched", metadata={"help": "AttentionBackend: batched (fast), torch (reference), lmul2..lmul5"})
    fused_decode: str = field(default="auto", metadata={"help": "decode steps (and, with int4, prefill chunks) as one C call: auto (when the model, dtype, linear method and attention allow), on (fail if they don't), off (the PyTorch path)"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: all cores)"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block"})
    kv_cache_tokens: int = field(default=0, metadata={"help": "KV-cache capacity in tokens (0: from kv_cache_memory)"})
    kv_cache_memory: str = field(default="1GiB", metadata={"help": "KV-cache capacity in bytes, e.g. 512MiB, 2GiB"})
    kv_cache_dtype: str = field(default="auto", metadata={"help": "how KV blocks are stored: auto (the model dtype), fp32, bf16, fp8-e4m3, fp8-e5m2 (a scale per block and KV head), int8 (a scale per token and KV head), kivi4, kivi2 (KIVI: keys per channel over each block, values per token; the open block's keys in full precision, a scratch slot per open block), kivi4-fp16, kivi2-fp16 (the same with fp16 scales and minimums), kivi4-fp16-v64 (and a value scale per 64 channels; the key group is --block-size: blocks take 3.56x fewer bytes than bf16 for kivi4-fp16-v64 at 64, 3.51x for kivi4-fp16 at 256 (whose 4k passkey retrieval halves), the residual aside), bfp4, bfp8 (block floating point: per token, 32 channels share an 8-bit exponent), bfp4-g64, bfp8-g64 (64 channels an exponent), bfp4-sorted (bfp4 with key channels grouped by their calibrated norm, RoPE pairs together; PyTorch path, worse than bfp4 on the default model), xquant4, xquant2 (XQuant: a 4/2-bit latent of the layer input per token, K and V recomputed from it through an SVD of the K/V weights; no press; the fused step takes decode steps only), xquant4-g64, xquant2-g64, xquant4-fp16, xquant2-fp16, xquant4-g16-fp16, xquant2-g16-fp16 (groups of 64 channels; fp16 scales and minimums; groups of 16 with fp16 ones, the bytes of xquant4/xquant2)"})
    kv_press: str = field(default="", metadata={"help": "token press applied to each sequence once its prompt is in the cache, NAME[:RATIO] with RATIO the share of entries removed (default 0.5): streaming, knorm, snapkv, tova, observed, expected-attention, kvcrush, merge; empty: none"})
    kv_press_interval: int = field(default=0, metadata={"help": "press each pressed sequence again every N decode steps, back to the entries its first press kept (queries of the tokens since the last press); 0: once, after the prompt"})
    kv_press_base: str = field(default="snapkv", metadata={"help": "kvcrush, merge: the scoring press they build on"})
    kvcrush_share: float = field(default=0.25, metadata={"help": "kvcrush: share of the kept entries given to representatives of the evicted ones"})
    max_model_len: int = field(default=0, metadata={"help": "longest sequence (prompt + output); 0: the model's context"})
    max_num_seqs: int = field(default=64, metadata={"help": "most sequences in one step"})
    max_num_batched_tokens: int = field(default=512, metadata={"help": "token budget of one step (chunked prefill)"})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "share KV blocks between requests with equal prefixes"})
    enable_chunk_cache: bool = field(default=True, metadata={"help": "reuse the KV of prompt parts marked as chunks (documents) wherever they stand, blended in as CacheBlend does"})
    blend_recompute_ratio: float = field(default=0.16, metadata={"help": "chunk cache: share of a blended chunk's tokens computed again, those whose values deviate most from the cached ones (CacheBlend's default)"})
    blend_check_layer: int = field(default=1, metadata={"help": "chunk cache: the layer where the tokens to recompute are chosen; layers before it are computed for every token"})
    policy: str = field(default="fcfs", metadata={"help": "scheduling policy: fcfs, priority, vtc (fair share per `user`), lpm (longest cached prefix first), past-future or conservative (admission by predicted KV peak), slo (earliest deadline first), continuum (agent programs: KV pinned across tool calls)"})
    client_weights: str = field(default="", metadata={"help": "vtc: JSON file of client (`user`) -> weight; a client with weight 2 gets twice the service"})
    vtc_input_weight: float = field(default=1.0, metadata={"help": "vtc: counter charge per prompt token"})
    vtc_output_weight: float = field(default=2.0, metadata={"help": "vtc: counter charge per output token"})
    lpm_max_waiting: int = field(default=128, metadata={"help": "lpm: above this many waiting requests, order by arrival (sorting by prefix costs too much)"})
    past_future_history: int = field(default=200, metadata={"help": "past-future: how many finished output lengths predict the running requests' futures"})
    continuum_ttl: float = field(default=2.0, metadata={"help": "continuum: seconds a tool-call turn's KV stays pinned while its tool has too few observed durations"})
    continuum_min_samples: int = field(default=5, metadata={"help": "continuum: observed durations of a tool before its TTL comes from them"})
    slo_ttft_ms: float = field(default=0.0, metadata={"help": "slo: time-to-first-token target for requests that carry none (0: none)"})
    slo_tpot_ms: float = field(default=0.0, metadata={"help": "slo: time-per-output-token target for requests that carry none (0: none)"})
    preemption: str = field(default="recompute", metadata={"help": "how a preempted request gives back its KV: recompute, swap (to host memory), or "
                                                               "fastswitch (swap in few large copies, swap-in off the step, host copies reused)"})
    swap_space: str = field(default="1GiB", metadata={"help": "host memory for swapped-out KV blocks"})
    seed: int = field(default=0, metadata={"help": "global random seed"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from ember.kernels.attention import ATTENTION_BACKENDS
        from ember.kernels.linear import LINEAR_METHODS

        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of: auto, fp32, bf16")
        if self.linear != "auto" and self.linear not in LINEAR_METHODS:
            raise ValueError(f"linear {self.linear!r} is not one of: auto, {', '.join(LINEAR_METHODS.names())}")
        if self.quantizer not in ("rtn", "gptq", "gptq-mse"):
            raise ValueError(f"quantizer {self.quantizer!r} is not one of: rtn, gptq, gptq-mse")
        if self.quantizer != "rtn":
            if self.linear == "auto":
                raise ValueError(f"--quantizer {self.quantizer} needs an explicit --linear: tmac-w1..w4 or bcq-w2..w4")
            from ember.kernels.linear import get_linear_method
            from ember.quant.gptq import grid_for
            grid_for(get_linear_method(self.linear))
        if self.calibration_tokens < 512:
            raise ValueError(f"calibration_tokens must be at least 512 (one window), got {self.calibration_tokens}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention {self.attention!r} is not one of: {', '.join(ATTENTION_BACKENDS.names())}")
        from ember.kv.codecs import KV_CODECS

        if self.kv_cache_dtype not in KV_CODECS:
            raise ValueError(f"kv_cache_dtype {self.kv_cache_dtype!r} is not one of: {', '.join(KV_CODECS.names())}")
        if self.kv_press:
            from ember.kv.press import KV_PRESSES, parse_press

            name, ratio = parse_press(self.kv_press)
            if name not in KV_PRESSES:
                raise ValueError(f"kv_press {name!r} is not one of: {', '.join(KV_PRESSES.names())}")
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"kv_press {self.kv_press!r}: the ratio is the share of entries removed, in [0, 1)")
        from ember.kv.press import KV_PRESSES

        if self.kv_press_base not in KV_PRESSES or self.kv_press_base in ("kvcrush", "merge", "streaming"):
            raise ValueError(f"kv_press_base {self.kv_press_base!r} is not a scoring press: "
                             f"{', '.join(n for n in KV_PRESSES.names() if n not in ('kvcrush', 'merge', 'streaming'))}")
        if not 0.0 <= self.blend_recompute_ratio <= 1.0:
            raise ValueError(f"blend_recompute_ratio must lie in [0, 1], got {self.blend_recompute_ratio}")
        if self.blend_check_layer < 0:
            raise ValueError(f"blend_check_layer must not be negative, got {self.blend_check_layer}")
        if not 0.0 <= self.kvcrush_share <= 1.0:
            raise ValueError(f"kvcrush_share must lie in [0, 1], got {self.kvcrush_share}")
        # the policy's name and its client-weights file are checked where the engine builds the
        # policy, before the model loads (the config stays below the engine)
        for name in ("vtc_input_weight", "vtc_output_weight", "slo_ttft_ms", "slo_tpot_ms", "continuum_ttl"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "lpm_max_waiting", "past_future_history",
                     "continuum_min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("threads", "kv_cache_tokens", "max_model_len", "kv_press_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.fused_decode not in ("auto", "on", "off"):
            raise ValueError(f"fused_decode {self.fused_decode!r} is not one of: auto, on, off")
        from ember.kv.preemption import preemption_names

        if self.preemption not in preemption_names():
            raise ValueError(f"preemption {self.preemption!r} is not one of: {', '.join(preemption_names())}")
        parse_bytes(self.swap_space)
        if parse_bytes(self.kv_cache_memory) <= 0:
            raise ValueError(f"kv_cache_memory must be positive, got {self.kv_cache_memory!r}")
        if self.model is not None and not os.path.exists(self.model):
            raise ValueError(f"model path does not exist: {self.model}")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":  # a caller's bug: the engine and `ember info` resolve it first
            raise ValueError("dtype 'auto' has no torch dtype until the model file resolves it (ember/loader/auto.py)")
        return DTYPES[self.dtype]

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def apply_threads(self) -> int:
        n = self.threads or os.cpu_count() or 1
        torch.set_num_threads(n)
        return n
