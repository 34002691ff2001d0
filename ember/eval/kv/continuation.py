"""Continuation perplexity through the serving engine: each window's first C tokens are the
prompt (prefilled in chunks, then pressed if a press is on), and its next T tokens are scored
one decode step at a time, teacher-forced.

The engine runs unchanged but for its sampler: `ForcedSampler` takes each sequence's next
token from the text instead of sampling, and keeps the log-probability the model gave it. So
the continuation reads the cache exactly as generation would: through the codec, the paged
blocks the press compacted, and the fused C decode step where it applies. The first scored
token is predicted by the prefill itself (before the press runs, as kvpress's pipeline also
predicts from the full prompt); the other T-1 read the compressed cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ember.engine.sampling import SampleResult
from ember.sampling_params import SamplingParams


class ForcedSampler:
    """The engine's sampler, replaced: each request's next token is the text's."""

    def __init__(self, targets: dict[str, list[int]]):
        self.targets = targets  # engine sequence id -> the continuation's tokens
        self.nll: dict[str, list[float]] = {rid: [] for rid in targets}
        self.held_blocks: dict[str, int] = {}  # blocks each sequence held at its second step

    def __call__(self, logits: torch.Tensor, requests) -> SampleResult:
        logprobs = logits.float().log_softmax(dim=-1)
        tokens = []
        for row, request in enumerate(requests):
            done = len(request.output_token_ids)
            token = self.targets[request.request_id][done]
            self.nll[request.request_id].append(-float(logprobs[row, token]))
            if done == 1:  # after the press: what the sequence's context now takes
                self.held_blocks[request.request_id] = len(request.block_ids)
            tokens.append(token)
        return SampleResult(tokens, [None] * len(requests))


@dataclass
class ContinuationResult:
    perplexity: float
    nll_mean: float
    tokens_scored: int
    windows: int
    held_blocks_mean: float  # blocks a sequence held once pressed, before the continuation grew it


def continuation_nll(llm, windows: list[list[int]], context: int, progress=None) -> ContinuationResult:
    """Score windows[i][context:] given windows[i][:context] on `llm` (an ember.LLM whose
    engine carries the KV method); all windows run as one batch of requests."""
    engine = llm.engine
    steps = len(windows[0]) - context
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    ids = [engine.add_request({"prompt_token_ids": w[:context]}, params) for w in windows]
    seqs = [engine.groups[i][0] for i in ids]
    sampler = ForcedSampler({s.request_id: w[context:] for s, w in zip(seqs, windows)})
    saved, engine.sampler = engine.sampler, sampler
    try:
        while engine.has_unfinished():
            engine.step()
            if progress is not None:
                progress(sum(len(s.output_token_ids) for s in seqs))
    finally:
        engine.sampler = saved
        for i in ids:
            engine.release(i)
    nll = [x for s in seqs for x in sampler.nll[s.request_id]]
    mean = sum(nll) / len(nll)
    held = [sampler.held_blocks.get(s.request_id, len(s.block_ids)) for s in seqs]
    return ContinuationResult(math.exp(mean), mean, len(nll), len(windows), sum(held) / len(held))
