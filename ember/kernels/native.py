"""Build and load the C kernels of ember/kernels/csrc through ctypes.

Each source is compiled on first use with the system C compiler (`cc`, AVX2 + FMA, OpenMP)
into a cache directory, keyed by the hash of the sources (headers included) and flags, then
loaded with ctypes: no torch headers, so a build takes a second or two. Where there is no
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
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]
_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}

F32, INT8, INT4, INT8_PANELS, BF16 = 0, 1, 2, 3, 4  # ember_weight.kind (csrc/linear.h)


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
                ("fp8_man_bits", ctypes.c_int64), ("fp8_bias", ctypes.c_int64)]


class KVLayer(ctypes.Structure):
    """csrc/attention_paged.h's ember_kv_layer: one layer's KV tensors, by pointer."""
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("k_scale", ctypes.c_void_p),
                ("v_scale", ctypes.c_void_p)]


def kv_layout(codec, kinds: list[str]) -> tuple[KVLayout, torch.Tensor | None]:
    """The C description of a KV codec's layout (kinds: the library's kind names, in order), and
    the decode table it points to (keep it alive as long as the layout)."""
    table = getattr(codec, "table", None)
    fmt = getattr(codec, "fmt", None)
    layout = KVLayout(kinds.index(codec.native_kind), codec.block_size, codec.num_kv_heads, codec.head_dim,
                      None if table is None else table.data_ptr(), getattr(codec, "fmax", 0.0),
                      fmt.man_bits if fmt else 0, fmt.bias if fmt else 0)
    return layout, table


def kv_layer(tensors: dict[str, torch.Tensor]) -> KVLayer:
    ptr = lambda name: tensors[name].data_ptr() if name in tensors else None  # noqa: E731
    return KVLayer(ptr("k"), ptr("v"), ptr("k_scale"), ptr("v_scale"))


def check_abi(lib: ctypes.CDLL, symbol: str, structs: dict[str, type]) -> dict:
    """Read what a library reports of itself (`name=value` pairs: struct sizes, kind names) and
    check every struct Python mirrors against it: a layout change on one side fails here, at
    load, instead of reading garbage. Returns {"kv_kinds": [...], ...}."""
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_char_p
    pairs = dict(item.split("=", 1) for item in fn().decode().split())
    for name, struct in structs.items():
        if int(pairs[name]) != ctypes.sizeof(struct):
            raise RuntimeError(f"{symbol}: {name} is {pairs[name]} bytes in C, {ctypes.sizeof(struct)} in Python")
    return {"kv_kinds": [k for k in pairs.get("kv_kinds", "").split(",") if k]}


def weight(kind: int, w: torch.Tensor, n: int, k: int, scale: torch.Tensor | None = None,
           sm: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> Weight | None:
    """A Weight over contiguous tensors (they must outlive it); None if the kernels can't take it
    (K not a multiple of 32, or a bias that is not fp32)."""
    if k % 32 or (bias is not None and bias.dtype != torch.float32):
        return None
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    return Weight(kind, n, k, ptr(w), ptr(scale), ptr(sm), ptr(bias))


def cache_dir() -> str:
    return os.environ.get("EMBER_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ember"))


def _build(name: str) -> str:
    source = os.path.join(CSRC, f"{name}.c")
    h = hashlib.sha256(" ".join(FLAGS).encode())
    for path in [source] + sorted(glob.glob(os.path.join(CSRC, "*.h"))):
        with open(path, "rb") as f:
            h.update(f.read())
    out = os.path.join(cache_dir(), f"{name}-{h.hexdigest()[:16]}.so")
    if os.path.exists(out):
        return out
    os.makedirs(cache_dir(), exist_ok=True)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, source, "-o", tmp, "-lm"], check=True, capture_output=True)
        os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(name: str) -> ctypes.CDLL | None:
    """The built library csrc/<name>.c, or None where it cannot be built here."""
    with _lock:
        if name not in _libs:
            _libs[name] = None
            if os.environ.get("EMBER_NATIVE", "1") != "0" and torch.backends.cpu.get_cpu_capability() in (
                    "AVX2", "AVX512"):
                try:
                    _libs[name] = ctypes.CDLL(_build(name))
                except (OSError, RuntimeError, subprocess.CalledProcessError):
                    pass
        return _libs[name]


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
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
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
