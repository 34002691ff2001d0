#!/usr/bin/env bash
# Build the llama.cpp peer in its own virtual environment (never part of `make test`).
#
# llama-cpp-python 0.3.36's sdist vendors llama.cpp at commit 0c1e570, the build the figures in
# ../shared/anchors/ came from. It compiles from source (several minutes on 2 cores) with
# native CPU flags, and brings `python -m llama_cpp.server`, an OpenAI-compatible server.
#
# Usage: bash benchmarks/peers/llamacpp_env.sh   -> prints the venv's python path
set -euo pipefail
cd "$(dirname "$0")"
VENV=${LLAMACPP_VENV:-.venv-llamacpp}
PY=${PYTHON:-python3.11}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp, llama_cpp.server" 2>/dev/null; then
    echo "$PWD/$VENV/bin/python"
    exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >&2
echo "building llama-cpp-python 0.3.36 from source (several minutes)..." >&2
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    "$VENV/bin/pip" install --quiet --no-binary llama-cpp-python 'llama-cpp-python[server]==0.3.36' >&2
"$VENV/bin/python" -c "import llama_cpp, llama_cpp.server" >&2
echo "$PWD/$VENV/bin/python"
