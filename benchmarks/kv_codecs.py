"""KV codecs side by side: bytes per token and cache capacity, perplexity through the decode
path (each window fed one token per step through the compressed cache), and fused decode
step throughput at 32 sequences with long contexts, as a ratio against the bf16 cache.

    .venv/bin/python benchmarks/kv_codecs.py --ppl-tokens 16384 --context-len 2048 --output results/kv_codecs.json
"""

from __future__ import annotations

import time

from common import base_parser, set_threads, write_json  # noqa: I001  (common puts the checkout on sys.path)

import torch

from ember.config import EngineConfig
from ember.eval.perplexity import default_eval_text, evaluate_perplexity
from ember.kernels.attention import AttentionMetadata, get_attention_backend
from ember.kv.cache import PagedKVCache
from ember.kv.spec import kv_cache_spec
from ember.loader import load_model

CODECS = ["auto", "bf16", "fp8-e4m3", "fp8-e5m2", "int8"]


def decode_step_seconds(lm, codec: str, seqs: int, context: int, steps: int) -> float:
    """Median seconds of one fused decode step of `seqs` sequences whose caches hold `context`
    entries (filled with K/V of the model's own scale: a short real prefill's, tiled)."""
    cfg, bs = lm.config, 16
    per_seq = -(-(context + steps) // bs)
    cache = PagedKVCache.create(cfg.num_layers, seqs * per_seq, bs, cfg.num_kv_heads, cfg.head_dim,
                                lm.model.dtype, codec)
    cache.bind_model(lm.model)  # a codec that stores K/V through the model's weights (XQuant)
    tables = torch.arange(seqs * per_seq).view(seqs, per_seq)
    # real K/V rows: one 256-token prefill into a plain cache, tiled over every sequence
    seed_cache = PagedKVCache.create(cfg.num_layers, 16, bs, cfg.num_kv_heads, cfg.head_dim, lm.model.dtype)
    ids = torch.tensor(lm.tokenizer.encode(default_eval_text()[:4000])[:256])
    meta = AttentionMetadata([256], [256], torch.arange(256), torch.arange(16)[None])
    lm.model(ids, torch.arange(256), meta, seed_cache, get_attention_backend("torch"))
    for layer in range(cfg.num_layers):
        k, v = (t.reshape(-1, cfg.num_kv_heads, cfg.head_dim) for t in seed_cache.read_blocks(layer, torch.arange(16)))
        for s in range(seqs):
            for start in range(0, context, 256):
                n = min(256, context - start)
                slots = tables[s, start // bs:] [:(n + bs - 1) // bs, None] * bs + torch.arange(bs)
                cache.write(layer, slots.flatten()[:n], k[:n], v[:n], positions=torch.arange(n))  # as rotated
    decoder = lm.model.native_decoder(cache, get_attention_backend("batched"))
    times = []
    for step in range(steps):
        pos = context + step
        slots = tables[:, pos // bs] * bs + pos % bs
        meta = AttentionMetadata([1] * seqs, [pos + 1] * seqs, slots, tables)
        ids = torch.randint(0, cfg.vocab_size, (seqs,))
        t0 = time.perf_counter()
        decoder(ids, torch.full((seqs,), pos), meta)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--ppl-tokens", type=int, default=16384, help="tokens of text for the decode-path perplexity (0: skip)")
    p.add_argument("--seqs", type=int, default=32)
    p.add_argument("--context-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--ppl-context", type=int, default=512, help="tokens per perplexity window (each starts with an empty cache)")
    p.add_argument("--block-size", type=int, default=16,
                   help="tokens per block for the bytes and the perplexity (KIVI's key group; the step timing keeps 16)")
    args = p.parse_args()
    set_threads(args.threads)
    codecs = args.codecs.split(",")
    lm = load_model(args.model, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    text = default_eval_text()
    rows = {}
    for codec in codecs:
        spec = kv_cache_spec(EngineConfig(model=args.model, dtype=args.dtype, kv_cache_dtype=codec,
                                         block_size=args.block_size), lm.config)
        # what 1 GiB of blocks holds (a codec's scratch pool, sized by max_num_seqs, not counted)
        row = {"bytes_per_token": spec.bytes_per_token, "tokens_in_1GiB": 2**30 // spec.bytes_per_block * spec.block_size,
               "scratch_bytes_at_defaults": spec.scratch_bytes, "bytes_per_token_held": spec.bytes_per_token_held,
               # one 4,096-token sequence: its blocks and its open block's scratch slot in every layer
               "bytes_per_token_4k_seq": (-(-4096 // spec.block_size) * spec.bytes_per_block
                                          + spec.num_layers * spec.codec.bytes_per_scratch_slot()) / 4096}
        if args.ppl_tokens:
            r = evaluate_perplexity(lm.model, lm.tokenizer, text, context=args.ppl_context, max_tokens=args.ppl_tokens, decode=True,
                                    kv_cache_dtype=codec, block_size=args.block_size, progress=False)
            row["ppl_decode"], row["ppl_seconds"] = r.perplexity, r.seconds
        if args.context_len:
            sec = decode_step_seconds(lm, codec, args.seqs, args.context_len, args.steps)
            row["decode_step_s"], row["decode_tok_s"] = sec, args.seqs / sec
        rows[codec] = row
        print(codec, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    base, ref = rows.get("auto", {}), rows.get("bf16", {})
    for codec, row in rows.items():
        if "ppl_decode" in row and "ppl_decode" in base:
            row["ppl_vs_auto"] = row["ppl_decode"] / base["ppl_decode"] - 1
        if "decode_tok_s" in row and "decode_tok_s" in ref:
            row["decode_vs_bf16"] = row["decode_tok_s"] / ref["decode_tok_s"]
    print(f"{'codec':10} {'B/token':>8} {'tokens/GiB':>11} {'ppl decode':>11} {'vs auto':>8} {'tok/s':>8} {'vs bf16':>8}")
    for codec, r in rows.items():
        print(f"{codec:10} {r['bytes_per_token']:8.0f} {r['tokens_in_1GiB']:11,} {r.get('ppl_decode', float('nan')):11.4f} "
              f"{100 * r.get('ppl_vs_auto', float('nan')):+7.2f}% {r.get('decode_tok_s', float('nan')):8.1f} "
              f"{r.get('decode_vs_bf16', float('nan')):8.2f}")
    if args.output:
        write_json(args.output, {"args": vars(args), "codecs": rows})


if __name__ == "__main__":
    main()
