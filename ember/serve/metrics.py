"""Prometheus metrics under `ember:`, named like vLLM's so existing dashboards fit.

Gauges and totals the engine already keeps are read at scrape time (no bookkeeping in the
step loop); latencies are observed by the engine thread through the EngineObserver hooks.
Each server has its own registry, so several can live in one process (tests).
Counts are per sequence: a request with n=2 finishes twice.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ember.engine.async_engine import EngineObserver
from ember.engine.llm_engine import LLMEngine
from ember.request import Request

disable_created_metrics()  # vLLM's exposition has no *_created series either

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 10, 20)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 60, 120, 240, 480, 960, 1920)


class _EngineCollector:
    """Reads the engine's own counters when Prometheus scrapes."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine

    def collect(self):
        e = self.engine
        yield GaugeMetricFamily("ember:num_requests_running", "Sequences in the running batch.",
                                value=len(e.scheduler.running))
        yield GaugeMetricFamily("ember:num_requests_waiting", "Sequences waiting to be scheduled.",
                                value=len(e.scheduler.waiting))
        yield GaugeMetricFamily("ember:kv_cache_usage_perc", "Fraction of KV blocks held by requests (0..1).",
                                value=e.kv.pool.usage())
        yield GaugeMetricFamily("ember:kv_pinned_blocks", "KV blocks pinned for agent programs' next turns (continuum).",
                                value=e.scheduler.pins.num_blocks)
        yield CounterMetricFamily("ember:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=e.kv.stats.queries)
        yield CounterMetricFamily("ember:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                  value=e.kv.stats.hits)
        chunks = e.kv.chunks
        yield CounterMetricFamily("ember:chunk_cache_queries", "Marked chunks looked up in the chunk cache.",
                                  value=chunks.stats.lookups)
        yield CounterMetricFamily("ember:chunk_cache_hits", "Marked chunks found in the chunk cache.",
                                  value=chunks.stats.hits)
        yield CounterMetricFamily("ember:chunk_cache_tokens_reused", "Chunk tokens whose KV came from the chunk cache.",
                                  value=chunks.stats.tokens_reused)
        yield CounterMetricFamily("ember:chunk_cache_tokens_recomputed",
                                  "Chunk tokens a blend computed again (those that deviated most).",
                                  value=chunks.stats.tokens_recomputed)
        yield CounterMetricFamily("ember:chunk_cache_blends", "Prompts blended from cached chunks.",
                                  value=chunks.stats.blends)
        yield GaugeMetricFamily("ember:chunk_cache_bytes", "KV bytes the chunk cache holds (evictable).",
                                value=chunks.cached_blocks() * e.kv_spec.bytes_per_block)
        yield CounterMetricFamily("ember:prompt_tokens", "Prompt tokens received.", value=e.total_prompt_tokens)
        yield CounterMetricFamily("ember:generation_tokens", "Tokens generated.", value=e.total_generated_tokens)
        yield CounterMetricFamily("ember:num_preemptions", "Preemptions.", value=e.scheduler.num_preemptions)


class ServerMetrics(EngineObserver):
    def __init__(self, engine: LLMEngine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        r = self.registry
        self.request_success = Counter("ember:request_success", "Finished sequences, by finish reason.",
                                       ["finished_reason"], registry=r)
        self.ttft = Histogram("ember:time_to_first_token_seconds", "Time to first token (from the HTTP request).",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("ember:inter_token_latency_seconds", "Time between two tokens of a sequence.",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("ember:e2e_request_latency_seconds", "Request latency, arrival to finish.",
                             buckets=E2E_BUCKETS, registry=r)
        self.queue_time = Histogram("ember:request_queue_time_seconds", "Arrival to first scheduled.",
                                    buckets=E2E_BUCKETS, registry=r)
        self._last_token: dict[str, float] = {}  # engine thread only

    def on_tokens(self, seq: Request, num_new: int, now: float) -> None:
        last = self._last_token.get(seq.request_id)
        if last is None:
            self.ttft.observe(now - seq.metrics.arrival_time)
        elif num_new:
            gap = (now - last) / num_new
            for _ in range(num_new):
                self.itl.observe(gap)
        self._last_token[seq.request_id] = now

    def on_finish(self, seq: Request, now: float) -> None:
        self._last_token.pop(seq.request_id, None)
        self.request_success.labels(seq.finish_reason or "abort").inc()
        self.e2e.observe(now - seq.metrics.arrival_time)
        if seq.metrics.first_scheduled_time is not None:
            self.queue_time.observe(max(0.0, seq.metrics.first_scheduled_time - seq.metrics.arrival_time))

    def render(self) -> bytes:
        return generate_latest(self.registry)
