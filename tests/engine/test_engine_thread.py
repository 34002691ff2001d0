"""An engine stepped on a thread other than the one that built it says so, once: each thread that
runs the C kernels keeps its own OpenMP team, and two teams on the same cores made every step
~3x slower (benchmarks/engine_thread.py). The outputs do not change."""

from __future__ import annotations

import threading
import warnings

from ember.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


def generate_on_a_thread(llm) -> tuple[list[int], list[warnings.WarningMessage]]:
    box = {}

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            box["ids"] = llm.generate("The capital of France is", PARAMS)[0].outputs[0].token_ids
        box["warnings"] = [w for w in caught if issubclass(w.category, RuntimeWarning)]

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box["ids"], box["warnings"]


def test_a_step_on_another_thread_warns_once_and_changes_nothing(make_llm):
    llm = make_llm(threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the building thread: no warning
        expected = llm.generate("The capital of France is", PARAMS)[0].outputs[0].token_ids
    ids, caught = generate_on_a_thread(llm)
    assert ids == expected
    assert len(caught) == 1 and "OpenMP team" in str(caught[0].message)
    ids, caught = generate_on_a_thread(llm)  # once per engine
    assert ids == expected and not caught


def test_one_thread_has_no_team_to_double(make_llm):
    ids, caught = generate_on_a_thread(make_llm(threads=1))
    assert ids and not caught
