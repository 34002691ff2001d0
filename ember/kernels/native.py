"""Build and load the C kernels of ember/kernels/csrc through ctypes.

Each source is compiled on first use with the system C compiler (`cc`, OpenMP) under one of
VARIANTS' instruction sets into a cache directory, keyed by the hash of the sources (headers
included) and the variant's flags, then loaded with ctypes: no torch headers, so a build
takes a second or two. The variant is the widest the CPU reports (/proc/cpuinfo flags);
`EMBER_CPU_VARIANT=avx2` forces one (tests run the kernels under every variant the machine
can run, since the project meets both AVX2-only and AVX-512 machines). Where there is no
compiler or no AVX2, `load()` returns None and callers keep their torch path
(`EMBER_NATIVE=0` forces that). The kernels link libgomp by soname: the process already has
torch's copy loaded, so both share one OpenMP runtime, and every call passes torch's thread
count, so the pools never oversubscribe.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import torch

CSRC = os.path.join(os.path.dirname(__file__), "csrc")
# -ffp-contract=off: element-wise C (RoPE, norms) rounds like torch's separate ops; the FMAs
# the kernels want are written as intrinsics.
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]
_AVX2 = (("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c"))
_AVX512 = (("avx512f", "avx512bw", "avx512vl", "avx512dq"), ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"))
_VNNI = (("avx512_vnni",), ("-mavx512vnni",))
# name -> (the /proc/cpuinfo flags it needs, its compiler flags), widest last. The sources are
# written with AVX2 intrinsics, and hot loops have AVX-512 forms behind `#if defined(__AVX512BW__)`
# (the lookup kernels' 64-byte shuffles, int4's 16-row tile, int8's and the row-major f32/bf16
# kinds' 16-wide panels, linear_panel16.h) and
# `__AVX512VNNI__` (int4's vpdpbusd); elsewhere the compiler may widen and re-encode what it
# vectorizes itself (EVEX, 32 registers, masked tails). avx512vnni is avx512 plus VNNI (Cascade
# Lake and later; a Skylake-X runs avx512 without it).
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx2": _AVX2,
    "avx512": (_AVX2[0] + _AVX512[0], _AVX2[1] + _AVX512[1]),
    "avx512vnni": (_AVX2[0] + _AVX512[0] + _VNNI[0], _AVX2[1] + _AVX512[1] + _VNNI[1]),
}
_lock = threading.Lock()
_libs: dict[tuple[str, str], ctypes.CDLL | None] = {}  # by (source name, variant)
_weight_kinds: dict[str, list[str]] = {}  # by variant: the linear library's kind names, in enum order


class NativeUnavailable(Exception):
    """Why a C fast path can't run this model in this configuration."""


class Weight(ctypes.Structure):
    """csrc/linear.h's ember_weight: one projection's storage, by pointer."""
    _fields_ = [("kind", ctypes.c_int64), ("n", ctypes.c_int64), ("k", ctypes.c_int64),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("sm", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class KVLayout(ctypes.Structure):
    """csrc/attention_paged.h's ember_kv_layout: how every layer's KV blocks are stored."""
    _fields_ = [("kind", ctypes.c_int64), ("block_size", ctypes.c_int64), ("num_kv_heads", ctypes.c_int64),
                ("head_dim", ctypes.c_int64), ("fp8_table", ctypes.c_void_p), ("fp8_max", ctypes.c_double),
                ("fp8_man_bits", ctypes.c_int64), ("fp8_bias", ctypes.c_int64), ("res_bf16", ctypes.c_int64),
                ("stats_f16", ctypes.c_int64), ("v_group", ctypes.c_int64), ("xq_group", ctypes.c_int64),
                ("bfp_group", ctypes.c_int64)]


class KVLayer(ctypes.Structure):
    """csrc/attention_paged.h's ember_kv_layer: one layer's KV tensors, by pointer."""
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("k_scale", ctypes.c_void_p),
                ("v_scale", ctypes.c_void_p), ("k_min", ctypes.c_void_p), ("v_min", ctypes.c_void_p),
                ("k_res", ctypes.c_void_p), ("k_full", ctypes.c_void_p), ("scratch_slot", ctypes.c_void_p),
                ("k_res_pass", ctypes.c_void_p), ("pos", ctypes.c_void_p), ("xq_to_latent", ctypes.c_void_p),
                ("xq_from_latent", ctypes.c_void_p), ("xq_bias", ctypes.c_void_p), ("xq_cos", ctypes.c_void_p),
                ("xq_sin", ctypes.c_void_p)]


def kv_layout(codec, kinds: list[str]) -> tuple[KVLayout, torch.Tensor | None]:
    """The C description of a KV codec's layout (kinds: the library's kind names, in order), and
    the decode table it points to (keep it alive as long as the layout)."""
    table = getattr(codec, "table", None)
    fmt = getattr(codec, "fmt", None)
    layout = KVLayout(kinds.index(codec.native_kind), codec.block_size, codec.num_kv_heads, codec.head_dim,
                      None if table is None else table.data_ptr(), getattr(codec, "fmax", 0.0),
                      fmt.man_bits if fmt else 0, fmt.bias if fmt else 0,
                      getattr(codec, "residual_dtype", None) == torch.bfloat16,
                      getattr(codec, "stat_dtype", None) == torch.float16, getattr(codec, "vgroup", 0),
                      codec.group if codec.native_kind.startswith("xquant") else 0,
                      codec.group if codec.native_kind in ("bfp4", "bfp8") else 0)
    return layout, table


def kv_layer(tensors: dict[str, torch.Tensor]) -> KVLayer:
    """The bfp codecs' exponents (`k_exp`, `v_exp`, int8) travel in the scale pointers; XQuant's
    latent codes, scales and minimums (`x`, `x_scale`, `x_min`) in k, k_scale and k_min."""
    tensors = {"k_scale": tensors.get("k_exp"), "v_scale": tensors.get("v_exp")} | tensors
    if "x" in tensors:
        tensors |= {"k": tensors["x"], "k_scale": tensors["x_scale"], "k_min": tensors["x_min"]}
    ptr = lambda name: tensors[name].data_ptr() if tensors.get(name) is not None else None  # noqa: E731
    return KVLayer(*(ptr(name) for name in ("k", "v", "k_scale", "v_scale", "k_min", "v_min", "k_res", "k_full",
                                            "scratch_slot", "k_res_pass", "pos", "xq_to_latent", "xq_from_latent",
                                            "xq_bias", "xq_cos", "xq_sin")))


def check_abi(lib: ctypes.CDLL, symbol: str, structs: dict[str, type]) -> dict:
    """Read what a library reports of itself (`name=value` pairs: struct sizes, kind names) and
    check every struct Python mirrors against it: a layout change on one side fails here, at
    load, instead of reading garbage. Returns every `*_kinds` list, {"kv_kinds": [...], ...}."""
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_char_p
    pairs = dict(item.split("=", 1) for item in fn().decode().split())
    for name, struct in structs.items():
        if int(pairs[name]) != ctypes.sizeof(struct):
            raise RuntimeError(f"{symbol}: {name} is {pairs[name]} bytes in C, {ctypes.sizeof(struct)} in Python")
    kinds = {"kv_kinds": ""} | {key: value for key, value in pairs.items() if key.endswith("_kinds")}
    return {key: [k for k in value.split(",") if k] for key, value in kinds.items()}


def weight_kinds() -> list[str] | None:
    """The storage kinds of csrc/weight.h, in enum order, as the linear library reports them
    (ember_weight's size checked on the way); None where the kernels can't be built."""
    lib, name = load("linear"), variant()
    if lib is None:
        return None
    with _lock:
        if name not in _weight_kinds:
            _weight_kinds[name] = check_abi(lib, "ember_linear_abi", {"ember_weight": Weight})["weight_kinds"]
        return _weight_kinds[name]


def weight(kind: str, w: torch.Tensor, n: int, k: int, scale: torch.Tensor | None = None,
           sm: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> Weight | None:
    """A Weight of storage `kind` (a name of csrc/weight.h's list: "f32", "int8", ...) over
    contiguous tensors (they must outlive it); None if the kernels can't take it (not built
    here, K not a multiple of 32, or a bias that is not fp32)."""
    kinds = weight_kinds()
    if kinds is None or k % 32 or (bias is not None and bias.dtype != torch.float32):
        return None
    if kind not in kinds:
        raise ValueError(f"no weight kind {kind!r} in the C kernels (they have {', '.join(kinds)})")
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    return Weight(kinds.index(kind), n, k, ptr(w), ptr(scale), ptr(sm), ptr(bias))


def cache_dir() -> str:
    return os.environ.get("EMBER_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ember"))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them; empty where it can't be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split()[2:])
    except OSError:
        return frozenset()


def supported_variants() -> list[str]:
    """The VARIANTS this CPU can run, narrowest first."""
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo (not Linux): trust torch's own probe
        cap = torch.backends.cpu.get_cpu_capability()
        return ["avx2", "avx512"] if cap == "AVX512" else ["avx2"] if cap == "AVX2" else []
    return [name for name, (needs, _) in VARIANTS.items() if set(needs) <= flags]


def variant() -> str | None:
    """The variant the kernels load as: EMBER_CPU_VARIANT if set, else the widest this CPU runs;
    None where it runs none. Read at every load, so setting the variable switches variants."""
    forced = os.environ.get("EMBER_CPU_VARIANT")
    runnable = supported_variants()
    if not forced:
        return runnable[-1] if runnable else None
    if forced not in VARIANTS:
        raise ValueError(f"EMBER_CPU_VARIANT={forced!r} is not a CPU variant of the C kernels "
                         f"(choices: {', '.join(VARIANTS)})")
    if forced not in runnable:
        raise ValueError(f"EMBER_CPU_VARIANT={forced!r}: this CPU can't run it "
                         f"(it runs: {', '.join(runnable) or 'none'}; choices: {', '.join(VARIANTS)})")
    return forced


def compile_flags(name: str) -> list[str]:
    """Everything the compiler is given for variant `name` (the cache key hashes it)."""
    return FLAGS[:1] + list(VARIANTS[name][1]) + FLAGS[1:]


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(name: str, var: str) -> str:
    source = os.path.join(CSRC, f"{name}.c")
    flags = compile_flags(var)
    h = hashlib.sha256(" ".join(flags).encode())
    for path in [source] + sorted(glob.glob(os.path.join(CSRC, "*.h"))):
        with open(path, "rb") as f:
            h.update(f.read())
    out = os.path.join(cache_dir(), f"{name}-{var}-{h.hexdigest()[:16]}.so")
    if os.path.exists(out):
        return out
    os.makedirs(cache_dir(), exist_ok=True)
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    os.close(fd)
    try:
        subprocess.run([cc, *flags, source, "-o", tmp, "-lm"], check=True, capture_output=True)
        os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(name: str) -> ctypes.CDLL | None:
    """The built library csrc/<name>.c under the current `variant()`, or None where it cannot be
    built here. Raises ValueError for an EMBER_CPU_VARIANT this CPU can't run."""
    if os.environ.get("EMBER_NATIVE", "1") == "0":
        return None
    var = variant()
    if var is None:
        return None
    with _lock:
        if (name, var) not in _libs:
            _libs[name, var] = None
            try:
                _libs[name, var] = ctypes.CDLL(_build(name, var))
            except (OSError, RuntimeError, subprocess.CalledProcessError):
                pass
        return _libs[name, var]


def describe() -> str:
    """Which build of the C kernels this process would load, in a line, without building or
    raising (`ember info`)."""
    if os.environ.get("EMBER_NATIVE", "1") == "0":
        return "off (EMBER_NATIVE=0)"
    try:
        chosen = variant()
    except ValueError as exc:
        return f"refused: {exc}"
    if chosen is None:
        return "none: this CPU has no AVX2 (torch paths only)"
    if compiler() is None:
        return "none: no C compiler (torch paths only)"
    forced = " (forced by EMBER_CPU_VARIANT)" if os.environ.get("EMBER_CPU_VARIANT") else ""
    return f"{chosen}{forced}; this CPU runs {', '.join(supported_variants())}"


def wide_vectors() -> bool:
    """Whether the kernels load as an AVX-512 variant (64-byte vectors, 32 registers): there
    some kernels outrun torch's GEMM at prefill sizes too (int8's panels)."""
    try:
        return (variant() or "").startswith("avx512") and available()
    except ValueError:
        return False


def available() -> bool:
    return load("linear") is not None


@functools.cache
def cpu_has_bf16_gemm() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there torch's oneDNN bf16
    GEMM is the fast route; without, it runs ~4-6x slower than fp32 and widening bf16 in the C
    kernels wins (EMBER_BF16_GEMM=torch or =native overrides the guess)."""
    forced = os.environ.get("EMBER_BF16_GEMM")
    if forced in ("torch", "native"):
        return forced == "torch"
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def linear(x: torch.Tensor, w: Weight) -> torch.Tensor | None:
    """x fp32 [M, K] -> x @ W^T (+ bias) fp32 [M, N] on the C kernels; None if unavailable."""
    lib = load("linear")
    if lib is None:
        return None
    x = x.float().contiguous()
    y = torch.empty(x.shape[0], w.n, dtype=torch.float32)
    lib.ember_linear(ctypes.byref(w), ctypes.c_void_p(x.data_ptr()), ctypes.c_long(x.shape[0]),
                     ctypes.c_void_p(y.data_ptr()), ctypes.c_int(torch.get_num_threads()))
    return y
