"""Resolve `--linear auto` and `--dtype auto` for one model file: the single place where they
become a method and a dtype, each with a one-line reason (`ember serve`, `ember info`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ember.kernels.dtype_auto import choose_dtype
from ember.kernels.linear.auto import choose_linear


@dataclass(frozen=True)
class Resolved:
    linear: str
    dtype: str  # a name of config.DTYPES
    notes: tuple[str, ...]  # "linear auto -> int4 (why)", one per option that was auto


def resolve_auto(linear: str, dtype: str, source_format: str, projection_types: Iterable[str]) -> Resolved:
    """`linear` and `dtype` as asked (names; "auto" for either) for a model in `source_format`
    ("gguf" or "hf") whose projections are stored as `projection_types`."""
    notes = []
    if linear == "auto":
        choice = choose_linear(source_format, projection_types)
        linear = choice.value
        notes.append(f"linear auto -> {choice.value} ({choice.reason})")
    if dtype == "auto":
        choice = choose_dtype(linear)
        dtype = choice.value
        notes.append(f"dtype auto -> {choice.value} ({choice.reason})")
    return Resolved(linear, dtype, tuple(notes))
