"""Passkey retrieval (RULER's simplest needle task), built locally from the evaluation text:
a five-digit key stated once at a chosen depth inside filler text, asked for at the end;
greedy generation through the serving engine; exact match of the key in the answer.

The prompt is a plain completion (no chat template), the form the passkey task was
introduced in (Mohtashami and Jaggi, 2023), so the model answers by continuing
"The pass key is".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ember.sampling_params import SamplingParams

HEAD = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. " \
       "I will quiz you about the pass key.\n"
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
ANSWER_TOKENS = 8


@dataclass
class PasskeyCase:
    prompt_token_ids: list[int]
    key: str
    length: int
    depth: float


def passkey_cases(tokenizer, filler_text: str, lengths: list[int], depths: list[float], per_cell: int,
                  seed: int = 0) -> list[PasskeyCase]:
    """per_cell prompts of exactly `length` tokens for every length and depth (0: the key right
    after the instructions, 1: right before the question)."""
    rng = random.Random(seed)
    filler = tokenizer.encode(filler_text)
    head, tail = tokenizer.encode(HEAD), tokenizer.encode(QUESTION)
    cases = []
    for length in lengths:
        for depth in depths:
            for _ in range(per_cell):
                key = str(rng.randrange(10000, 100000))
                needle = tokenizer.encode(NEEDLE.format(key=key))
                body = length - len(head) - len(needle) - len(tail)
                if body < 0 or body > len(filler):
                    raise ValueError(f"passkey length {length}: the filler text cannot make a prompt that long")
                start = rng.randrange(0, len(filler) - body + 1)
                text, at = filler[start:start + body], int(body * depth)
                cases.append(PasskeyCase(head + text[:at] + needle + text[at:] + tail, key, length, depth))
    return cases


def passkey_accuracy(llm, cases: list[PasskeyCase], progress=None) -> dict:
    """Exact-match accuracy per length (and overall) on `llm` (an ember.LLM carrying the method)."""
    params = SamplingParams(temperature=0, max_tokens=ANSWER_TOKENS)
    outputs = llm.generate([{"prompt_token_ids": c.prompt_token_ids} for c in cases], params)
    right: dict[int, list[bool]] = {}
    for case, out in zip(cases, outputs):
        right.setdefault(case.length, []).append(case.key in out.outputs[0].text)
    if progress is not None:
        progress(len(cases))
    per_length = {str(n): sum(r) / len(r) for n, r in right.items()}
    every = [x for r in right.values() for x in r]
    return {"accuracy": sum(every) / len(every), "per_length": per_length, "cases": len(every)}
