"""Run `ember eval kv`: each KV method on one loaded model, continuation perplexity, passkey
retrieval and the memory it holds, as one JSON-ready dict per method."""

from __future__ import annotations

import time

from tqdm import tqdm

from ember.config import parse_bytes
from ember.eval.kv.continuation import continuation_nll
from ember.eval.kv.methods import KVMethod, bf16_bytes_per_token
from ember.eval.kv.retrieval import passkey_accuracy, passkey_cases
from ember.llm import LLM


def text_windows(tokenizer, text: str, count: int, length: int) -> list[list[int]]:
    """`count` non-overlapping windows of `length` tokens from the start of the text."""
    ids = tokenizer.encode(text)
    if len(ids) < count * length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {count} windows of {length}")
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def evaluate_method(loaded, config: dict, method: KVMethod, windows, context: int, cases, bar) -> dict:
    llm = LLM(loaded=loaded, **config, **method.engine_options())
    engine, spec = llm.engine, llm.engine.kv_spec
    t0 = time.perf_counter()
    cont = continuation_nll(llm, windows, context, progress=lambda n: bar.set_postfix_str(f"{method.name}: {n} tokens"))
    bar.update(1)
    row = {"method": method.name, "codec": method.codec, "press": method.press,
           "perplexity": cont.perplexity, "nll_mean": cont.nll_mean, "tokens_scored": cont.tokens_scored}
    # Memory: the blocks a context holds once pressed (the prompt and the first generated
    # token), against bf16 blocks holding all of it.
    held = cont.held_blocks_mean * spec.bytes_per_block
    bf16 = -(-(context + 1) // spec.block_size) * spec.block_size * bf16_bytes_per_token(engine.model_config)
    row.update(bytes_per_token_stored=spec.bytes_per_token, bytes_per_context_token=held / (context + 1),
               compression_vs_bf16=bf16 / held)
    # sequences of this shape that fit in --kv-cache-memory (or --kv-cache-tokens), counted
    # from the bytes, not from the blocks this run allocated (capped by max_num_seqs)
    seq_blocks = -(-(int(context * method.kept_share) + len(windows[0]) - context) // spec.block_size)
    if config.get("kv_cache_tokens"):
        row["sequences_fit"] = -(-config["kv_cache_tokens"] // spec.block_size) // seq_blocks
    else:
        row["sequences_fit"] = parse_bytes(config["kv_cache_memory"]) // (seq_blocks * spec.bytes_per_block)
    if cases:
        row["passkey"] = passkey_accuracy(llm, cases)
    bar.update(1)
    row["seconds"] = time.perf_counter() - t0
    return row


def run_kv_eval(loaded, config: dict, methods: list[KVMethod], text: str, *, context: int, continuation: int,
                windows: int, passkey_lengths: list[int], passkey_depths: list[float], passkey_per_cell: int,
                progress: bool = True) -> dict:
    tok = loaded.tokenizer
    wins = text_windows(tok, text, windows, context + continuation)
    cases = passkey_cases(tok, text, passkey_lengths, passkey_depths, passkey_per_cell) if passkey_lengths else []
    rows = []
    with tqdm(total=2 * len(methods), desc="eval kv", unit="phase", disable=not progress) as bar:
        for method in methods:
            rows.append(evaluate_method(loaded, config, method, wins, context, cases, bar))
    return {"context": context, "continuation": continuation, "windows": windows,
            "passkey": {"lengths": passkey_lengths, "depths": passkey_depths, "per_cell": passkey_per_cell},
            "results": rows}
