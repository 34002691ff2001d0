"""Ember's lookup-table methods vs llama.cpp's own low-bit types on the same model, one run.

llama.cpp side: an F16 GGUF is written from the default model's weights with the `gguf`
package (the Q4_1 tensors dequantized: the float model every method here starts from), then
quantized with `llama_cpp.llama_model_quantize` (llama-cpp-python, its peer venv,
benchmarks/peers/llamacpp_env.sh) to Q2_K and Q3_K_M; for TQ2_0, the F16 GGUF is written
from Ember's ternarized weights (`ternary`: absmean trits, gamma per group of 64; the trit
times an fp16 gamma is exact in F16) so both engines run the same ternary model up to
TQ2_0's own scale per 256 weights. llama.cpp's 256-wide block types (K-quants, TQ2_0) need
rows that are a multiple of 256: on this model (hidden 576) every projection but ffn_down
falls back to Q4_0/Q5_0 (`tensor_types` in the JSON). Speed: benchmarks/cpu_vs_llamacpp.py's
workers (prefill 512, single-stream decode 128 after 32, decode at --concurrency sequences),
each engine configuration in its own subprocess, one after the other. Perplexity: `ember
eval ppl` over the first --ppl-tokens tokens, for llama.cpp's files too (Ember reads their
Q4_0, Q5_0, K-quant and Q8_0 tensors, dequantized, fp32; not TQ2_0): one scorer for both.

    python benchmarks/lowbit_vs_llamacpp.py --output results/lowbit_vs_llamacpp.json

With --width W (a multiple of 256, e.g. 768) both engines run a sibling of the default model
instead: its 30 layers, vocabulary and tokenizer, heads of 64, hidden size W, 4 KV heads and an
FFN of 8W/3 rounded to 256, with random weights (seeded, N(0, 0.02), norms 1). Every row is then
a multiple of 256, so llama.cpp's Q2_K, Q3_K_M and TQ2_0 apply to every projection: the
equal-bits speed comparison this model's 576-wide rows rule out. Perplexity means nothing on
random weights and is not measured there (the default model's table has it).

On a CPU with AMX, llama.cpp's native build (peers/llamacpp_env.sh) segfaulted in its AMX
matmul on Q4_0 in this VM; either run without its extra weight layouts (the default here,
slow) or build it without AMX and pass --extra-bufts (what benchmarks/README.md reports):

    python3.11 -m venv /tmp/llamacpp-noamx && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
      -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" /tmp/llamacpp-noamx/bin/pip install \
      --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36
    python benchmarks/lowbit_vs_llamacpp.py --extra-bufts --llamacpp-python /tmp/llamacpp-noamx/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import PromptMaker, environment, log, model_path, print_table  # noqa: E402
from cpu_vs_llamacpp import llamacpp_python, run_worker  # noqa: E402

# llama.cpp's llama_ftype numbers (include/llama.h at the vendored commit)
FTYPES = {"Q4_0": 2, "Q2_K": 10, "Q3_K_M": 12, "TQ2_0": 37}
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

QUANTIZE = r"""
import sys, llama_cpp as L
params = L.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
rc = L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(rc)
"""


def write_f16_gguf(src: str, dst: str, ternarize: bool = False) -> None:
    """The GGUF `src` again with every tensor dequantized (2-D tensors F16, the rest F32) and
    all metadata copied; with `ternarize`, the projections' weights become Ember's ternary ones."""
    import gguf
    import numpy as np
    import torch

    from ember.kernels.linear.ternary import ternarize as trits

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_key_value(key, 1, gguf.GGUFValueType.UINT32)  # MOSTLY_F16
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # numpy order: [rows, columns]
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if ternarize and t.name.split(".")[-2] in PROJECTIONS:
            codes, gamma, minimum = trits(torch.from_numpy(data))
            w = (codes.float().view(shape[0], -1, 64) * gamma.float()[..., None] + minimum.float()[..., None])
            data = w.reshape(shape).numpy()
        if len(shape) == 2:
            writer.add_tensor(t.name, data.astype(np.float16))
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_wide_gguf(src: str, dst: str, width: int, seed: int = 0) -> None:
    """The default model's metadata (tokenizer included) with hidden size `width`, width / 64
    heads, 4 KV heads and an FFN of 8W/3 rounded up to 256, random F16 weights (module docstring)."""
    import gguf
    import numpy as np

    if width % 256 or width < 256:
        raise SystemExit(f"--width must be a positive multiple of 256 (llama.cpp's K-quant rows), got {width}")
    ffn = -(-8 * width // 3 // 256) * 256
    heads, kv_heads, dim = width // 64, 4, 64
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    sizes = {f"{arch}.embedding_length": width, f"{arch}.feed_forward_length": ffn,
             f"{arch}.attention.head_count": heads, f"{arch}.attention.head_count_kv": kv_heads,
             "general.file_type": 1}  # MOSTLY_F16
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, sizes.get(key, field.contents()), vtype, sub_type=sub)
    rng = np.random.default_rng(seed)
    shapes = {"attn_q": (width, width), "attn_k": (kv_heads * dim, width), "attn_v": (kv_heads * dim, width),
              "attn_output": (width, width), "ffn_gate": (ffn, width), "ffn_up": (ffn, width), "ffn_down": (width, ffn)}
    vocab = int(reader.fields[f"{arch}.vocab_size"].contents())
    writer.add_tensor("token_embd.weight", (0.02 * rng.standard_normal((vocab, width), np.float32)).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    for layer in range(int(reader.fields[f"{arch}.block_count"].contents())):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{layer}.{norm}.weight", np.ones(width, np.float32))
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{layer}.{name}.weight", (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tensor_types(path: str) -> dict[str, int]:
    """How many 2-D tensors of each type a GGUF holds: llama.cpp falls back from its 256-wide
    block types where a row (576 here) is not a multiple of 256."""
    import collections

    import gguf

    return dict(collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2))


def quantize(python: str, src: str, dst: str, ftype: str, threads: int) -> None:
    subprocess.run([python, "-c", QUANTIZE, src, dst, str(FTYPES[ftype]), str(threads)], check=True,
                   capture_output=True, text=True)


def ember_ppl(linear: str, tokens: int, model: str | None = None) -> float | None:
    """`ember eval ppl` of the default model under `linear`, or of another GGUF (`model`, read
    by Ember: a llama.cpp file's own quantized weights, dequantized, in fp32); None where Ember
    can't read the file's types (TQ2_0)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ember"), "eval", "ppl", "--max-tokens", str(tokens),
           "--linear", linear, "--dtype", "fp32", "--json"] + (["--model", model] if model else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["perplexity"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="fp32/int4,fp32/tmac-w2,fp32/tmac-w3,fp32/ternary")
    ap.add_argument("--llamacpp-types", default="Q2_K,Q3_K_M,TQ2_0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="32")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--workdir", default=None, help="where the GGUFs go (default: a temporary directory)")
    ap.add_argument("--llamacpp-python", default=None)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="let llama.cpp use its repacked/AMX weight layouts (its AMX matmul crashed here)")
    ap.add_argument("--width", type=int, default=0,
                    help="run a random-weight sibling of the default model this wide instead (module docstring)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    env = environment(args.threads)
    python = llamacpp_python(args.llamacpp_python)
    src = model_path(None)
    work = args.workdir or tempfile.mkdtemp(prefix="lowbit_gguf_")
    os.makedirs(work, exist_ok=True)
    files = {}
    tag = f"-w{args.width}" if args.width else ""
    if args.width:
        files["F16"] = os.path.join(work, f"F16{tag}.gguf")
        if not os.path.exists(files["F16"]):
            log(f"writing {files['F16']}")
            write_wide_gguf(src, files["F16"], args.width)
    for name, tern in (("F16", False), ("F16-ternary", True)):
        path = os.path.join(work, f"{name}{tag}.gguf")
        if not os.path.exists(path):
            log(f"writing {path}")
            write_f16_gguf(files.get("F16", src), path, ternarize=tern)
        files[name] = path
    for qtype in [t.strip() for t in args.llamacpp_types.split(",") if t.strip()]:
        path = os.path.join(work, f"{qtype}{tag}.gguf")
        if not os.path.exists(path):
            log(f"quantizing {qtype}")
            quantize(python, files["F16-ternary" if qtype == "TQ2_0" else "F16"], path, qtype, args.threads)
        files[qtype] = path

    make = PromptMaker(offset=5000)
    n = args.repeats + 1
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    job = {"model": files["F16"] if args.width else src, "threads": args.threads, "new_tokens": 128,
           "prefill": [make(512) for _ in range(n)], "decode": [make(32) for _ in range(n)],
           "batched": {str(c): [make(32) for _ in range(c)] for c in conc}}
    results = {}
    ember_cmd = [sys.executable, os.path.join(HERE, "cpu_vs_llamacpp.py"), "--worker", "ember"]
    for cfg in [c.strip() for c in args.configs.split(",") if c.strip()]:
        log(f"ember {cfg}")
        results[f"ember {cfg.split('/')[1]}"] = run_worker(ember_cmd, dict(job, config=cfg))
        if not args.width:  # random weights: no perplexity worth reading
            results[f"ember {cfg.split('/')[1]}"]["perplexity"] = ember_ppl(cfg.split("/")[1], args.ppl_tokens)
        save(args.output, env, args, results)
    lcmd = [python, os.path.join(HERE, "peers", "llamacpp_worker.py")]
    for qtype in [t.strip() for t in args.llamacpp_types.split(",") if t.strip()]:
        log(f"llama.cpp {qtype}")
        res = {"file_bytes": os.path.getsize(files[qtype]), "tensor_types": tensor_types(files[qtype]),
               "perplexity": None if args.width else ember_ppl("dense", args.ppl_tokens, files[qtype])}
        try:  # llama.cpp's AMX matmul crashes on Q4_0 in this VM: run without its extra weight layouts
            res.update(run_worker(lcmd, dict(job, model=files[qtype], extra_bufts=args.extra_bufts)))
        except RuntimeError as exc:
            res["error"] = str(exc)[-500:]
        results[f"llama.cpp {qtype}"] = res
        save(args.output, env, args, results)

    rows = []
    for name, r in results.items():
        row = {"engine": name, "ppl": r.get("perplexity") or float("nan"),
               "prefill tok/s": r.get("prefill_tok_s", float("nan")), "decode tok/s": r.get("decode_tok_s", float("nan"))}
        for c in conc:
            row[f"decode@{c} tok/s"] = r.get(f"batched_{c}", {}).get("decode_tok_s", float("nan"))
        rows.append(row)
    pairs = [("ember int4", "llama.cpp Q4_0"), ("ember tmac-w2", "llama.cpp Q2_K"), ("ember tmac-w3", "llama.cpp Q3_K_M"), ("ember ternary", "llama.cpp TQ2_0")]
    for a, b in pairs:
        if a in results and b in results and "decode_tok_s" in results[b]:
            ra, rb = results[a], results[b]
            row = {"engine": f"ratio {a.split()[-1]} / {b.split()[-1]}", "ppl": float("nan"),
                   "prefill tok/s": ra["prefill_tok_s"] / rb["prefill_tok_s"], "decode tok/s": ra["decode_tok_s"] / rb["decode_tok_s"]}
            for c in conc:
                row[f"decode@{c} tok/s"] = ra[f"batched_{c}"]["decode_tok_s"] / rb[f"batched_{c}"]["decode_tok_s"]
            rows.append(row)
    print_table(rows, title=f"low-bit: Ember vs llama.cpp, {args.threads} threads (prefill 512; decode 128 after 32; "
                            f"decode at {args.concurrency} sequences)")
    save(args.output, env, args, results)


def save(path: str | None, env: dict, args, results: dict) -> None:
    """Write what is measured so far (a failing peer leaves the rest on disk)."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        json.dump({"env": env, "args": vars(args), "results": results}, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
