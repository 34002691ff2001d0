"""GET /stats.json: one JSON snapshot of the engine for the web dashboard (serve/web/).

The same numbers /metrics exposes, plus the engine's configuration, in a shape a browser
reads without parsing Prometheus text. Totals are cumulative; the page turns two snapshots
into rates, so the server keeps no per-client state and a poll costs one pass over a few
counters and four histograms.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram

from ember import __version__
from ember.engine.llm_engine import LLMEngine
from ember.serve.metrics import ServerMetrics


def engine_config(engine: LLMEngine, model_name: str) -> dict:
    """What the engine runs with, `auto` options resolved where the engine resolved them."""
    c = engine.config
    kv_codec = c.kv_cache_dtype if c.kv_cache_dtype != "auto" else f"{c.dtype} (auto)"
    return {
        "model": model_name, "dtype": c.dtype, "linear": c.linear,  # no file path: the feed is public
        "attention": c.attention, "kv_codec": kv_codec, "kv_press": c.kv_press or None, "policy": c.policy,
        "preemption": c.preemption, "block_size": engine.kv_spec.block_size, "num_blocks": engine.num_blocks,
        "kv_cache_bytes": engine.kv_cache_bytes, "max_model_len": engine.max_model_len,
        "max_num_seqs": c.max_num_seqs, "max_num_batched_tokens": c.max_num_batched_tokens,
        "prefix_caching": c.enable_prefix_caching, "threads": c.threads,
        "chunk_cache": c.enable_chunk_cache, "blend_recompute_ratio": c.blend_recompute_ratio,
        "fused_decode": engine.fused_decode_off_reason is None, "version": __version__,
    }


def histogram(h: Histogram) -> dict:
    """Upper bounds and per-bucket (not cumulative) counts; the last bound is +Inf, written null."""
    bounds, cumulative, total, count = [], [], 0.0, 0
    for family in h.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                bounds.append(None if le == float("inf") else le)
                cumulative.append(int(s.value))
            elif s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = int(s.value)
    counts = [c - p for c, p in zip(cumulative, [0] + cumulative[:-1])]
    return {"le": bounds, "counts": counts, "sum": total, "count": count}


def snapshot(engine: LLMEngine, metrics: ServerMetrics, config: dict) -> dict:
    """Read from the event loop while the engine thread steps, as the Prometheus collector
    does: each value is one attribute read, so a snapshot may straddle a step, never tear one."""
    pool, sched, step = engine.kv.pool, engine.scheduler, engine.last_step
    finished = {}
    for family in metrics.request_success.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                finished[s.labels["finished_reason"]] = int(s.value)
    return {
        "time": time.time(),
        "config": config,
        "requests": {"running": len(sched.running), "waiting": len(sched.waiting), "finished": finished,
                     "preemptions": sched.num_preemptions},
        "kv_cache": {"usage": pool.usage(), "used_blocks": pool.num_used_blocks, "num_blocks": pool.num_blocks,
                     "cached_blocks": pool.num_cached_blocks, "pinned_blocks": sched.pins.num_blocks},
        "prefix_cache": {"queries": engine.kv.stats.queries, "hits": engine.kv.stats.hits},
        "chunk_cache": {"queries": engine.kv.chunks.stats.lookups, "hits": engine.kv.chunks.stats.hits,
                        "blends": engine.kv.chunks.stats.blends, "tokens_reused": engine.kv.chunks.stats.tokens_reused,
                        "cached_chunks": engine.kv.chunks.num_chunks},
        "tokens": {"prompt": engine.total_prompt_tokens, "generation": engine.total_generated_tokens},
        "last_step": {"tokens": step.num_scheduled_tokens, "seqs": step.num_seqs, "seconds": step.seconds},
        "latency": {"ttft": histogram(metrics.ttft), "itl": histogram(metrics.itl), "e2e": histogram(metrics.e2e),
                    "queue": histogram(metrics.queue_time)},
    }
