"""`ember bench latency`: one batch of B prompts of P tokens generating O tokens each, timed.

Per iteration two fresh batches run (fresh text, so the prefix cache never hits): one with
max_tokens=1, whose wall time is the prefill time (prompt processing up to the first token), and
one with max_tokens=O and ignore_eos, whose wall time is the end-to-end latency. The decode time
per step is (E2E - prefill) / (O - 1): one step makes one token for each of the B sequences.
"""

from __future__ import annotations

import time

import numpy as np

from ember.bench.corpus import PromptMaker
from ember.bench.metrics import summarize


def _timed(llm, batch: list[list[int]], max_tokens: int) -> float:
    from ember import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    llm.generate([{"prompt_token_ids": ids} for ids in batch], params)
    return time.perf_counter() - t0


def run_latency(llm, batch_size: int, input_len: int, output_len: int, iters: int, warmup: int,
                seed: int, progress=None) -> dict:
    """Figures of one batch size: prefill and E2E seconds per iteration, decode ms per step, rates."""
    maker = PromptMaker(llm.tokenizer, seed=seed + batch_size)
    prefill, e2e = [], []
    for it in range(warmup + iters):
        p = _timed(llm, [maker.token_ids(input_len) for _ in range(batch_size)], 1)
        e = _timed(llm, [maker.token_ids(input_len) for _ in range(batch_size)], output_len)
        if it >= warmup:
            prefill.append(p)
            e2e.append(e)
        if progress is not None:
            progress()
    decode = [(e - p) / (output_len - 1) for p, e in zip(prefill, e2e)] if output_len > 1 else []
    mean_prefill, mean_e2e = float(np.mean(prefill)), float(np.mean(e2e))
    metrics = {
        "prefill_s": mean_prefill,
        "e2e_s": mean_e2e,
        "decode_ms_per_step": float(np.mean(decode)) * 1000.0 if decode else 0.0,
        "prefill_tok_per_s": batch_size * input_len / mean_prefill,
        "decode_tok_per_s": batch_size / float(np.mean(decode)) if decode and np.mean(decode) > 0 else 0.0,
        "output_tok_per_s": batch_size * output_len / mean_e2e,
    }
    return {"batch_size": batch_size, "input_len": input_len, "output_len": output_len, "iterations": iters,
            "metrics": metrics, "prefill_s_all": summarize(prefill), "e2e_s_all": summarize(e2e),
            "raw": {"prefill_s": prefill, "e2e_s": e2e}}
