"""kernels/native.py's build: CPU variants (chosen from the CPU's flags, forced, refused by
name, cached apart), the linear library's ABI report (kind numbers come from it), and every
C file compiling on its own under every variant's flags."""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess

import pytest
import torch

from ember.kernels import native

needs_native = pytest.mark.skipif(not native.available(), reason="the C kernels need a C compiler and AVX2")
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # a Zen 3's, as far as the variants care


def test_the_widest_variant_the_cpu_runs_is_the_default(monkeypatch):
    monkeypatch.delenv("EMBER_CPU_VARIANT", raising=False)
    runnable = native.supported_variants()
    assert native.variant() == (runnable[-1] if runnable else None)
    monkeypatch.setattr(native, "cpu_flags", lambda: AVX2_ONLY)
    assert native.supported_variants() == ["avx2"] and native.variant() == "avx2"
    monkeypatch.setattr(native, "cpu_flags", lambda: AVX2_ONLY | set(native.VARIANTS["avx512"][0]))
    assert native.supported_variants() == ["avx2", "avx512"] and native.variant() == "avx512"
    monkeypatch.setattr(native, "cpu_flags", lambda: AVX2_ONLY | set(native.VARIANTS["avx512vnni"][0]))
    assert native.supported_variants() == ["avx2", "avx512", "avx512vnni"] and native.variant() == "avx512vnni"


def test_a_forced_variant_is_checked_by_name(monkeypatch):
    monkeypatch.delenv("EMBER_NATIVE", raising=False)
    monkeypatch.setenv("EMBER_CPU_VARIANT", "avx9")
    with pytest.raises(ValueError, match=r"EMBER_CPU_VARIANT='avx9'.*choices: avx2, avx512"):
        native.load("linear")
    # a variant this CPU lacks is refused too, not run into an illegal instruction
    monkeypatch.setattr(native, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setenv("EMBER_CPU_VARIANT", "avx512")
    with pytest.raises(ValueError, match=r"'avx512': this CPU can't run it \(it runs: avx2"):
        native.load("linear")
    monkeypatch.setenv("EMBER_CPU_VARIANT", "avx2")
    assert native.variant() == "avx2"


def test_the_variant_is_reported(monkeypatch):
    monkeypatch.delenv("EMBER_NATIVE", raising=False)
    monkeypatch.setattr(native, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(native, "compiler", lambda: "cc")
    monkeypatch.delenv("EMBER_CPU_VARIANT", raising=False)
    assert native.describe() == "avx2; this CPU runs avx2"
    monkeypatch.setenv("EMBER_CPU_VARIANT", "avx2")
    assert native.describe() == "avx2 (forced by EMBER_CPU_VARIANT); this CPU runs avx2"
    monkeypatch.setenv("EMBER_CPU_VARIANT", "avx512")  # reported, not raised: `ember info` still runs
    assert native.describe().startswith("refused: EMBER_CPU_VARIANT='avx512'")


def test_the_cache_key_holds_the_variants_flags():
    avx2, avx512 = native.compile_flags("avx2"), native.compile_flags("avx512")
    assert {"-mavx2", "-mfma", "-mf16c"} <= set(avx2) and not any("avx512" in f for f in avx2)
    assert set(avx2) < set(avx512) and {"-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"} <= set(avx512)
    vnni = native.compile_flags("avx512vnni")
    assert set(avx512) < set(vnni) and "-mavx512vnni" in vnni and "-mavx512vnni" not in avx512
    assert "avx512_vnni" in native.VARIANTS["avx512vnni"][0] and "avx512_vnni" not in native.VARIANTS["avx512"][0]


@needs_native
def test_each_variant_loads_its_own_library(monkeypatch):
    names = set()
    for variant in native.supported_variants():
        monkeypatch.setenv("EMBER_CPU_VARIANT", variant)
        lib = native.load("linear")
        assert os.path.basename(lib._name).startswith(f"linear-{variant}-")
        assert native.load("linear") is lib  # cached per (name, variant)
        names.add(lib._name)
    assert len(names) == len(native.supported_variants())


@needs_native
def test_weight_kinds_are_numbered_by_the_library():
    kinds = native.weight_kinds()
    assert set(kinds) == {"f32", "bf16", "int8", "int8_panels", "int4", "tmac2", "tmac4", "planes1", "planes2", "planes3",
                          "planes4", "w4a4", "lmul7", "lmul4"}
    w = torch.zeros(8, 64, dtype=torch.int8)
    assert native.weight("int8", w, 8, 64, scale=torch.ones(8)).kind == kinds.index("int8")
    with pytest.raises(ValueError, match=r"no weight kind 'int5' in the C kernels \(they have f32"):
        native.weight("int5", w, 8, 64)
    # the fused step's library reads the same list (both include csrc/weight.h)
    from ember.models.llama_native import _STRUCTS

    abi = native.check_abi(native.load("llama_decode"), "ember_llama_decode_abi", _STRUCTS)
    assert abi["weight_kinds"] == kinds and abi["kv_kinds"]


@needs_native
def test_a_weight_struct_out_of_step_with_c_fails_at_load():
    class Shorter(ctypes.Structure):
        _fields_ = native.Weight._fields_[:-1]

    with pytest.raises(RuntimeError, match=r"ember_weight is \d+ bytes in C, \d+ in Python"):
        native.check_abi(native.load("linear"), "ember_linear_abi", {"ember_weight": Shorter})


C_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(native.CSRC, "*.[ch]")))


@pytest.mark.parametrize("variant", list(native.VARIANTS))
@pytest.mark.parametrize("name", C_FILES)
def test_every_c_file_compiles_on_its_own(name, variant):
    """Each header includes what it uses (it compiles alone), and every file compiles under
    every variant's flags, whichever this machine runs (a syntax check needs no such CPU)."""
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    cmd = [cc, "-fsyntax-only", "-fopenmp", *native.VARIANTS[variant][1], "-Werror=implicit-function-declaration",
           "-Werror=implicit-int", "-x", "c", os.path.join(native.CSRC, name)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
