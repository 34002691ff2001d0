"""What a swap costs the step, plain swap against FastSwitch (issue 18), at the default model's
KV shape (30 layers, 3 KV heads of 64, fp32 or another --kv-cache-dtype), without a model.

A request of --tokens tokens is swapped out and back --cycles times, decoding --decode tokens
between cycles (priority churn: the same request preempted again and again), in a pool whose
free list was shuffled first (--fragment, as after a long run) or fresh. Reported per swap: the
seconds the step waits (swap: out and in; FastSwitch: out, plus in only if the copy has not
landed by the next step, which here it always has; the first swap-out, which finds nothing on
the host yet, apart from the median of the later ones), the copies made (runs) and the blocks
copied and reused. Every tensor is written once before timing (a fresh cache's pages are
mapped on first touch, which in this VM costs more than the copy).

    python benchmarks/fastswitch_copies.py --output benchmarks/results/fastswitch_copies.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from common import environment, write_json

from ember.kv.cache import PagedKVCache
from ember.kv.fastswitch import FastSwitchPreemptor
from ember.kv.manager import KVCacheManager
from ember.kv.swap import SwapPreemptor
from ember.request import Request
from ember.sampling_params import SamplingParams


def one(kind: str, args, fragment: bool) -> dict:
    bs = 16
    num_blocks = args.pool_tokens // bs
    cache = PagedKVCache.create(30, num_blocks, bs, 3, 64, kv_cache_dtype=args.kv_cache_dtype)
    kv = KVCacheManager(num_blocks, bs, enable_prefix_caching=False)
    if fragment:  # a free list in no order, as blocks come back from many requests
        free = list(kv.pool._free)
        random.Random(0).shuffle(free)
        kv.pool._free.clear()
        kv.pool._free.extend(free)
    host = (args.tokens + args.cycles * args.decode) // bs + 8
    pre = SwapPreemptor(cache, host) if kind == "swap" else FastSwitchPreemptor(cache, host)
    for layers in (cache.layers, pre.host.layers if kind == "swap" else pre.host_cache.layers):
        for tensors in layers:
            for t in tensors.values():
                t.fill_(0)
    req = Request("r", list(range(1, args.tokens + 1)), SamplingParams(max_tokens=10**6), 10**6)
    assert kv.allocate_slots(req, args.tokens)
    req.num_computed_tokens = args.tokens
    out_s, in_s = [], []
    for c in range(args.cycles):
        t = time.perf_counter()
        pre.preempt(req, kv)
        out_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        done = pre.resume(req, kv)
        in_s.append(time.perf_counter() - t)
        if not done:  # FastSwitch: the copy runs while the step would; the next step admits it
            time.sleep(args.step_ms / 1000)
            t = time.perf_counter()
            assert pre.resume(req, kv)
            in_s[-1] += time.perf_counter() - t
        for _ in range(args.decode):
            req.output_token_ids.append(7)
            assert kv.allocate_slots(req, 1)
            req.num_computed_tokens += 1
    row = {"preemption": kind, "fragmented": fragment, "first_out_ms": 1000 * out_s[0],
           "out_ms": 1000 * statistics.median(out_s[1:]), "in_ms_on_step": 1000 * statistics.median(in_s)}
    if kind == "fastswitch":
        s = pre.stats
        row.update(runs_out=s.runs_out / s.swapped_out, blocks_out=s.blocks_copied_out / s.swapped_out,
                   blocks_reused=s.blocks_reused / s.swapped_out, in_ms_background=1000 * s.seconds_in / s.swapped_in)
    else:
        row.update(blocks_out=-(-args.tokens // bs))
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--decode", type=int, default=32, help="tokens decoded between two swaps")
    p.add_argument("--cycles", type=int, default=9)
    p.add_argument("--pool-tokens", type=int, default=65536)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--step-ms", type=float, default=60.0, help="a step's duration, for the copy in flight")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    rows = [one(kind, args, frag) for frag in (False, True) for kind in ("swap", "fastswitch")]
    for r in rows:
        print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    write_json(args.output, {"environment": environment(1), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ".")
    sys.exit(main())
