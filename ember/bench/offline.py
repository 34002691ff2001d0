"""`ember bench throughput`: a whole workload through the in-process `LLM.generate` at once.

All requests are submitted together (like --request-rate inf against a server) and the engine
batches them continuously. Throughput is requests, output tokens and all tokens over the wall
time of the one `generate` call; per-request TTFT and E2E come from the engine's own request
metrics (arrival, first token, finish), so they include the time a request waited to be scheduled.
"""

from __future__ import annotations

import time

from ember.bench.metrics import RequestResult, compute_metrics, summarize
from ember.bench.workloads import Session


def prompts_of(sessions: list[Session], chunk_marks: bool = True) -> list[tuple[str | dict, int]]:
    """(prompt, max_tokens) per request; a shared prefix is the text before the question; rag
    documents come before it, as chunks ({"documents": [...], "prompt": ...}) unless not `chunk_marks`."""
    out = []
    for s in sessions:
        if len(s.turns) != 1:
            raise ValueError("multi-turn and agent need the server's replies between turns; run them with `ember bench serve`")
        t = s.turns[0]
        text = "\n\n".join(p for p in (t.system, t.text) if p)
        docs = [d + "\n\n" for d in t.documents]
        if docs and chunk_marks:
            out.append(({"documents": docs, "prompt": text}, t.output_len))
        else:
            out.append(("".join(docs) + text, t.output_len))
    return out


def run_throughput(llm, sessions: list[Session], ignore_eos: bool, temperature: float, seed: int,
                   use_chat: bool = False, progress: bool = True, chunk_marks: bool = True) -> dict:
    """Generate every request of `sessions`; returns the run (metrics and per-request records)."""
    from ember import SamplingParams

    items = prompts_of(sessions, chunk_marks)
    if use_chat:
        if any(isinstance(p, dict) for p, _ in items):
            raise ValueError("rag documents as chunks go through chat with `ember bench serve`; "
                             "offline, drop --chat or pass --no-chunk-marks")
        prompts = [{"prompt_token_ids": llm.encode_chat([{"role": "user", "content": text}])} for text, _ in items]
    else:
        prompts = [text for text, _ in items]
    params = [SamplingParams(max_tokens=n, temperature=temperature, ignore_eos=ignore_eos, seed=seed + i)
              for i, (_, n) in enumerate(items)]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=progress)
    duration = time.perf_counter() - t0
    base = min(o.metrics.arrival_time for o in outs)  # the engine's clock (monotonic) at the first arrival
    results = []
    for o in outs:
        m = o.metrics
        first = [m.first_token_time - base] if m.first_token_time is not None else []
        results.append(RequestResult(True, m.arrival_time - base, end=(m.finished_time or m.arrival_time) - base,
                                     chunk_times=first, prompt_tokens=len(o.prompt_token_ids),
                                     output_tokens=len(o.outputs[0].token_ids)))
    metrics = compute_metrics(results, duration)
    # the engine reports the first and last token only, so inter-token gaps are not known per token
    metrics.pop("itl_ms")
    metrics["tpot_ms"] = summarize([r.tpot for r in results if r.tpot is not None], 1000.0)
    return {"num_requests": len(outs), "metrics": metrics, "requests": [r.to_json() for r in results]}
