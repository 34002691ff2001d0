"""ModelRunner: a scheduled batch -> flat tensors -> one model call -> logits of the rows to sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.engine.profile import NO_CLOCK
from ember.engine.scheduler import SchedulerOutput
from ember.kernels.attention import AttentionBackend, AttentionMetadata
from ember.kv.cache import PagedKVCache
from ember.request import Request


@dataclass
class StepResult:
    sample_requests: list[Request]  # requests that reached the end of their known tokens this step
    logits: torch.Tensor | None  # [len(sample_requests), vocab] fp32
    # request -> (logits of the prompt positions computed this step, their first position)
    prompt_logits: dict[str, tuple[torch.Tensor, int]]


class ModelRunner:
    def __init__(self, model, kv_cache: PagedKVCache, block_size: int, attention: AttentionBackend, decoder=None,
                 blender=None):
        """`decoder`: the model's fused decode step (input_ids, positions, meta) -> hidden, used
        for the single-token rows of a batch; None: every row goes through the model's forward.
        `blender`: fills the chunk cache and runs blend plans (engine/blend.py); None: no plans."""
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.attention, self.decoder, self.blender = attention, decoder, blender

    def _blend(self, batch: SchedulerOutput) -> list[tuple[Request, int, int]]:
        """Run the step's blend plans; the rest of the work: (request, tokens already done by
        its blend, tokens left for the usual forward) of each request with tokens left."""
        plans = [(r.prompt_token_ids, r.block_ids, r.blend) for r, _ in batch.scheduled if r.blend is not None]
        if plans:
            if self.blender is None:
                raise RuntimeError("a request carries a blend plan, but this runner has no blender")
            self.blender(plans)
        work = []
        for request, n in batch.scheduled:
            done = request.blend.end - request.num_computed_tokens if request.blend is not None else 0
            if n > done:
                work.append((request, done, n - done))
        return work

    def prepare(self, work: list[tuple[Request, int, int]]):
        """Flat tensors for `work`: (request, tokens skipped past its computed ones, new tokens)."""
        ids, positions, slots, query_lens, context_lens, tables = [], [], [], [], [], []
        bs = self.block_size
        for request, skip, n in work:
            # RoPE positions continue from the tokens computed; cache slots and the context
            # attended to count the entries held, fewer once some were dropped.
            start, cached = request.num_computed_tokens + skip, request.num_cached_tokens + skip
            ids.extend(request.token_slice(start, start + n))
            positions.extend(range(start, start + n))
            blocks = request.block_ids
            slots.extend(blocks[c // bs] * bs + c % bs for c in range(cached, cached + n))
            query_lens.append(n)
            context_lens.append(cached + n)
            tables.append(blocks)
        width = max(len(t) for t in tables)
        block_tables = torch.zeros(len(tables), width, dtype=torch.long)
        for i, t in enumerate(tables):
            block_tables[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        meta = AttentionMetadata(query_lens, context_lens, torch.tensor(slots, dtype=torch.long), block_tables)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), meta

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Final hidden states of a flat batch. With a fused decoder, sequences that bring one
        token go through it, and prefill chunks too where it takes them (`takes_prefill`);
        the others go through the model's forward: they write disjoint cache slots and read
        only blocks computed in earlier steps."""
        if self.decoder is not None and (meta.is_decode_only or self.decoder.takes_prefill):
            return self.decoder(input_ids, positions, meta)
        if self.decoder is None or 1 not in meta.query_lens:
            return self.model(input_ids, positions, meta, self.kv_cache, self.attention)
        starts = [0]
        for n in meta.query_lens:
            starts.append(starts[-1] + n)
        single = [i for i, n in enumerate(meta.query_lens) if n == 1]
        multi = [i for i, n in enumerate(meta.query_lens) if n != 1]
        single_rows = torch.tensor([starts[i] for i in single], dtype=torch.long)
        multi_rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in multi])

        def part(seqs, rows):
            return AttentionMetadata([meta.query_lens[i] for i in seqs], [meta.context_lens[i] for i in seqs],
                                     meta.slot_mapping[rows], meta.block_tables[torch.tensor(seqs, dtype=torch.long)])

        hidden = torch.empty(input_ids.shape[0], self.model.cfg.hidden_size, dtype=self.model.dtype)
        hidden[multi_rows] = self.model(input_ids[multi_rows], positions[multi_rows], part(multi, multi_rows),
                                        self.kv_cache, self.attention)
        hidden[single_rows] = self.decoder(input_ids[single_rows], positions[single_rows], part(single, single_rows))
        return hidden

    def execute(self, batch: SchedulerOutput, block_copies: list[tuple[int, int]] = (), clock=NO_CLOCK) -> StepResult:
        """`clock`: the step's StepClock (engine/profile.py), marked after prepare, forward and logits."""
        self.kv_cache.copy_blocks(list(block_copies))
        try:
            work = self._blend(batch)
            if not work:  # only blends this step: no token reached its end
                clock.mark("forward")
                return StepResult([], None, {})
            input_ids, positions, meta = self.prepare(work)
            clock.mark("prepare")
            hidden = self.forward(input_ids, positions, meta)
        finally:
            self.kv_cache.settle()  # the blocks this step filled need no scratch any more
        clock.mark("forward")
        rows, sample_requests, prompt_logits = [], [], {}
        end = 0
        for request, skip, n in work:
            start_row = end
            end += n
            first = request.num_computed_tokens + skip
            if request.params.prompt_logprobs is not None and first < request.num_prompt_tokens:
                # logits at positions first..first+n-1 predict tokens first+1..first+n
                prompt_logits[request.request_id] = (self.model.compute_logits(hidden[start_row:end]), first)
            if first + n == request.num_tokens:
                rows.append(end - 1)
                sample_requests.append(request)
        logits = self.model.compute_logits(hidden[torch.tensor(rows, dtype=torch.long)]) if rows else None
        clock.mark("logits")
        return StepResult(sample_requests, logits, prompt_logits)
