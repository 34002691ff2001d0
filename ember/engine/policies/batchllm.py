"""`batchllm`: offline batches grouped by shared prefixes (BatchLLM, Zheng et al. 2024).

For `LLM.generate` over many prompts known in advance. Arrival order means nothing offline;
what costs is recomputing a prefix that was evicted between two requests that share it.
Waiting requests are grouped by their first KV block of prompt (requests that share less
than a block share nothing the cache can reuse), and inside a group ordered by their prompt
tokens, which walks the prefix tree depth first: requests sharing longer prefixes run back to
back while the prefix is cached, and a group's prefix is left to the LRU once its last
request is in. Groups go in descending order of their decode/prompt length ratio (BatchLLM's
rule: decode-heavy groups start early, so their long tails overlap the prefill-heavy groups),
ranked when a group is first seen and kept while its requests leave the queue.
Admission is by KV memory: the scheduler admits while blocks are free; set --max-num-seqs
high so the count does not bind first. Preempted requests go first, victims are FCFS's.
"""

from __future__ import annotations

from ember.engine.policies.base import POLICIES, SchedulerView
from ember.engine.policies.fcfs import FCFSPolicy
from ember.request import Request


@POLICIES.register("batchllm")
class BatchLLMPolicy(FCFSPolicy):
    name = "batchllm"

    def __init__(self, config=None):
        super().__init__(config)
        self.block_size = getattr(config, "block_size", 16)
        self._rank: dict[tuple, tuple[float, int]] = {}  # group -> its place, fixed when first seen

    def order(self, waiting: list[Request], view: SchedulerView | None = None) -> list[Request]:
        bs = view.block_size if view is not None else self.block_size
        groups: dict[tuple[int, ...], list[Request]] = {}
        for r in waiting:
            head = tuple(r.prompt_token_ids[:bs]) if r.num_prompt_tokens > bs else ("alone", r.arrival_order)
            groups.setdefault(head, []).append(r)

        def ratio(members: list[Request]) -> float:
            return sum(r.max_tokens for r in members) / max(sum(r.num_prompt_tokens for r in members), 1)

        for head, members in groups.items():  # a group keeps its place as its members leave
            self._rank.setdefault(head, (-ratio(members), min(r.arrival_order for r in members)))
        for head in [h for h in self._rank if h not in groups]:
            del self._rank[head]  # all its requests are in: forget it
        ordered_groups = [groups[h] for h in sorted(groups, key=self._rank.__getitem__)]
        out = [r for g in ordered_groups for r in sorted(g, key=lambda r: (r.prompt_token_ids, r.arrival_order))]
        return sorted(out, key=lambda r: r.num_preemptions == 0)  # stable: preempted first, the rest as grouped
