"""Build and call the C kernels of ember/kernels/csrc through ctypes.

Compiled on first use with the system C compiler (`cc`, AVX2 + FMA, OpenMP) into a cache
directory keyed by the source's hash, then loaded with ctypes: no torch headers, so a build
takes about a second. Where there is no compiler or no AVX2, `int8_gemm()` returns None and
callers use their torch path. The kernels link libgomp by soname: the process already has
torch's copy loaded, so both share one OpenMP pool and `torch.set_num_threads`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import torch

CSRC = os.path.join(os.path.dirname(os.path.dirname(__file__)), "csrc")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable


def cache_dir() -> str:
    return os.environ.get("EMBER_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ember"))


def _build(source: str) -> str:
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), f"{os.path.basename(source).split('.')[0]}-{digest}.so")
    if os.path.exists(out):
        return out
    os.makedirs(cache_dir(), exist_ok=True)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, source, "-o", tmp], check=True, capture_output=True)
        os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def library() -> ctypes.CDLL | None:
    global _lib
    with _lock:
        if _lib is False:
            _lib = None
            if os.environ.get("EMBER_NATIVE", "1") != "0" and torch.backends.cpu.get_cpu_capability() in (
                    "AVX2", "AVX512"):
                try:
                    lib = ctypes.CDLL(_build(os.path.join(CSRC, "int8_gemm.c")))
                    lib.ember_int8_gemm.restype = None
                    lib.ember_int8_gemm.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3
                    _lib = lib
                except (OSError, RuntimeError, subprocess.CalledProcessError):
                    _lib = None
        return _lib


def int8_gemm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """x fp32 [M, K] contiguous, q int8 [N, K], scale fp32 [N] -> y fp32 [M, N]; None if unavailable."""
    lib = library()
    m, k = x.shape
    n = q.shape[0]
    if lib is None or k % 16:
        return None
    y = torch.empty(m, n, dtype=torch.float32)
    lib.ember_int8_gemm(x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), m, n, k)
    return y
