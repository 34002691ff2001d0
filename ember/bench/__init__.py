"""`ember bench`: serving benchmarks against any OpenAI-compatible endpoint, offline throughput and
latency in-process, reports (table, JSON, PNG plots) and energy counters where the machine has them."""
