"""Instructions per generated token, counted by valgrind's callgrind around the decode alone.

This VM exposes no hardware counters to `perf`, so instructions are counted in software. A
worker runs under `valgrind --tool=callgrind --instr-atstart=no`; after its warm-up it calls
`count_decode(generate, short, long)`, which generates `short` then `long` new tokens for the
same prompt with counting on, dumping the counts after each. Start-up and prefill cancel in
the difference: instructions per token = (I(long) - I(short)) / (long - short).

Needs only the standard library (the llama.cpp worker runs in another venv) plus a C compiler
and valgrind's headers for the client requests (csrc/callgrind_marks.c).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "csrc", "callgrind_marks.c")


def build() -> str:
    """The marks library, built once per source version into ~/.cache/ember."""
    digest = hashlib.sha256(open(SOURCE, "rb").read()).hexdigest()[:16]
    out = os.path.join(os.path.expanduser("~"), ".cache", "ember", f"callgrind_marks-{digest}.so")
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None or not os.path.exists("/usr/include/valgrind/callgrind.h"):
            raise RuntimeError("counting instructions needs a C compiler and valgrind's headers (valgrind-dev)")
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
        os.close(fd)
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", SOURCE, "-o", tmp], check=True)
        os.replace(tmp, out)
    return out


def count_decode(generate, library: str, short: int, long: int) -> None:
    """`generate(n)` makes n new tokens; the counts go to callgrind's dump files."""
    marks = ctypes.CDLL(library)
    marks.marks_dump.argtypes = [ctypes.c_char_p]
    marks.marks_start()
    generate(short)
    marks.marks_dump(b"short")
    generate(long)
    marks.marks_dump(b"long")
    marks.marks_stop()


def valgrind_command(out_file: str) -> list[str]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("counting instructions needs valgrind")
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]


def dump_counts(out_file: str) -> dict[str, int]:
    """Instructions in each tagged dump `count_decode` left beside `out_file`: {tag: count}."""
    counts = {}
    for path in glob.glob(out_file + ".*"):
        tag = total = None
        for line in open(path):
            if line.startswith("desc: Trigger: Client Request: "):
                tag = line.rsplit(":", 1)[1].strip()
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        if tag is not None and total is not None:
            counts[tag] = total
    return counts


def instructions_per_token(out_file: str, short: int, long: int) -> float:
    counts = dump_counts(out_file)
    if set(counts) != {"short", "long"}:
        raise RuntimeError(f"callgrind dumps {sorted(counts)} beside {out_file}, expected short and long")
    return (counts["long"] - counts["short"]) / (long - short)
