"""The model-free half of an engine: policy, KV block manager and scheduler, built from an
EngineConfig. The engine and the simulator (`ember/sim`) both build theirs here, so a simulated
replica schedules with exactly the objects and settings a real one would."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from ember.engine.policies import POLICIES, Policy
from ember.engine.scheduler import Scheduler
from ember.kv.manager import KVCacheManager
from ember.kv.preemption import Preemptor


def build_scheduler(config, num_blocks: int, block_size: int, eos_token_ids: Iterable[int] = (),
                    policy: Policy | None = None, preemptor: Preemptor | None = None,
                    clock: Callable[[], float] = time.monotonic) -> Scheduler:
    """A Scheduler over a fresh KVCacheManager of `num_blocks` blocks; `policy` defaults to
    config.policy (pass one already built to fail on a bad name before slow work); `clock`
    stamps request metrics and is what policies read as "now" (a simulator passes its own)."""
    policy = policy if policy is not None else POLICIES.create(config.policy, config)
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=config.enable_prefix_caching,
                        enable_chunk_cache=config.enable_chunk_cache)
    return Scheduler(kv, policy, config.max_num_seqs, config.max_num_batched_tokens, preemptor=preemptor,
                     eos_token_ids=eos_token_ids, clock=clock)
