#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-server, llama-bench, llama-batched-bench) from the sources
# that llama-cpp-python 0.3.36's sdist vendors (commit 0c1e570, the same llama.cpp as the
# llama-cpp-python peer), with this CPU's flags. Never part of `make test`.
#
# AMX is off: llama.cpp's AMX matmul segfaulted on Q4_0 in this VM (lowbit_vs_llamacpp.py), and
# -march=native would compile it in, so the extensions are named one by one from what the CPU
# reports (/proc/cpuinfo). About 10 minutes on 2 cores.
#
# Usage: bash benchmarks/peers/llamacpp_tools.sh   -> prints the directory holding the binaries
set -euo pipefail
cd "$(dirname "$0")"
OUT=${LLAMACPP_TOOLS:-$PWD/.llamacpp-tools}
BIN="$OUT/build/bin"
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-batched-bench" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$OUT"
if [ ! -d "$OUT/src" ]; then
    echo "downloading the llama-cpp-python 0.3.36 sdist..." >&2
    # the sdist file itself, found on PyPI's simple index (pip download would build its build tools first)
    URL=$(curl -fsS https://pypi.org/simple/llama-cpp-python/ | grep -o 'https://[^"#]*llama_cpp_python-0\.3\.36\.tar\.gz' | head -1)
    curl -fsSL -o "$OUT/sdist.tar.gz" "$URL"
    mkdir -p "$OUT/src"
    tar -xzf "$OUT/sdist.tar.gz" -C "$OUT/src" --strip-components=1
fi
echo "building llama-server, llama-bench, llama-batched-bench (about 10 minutes)..." >&2
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
cmake -S "$OUT/src/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
    -DGGML_AVX=ON -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" \
    -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)" -DGGML_AVX512_VNNI="$(has avx512_vnni)" \
    -DGGML_AVX512_BF16="$(has avx512_bf16)" -DGGML_AVX_VNNI="$(has avx_vnni)" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$OUT/build" -j "${JOBS:-2}" --target llama-server llama-bench llama-batched-bench >&2
"$BIN/llama-server" --version >&2 || true
echo "$BIN"
