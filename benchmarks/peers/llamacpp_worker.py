"""The llama.cpp side of benchmarks/cpu_vs_llamacpp.py; runs under the llama-cpp-python venv.

Reads a JSON job (model path, threads, prompt token ids, what to measure) from argv[1], writes
the figures as JSON to argv[2]. Uses the package's low-level API (llama_decode on a
llama_batch) so prompt processing, single-stream decode and batched decode over C sequences
in one unified KV cache are measured the same way Ember's are: the same token ids, greedy
(argmax in Python over the logits of each step), prefill excluded from decode figures.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import llama_cpp as L

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import callgrind_marks  # noqa: E402  (benchmarks/, standard library only)


FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama_flash_attn_type


class Context:
    """Options (the job's keys, defaults = this worker's usual settings):
    flash_attn  auto (llama.cpp's own default, as its tools run), off (what llama-cpp-python's
                `Llama` class and its server set unless told otherwise), on
    kv_unified  one cache shared by all sequences, like Ember's block pool (default); False:
                one stream per sequence, as llama-batched-bench runs
    logits_all  copy the logits of every prompt token out, as llama-cpp-python's server does by
                default (`logits_all=True`); default: only the rows sampled from"""

    def __init__(self, model, n_ctx: int, n_seq: int, threads: int, n_batch: int = 512,
                 flash_attn: str = "auto", kv_unified: bool = True, logits_all: bool = False):
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        p.n_threads = p.n_threads_batch = threads
        p.kv_unified = kv_unified
        p.flash_attn_type = FLASH_ATTN[flash_attn]
        p.no_perf = True
        self.logits_all = logits_all
        self.ctx = L.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))

    def clear(self):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def decode(self, items):
        """items: (token, pos, seq, wants_logits); chunks of n_batch; returns the argmax per wanted row."""
        out = []
        for i in range(0, len(items), self.n_batch):
            chunk = items[i:i + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for j, (tok, pos, seq, want) in enumerate(chunk):
                b.token[j], b.pos[j], b.n_seq_id[j] = tok, pos, 1
                b.seq_id[j][0] = seq
                b.logits[j] = 1 if want or self.logits_all else 0
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            if self.logits_all:  # the copy llama-cpp-python's Llama.eval makes into `scores`
                np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(chunk), self.n_vocab)).copy()
            for j, (_, _, _, want) in enumerate(chunk):
                if want:
                    ptr = L.llama_get_logits_ith(self.ctx, j)
                    out.append(int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax()))
        return out

    def close(self):
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)


def prefill_items(prompts):
    return [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]


def run_batch(ctx: Context, prompts, new_tokens: int) -> dict:
    """All sequences prefilled, then new_tokens - 1 decode steps of one token per sequence."""
    ctx.clear()
    t0 = time.perf_counter()
    last = ctx.decode(prefill_items(prompts))
    t1 = time.perf_counter()
    pos = [len(p) for p in prompts]
    tokens = [[t] for t in last]
    for _ in range(new_tokens - 1):
        items = [(tokens[s][-1], pos[s], s, True) for s in range(len(prompts))]
        nxt = ctx.decode(items)
        for s, t in enumerate(nxt):
            tokens[s].append(t)
            pos[s] += 1
    t2 = time.perf_counter()
    c = len(prompts)
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tok_s": c * (new_tokens - 1) / (t2 - t1),
            "generated_tok_s_overall": c * new_tokens / (t2 - t0), "tokens": tokens}


def main() -> None:
    job = json.load(open(sys.argv[1]))
    threads = job["threads"]
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    # "extra_bufts": false turns off llama.cpp's repacked and AMX weight layouts (its AMX
    # matmul crashes on Q4_0 in this VM: lowbit_vs_llamacpp.py); default: llama.cpp's choice.
    mp.use_extra_bufts = job.get("extra_bufts", True)
    model = L.llama_model_load_from_file(job["model"].encode(), mp)
    if not model:
        raise RuntimeError("cannot load " + job["model"])
    opts = {k: job[k] for k in ("flash_attn", "kv_unified", "logits_all") if k in job}
    res = {"engine": "llama.cpp", "version": L.__version__, "threads": threads, "options": opts,
           "extra_bufts": mp.use_extra_bufts, "system_info": L.llama_print_system_info().decode().strip()}

    if "prefill" in job:
        ctx = Context(model, 1024, 1, threads, **opts)
        times = []
        for ids in job["prefill"]:  # the first is a warm-up
            ctx.clear()
            t0 = time.perf_counter()
            ctx.decode(prefill_items([ids]))
            times.append(time.perf_counter() - t0)
        ttft = statistics.median(times[1:])
        res["prefill_ttft_s"], res["prefill_tok_s"] = ttft, len(job["prefill"][0]) / ttft
        res["prefill_all_s"] = times[1:]
        rates, toks = [], []
        for ids in job["decode"]:
            r = run_batch(ctx, [ids], job["new_tokens"])
            rates.append(r["decode_tok_s"])
            toks.append(r["tokens"][0])
        res["decode_tok_s"] = statistics.median(rates[1:])
        res["decode_tok_s_all"] = rates[1:]
        res["decode_tokens"] = toks
        ctx.close()

    if "count" in job:  # instructions per token, under callgrind (cpu_vs_llamacpp.py --instructions)
        c = job["count"]
        ctx = Context(model, 1024, 1, threads)
        run_batch(ctx, [c["prompt"]], c["long"])  # warm-up, uncounted
        callgrind_marks.count_decode(lambda n: run_batch(ctx, [c["prompt"]], n), c["library"], c["short"], c["long"])
        ctx.close()

    for c_str, prompts in job.get("batched", {}).items():
        c = int(c_str)
        n_ctx = c * (max(len(p) for p in prompts) + job["new_tokens"]) + 256
        ctx = Context(model, n_ctx, c, threads, **opts)
        run_batch(ctx, prompts[: min(c, 4)], 8)  # warm-up
        r = run_batch(ctx, prompts, job["new_tokens"])
        r.pop("tokens")
        res[f"batched_{c}"] = r
        ctx.close()

    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    L.llama_model_free(model)
    json.dump(res, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
