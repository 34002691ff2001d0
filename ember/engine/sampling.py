"""Sampler: one token per sequence from a batch of logits, each row with its own parameters.

Rows are processed together where the work is the same (temperature, top-k, top-p, min-p,
softmax) and one by one only where each row needs its own state (penalty counts, seeded
random streams). A seeded row draws its randomness from its own generator, so it samples
the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.request import Request
from ember.structured.backend import apply_masks


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (sampled token logprob, rank, [(token, logprob) top-N]) or None when not asked
    logprobs: list[tuple[float, int, list[tuple[int, float]]] | None]


def apply_penalties(logits: torch.Tensor, requests: list[Request]) -> None:
    """Presence/frequency penalties on generated tokens, repetition penalty on prompt + generated."""
    vocab = logits.shape[-1]
    for row, req in enumerate(requests):
        p = req.params
        if not p.uses_penalties:
            continue
        if p.presence_penalty or p.frequency_penalty:
            if req.output_token_ids:
                counts = torch.bincount(torch.tensor(req.output_token_ids), minlength=vocab)[:vocab].float()
                logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.all_token_ids)), dtype=torch.long)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)


def mask_stop_tokens(logits: torch.Tensor, requests: list[Request]) -> None:
    """Until min_tokens are out, EOS and stop tokens cannot be sampled."""
    for row, req in enumerate(requests):
        if req.matcher is not None and req.matcher.is_terminated:
            continue  # the grammar is complete: EOS is all it allows
        if len(req.output_token_ids) < req.params.min_tokens:
            ids = list(req.params.stop_token_ids) + ([req.eos_token_id] if req.eos_token_id is not None else [])
            if ids:
                logits[row, ids] = float("-inf")


def top_k_top_p_min_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Set filtered-out logits to -inf. top_k 0 = off, top_p 1 = off, min_p 0 = off (per row)."""
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[-1]
        ranks = torch.arange(vocab).expand_as(sorted_logits)
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
        remove = ranks >= k[:, None]
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        before = probs.cumsum(dim=-1) - probs
        remove |= before >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    if bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


class Sampler:
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> SampleResult:
        logits = logits.float()
        raw_data = logits.data_ptr()
        want_logprobs = [r.params.logprobs is not None for r in requests]
        raw_logprobs = logits.log_softmax(dim=-1) if any(want_logprobs) else None
        if any(r.params.uses_penalties for r in requests) or any(r.params.min_tokens for r in requests):
            logits = logits.clone()
            apply_penalties(logits, requests)
            mask_stop_tokens(logits, requests)
        constrained = [i for i, r in enumerate(requests) if r.matcher is not None]
        if constrained:  # structured outputs: only the tokens each grammar allows next
            logits = logits.clone() if logits.data_ptr() == raw_data else logits
            apply_masks(logits, constrained, [requests[i].matcher for i in constrained])
        tokens = logits.argmax(dim=-1)
        sample_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if sample_rows:
            rows = torch.tensor(sample_rows)
            sub = logits[rows]
            params = [requests[i].params for i in sample_rows]
            sub = sub / torch.tensor([p.temperature for p in params])[:, None]
            sub = top_k_top_p_min_p(
                sub,
                torch.tensor([min(p.top_k, sub.shape[-1]) for p in params]),  # beyond the vocabulary: off
                torch.tensor([p.top_p for p in params]),
                torch.tensor([p.min_p for p in params]),
            )
            probs = sub.softmax(dim=-1)
            # Exponential race: argmax(p / E) with E ~ Exp(1) is a sample from p, and each row's
            # noise comes from its own generator when seeded.
            noise = torch.empty_like(probs)
            for j, i in enumerate(sample_rows):
                noise[j].exponential_(generator=requests[i].generator or self.generator)
            tokens[rows] = (probs / noise).argmax(dim=-1)
        token_list = tokens.tolist()
        logprobs: list = [None] * len(requests)
        for i, req in enumerate(requests):
            if want_logprobs[i]:
                row = raw_logprobs[i]
                chosen = float(row[token_list[i]])
                rank = int((row > row[token_list[i]]).sum()) + 1
                top = []
                if req.params.logprobs:
                    values, ids = row.topk(req.params.logprobs)
                    top = list(zip(ids.tolist(), values.tolist()))
                logprobs[i] = (chosen, rank, top)
        return SampleResult(token_list, logprobs)
