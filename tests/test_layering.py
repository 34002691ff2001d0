"""Imports that would tie a lower layer to a higher one (DESIGN.md, "One way to lay out the
seams"), read from the source so that a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EMBER = Path(__file__).resolve().parent.parent / "ember"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def files(*parts: str) -> list[Path]:
    path = EMBER.joinpath(*parts)
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("importers, forbidden", [
    (("bench",), "ember.cli"),  # cli.py imports bench/ for its subcommands; shared flags: cli_args.py
    (("eval", "decode_nll.py"), "ember.eval.perplexity"),  # both take token_nll from eval/nll.py
    (("config.py",), "ember.engine.policies"),  # a policy's name is checked where the engine builds it
    (("models",), "ember.loader"),  # models raise ValueError; the loader wraps it into ModelLoadError
    (("kv",), "ember.engine"),  # Request lives in ember/request.py, the Preemptor in kv/preemption.py
    (("request.py",), "ember.engine"),
    (("sampling_params.py",), "ember.engine"),
    (("structured",), "ember.engine"),  # the grammar backend sits below the engine and the server
    (("structured",), "ember.serve"),
    (("engine",), "ember.sim"),  # the simulator drives the engine's scheduler; never the other way
], ids=["bench-not-cli", "decode_nll-not-perplexity", "config-not-policies", "models-not-loader", "kv-not-engine",
        "request-not-engine", "sampling_params-not-engine",
        "structured-not-engine", "structured-not-serve", "engine-not-sim"])
def test_no_import_runs_upward(importers, forbidden):
    for path in files(*importers):
        bad = {m for m in imported_modules(path) if m == forbidden or m.startswith(forbidden + ".")}
        assert not bad, f"{path.relative_to(EMBER.parent)} imports {', '.join(sorted(bad))}"
