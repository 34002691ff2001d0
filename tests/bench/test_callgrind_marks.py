"""benchmarks/callgrind_marks.py: callgrind counts only between the marks, and the per-token
figure is the difference of the two dumps (cpu_vs_llamacpp.py --instructions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
sys.path.insert(0, BENCH)
import callgrind_marks  # noqa: E402


def test_per_token_is_the_difference_of_the_two_dumps(tmp_path):
    out = str(tmp_path / "cg.out")
    for n, (tag, total) in enumerate([("short", 1_000), ("long", 17_000)], start=1):
        (tmp_path / f"cg.out.{n}").write_text(f"version: 1\ndesc: Trigger: Client Request: {tag}\nsummary: {total}\n")
    assert callgrind_marks.instructions_per_token(out, 4, 20) == 1_000.0
    os.remove(tmp_path / "cg.out.2")
    with pytest.raises(RuntimeError, match="expected short and long"):
        callgrind_marks.instructions_per_token(out, 4, 20)


@pytest.mark.skipif(shutil.which("valgrind") is None or not os.path.exists("/usr/include/valgrind/callgrind.h"),
                    reason="needs valgrind and its headers")
def test_counting_covers_only_the_marked_calls(tmp_path):
    """A Python 'generator' of fixed work per token under valgrind: the short dump holds 4 tokens'
    worth and nothing of the interpreter's start-up (which is ~100x more)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {BENCH!r})
        import callgrind_marks
        callgrind_marks.count_decode(lambda n: sum(i * i for i in range(n * 20000)), {callgrind_marks.build()!r}, 4, 20)
    """))
    out = str(tmp_path / "cg.out")
    subprocess.run(callgrind_marks.valgrind_command(out) + [sys.executable, str(script)], check=True,
                   capture_output=True, timeout=300)
    counts = callgrind_marks.dump_counts(out)
    per_token = callgrind_marks.instructions_per_token(out, 4, 20)
    assert 20000 * 50 < per_token < 20000 * 5000  # tens to thousands of instructions per iteration
    assert abs(counts["short"] - 4 * per_token) < 0.2 * 4 * per_token
