"""Decode speed by which thread loads the model and which steps it (why `ember serve` builds its
engine on the engine thread: benchmarks/README.md, "Serving on the thread that loaded").

Each case in a fresh process: load the default model, generate 128 greedy tokens once to warm,
then time 128 more, single stream, 2 threads:
  same       load and generate on the main thread
  other      load on the main thread, generate on another (what `ember serve` did)
  one-load   load with one thread (no OpenMP team on the main thread), generate on another
  one-thread load and generate on one non-main thread (what `ember serve` does now)

    python benchmarks/engine_thread.py
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

CASES = ("same", "other", "one-load", "one-thread")


def ms_per_token(llm) -> float:
    from ember.sampling_params import SamplingParams

    p = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    llm.generate(["Hello there, how are you?"], p)
    t = time.perf_counter()
    llm.generate(["Tell me a story about a cat."], p)
    return (time.perf_counter() - t) / 128 * 1e3


def case(name: str) -> float:
    import torch

    from ember.llm import LLM

    out = {}
    if name == "same":
        return ms_per_token(LLM(threads=2))
    if name == "one-thread":
        target = lambda: out.update(ms=ms_per_token(LLM(threads=2)))  # noqa: E731
    else:
        if name == "one-load":
            torch.set_num_threads(1)
        llm = LLM(threads=1 if name == "one-load" else 2)
        torch.set_num_threads(2)
        target = lambda: out.update(ms=ms_per_token(llm))  # noqa: E731
    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out["ms"]


def main() -> None:
    if len(sys.argv) > 1:
        print(f"{case(sys.argv[1]):.2f}")
        return
    for name in CASES:
        run = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, check=True)
        print(f"{name:<11} {run.stdout.strip().splitlines()[-1]} ms a token")


if __name__ == "__main__":
    main()
