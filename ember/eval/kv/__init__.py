"""`ember eval kv`: what a KV method (codec, press) costs in accuracy and saves in memory,
measured through the serving engine (paging, chunked prefill, the press, the fused C step)."""
