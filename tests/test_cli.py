"""`ember`'s command line: bad option values end in one clear line, not a traceback."""

from __future__ import annotations

import pytest

from ember.cli import main


def test_an_unknown_policy_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("transformers")  # builds the small random model the file is written from
    from tests.loader.builders import tiny_llama, write_llama_gguf

    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama(seed=3))
    code = main(["generate", "hello", "--raw", "--model", str(path), "--max-tokens", "1",
                 "--kv-cache-tokens", "64", "--threads", "1", "--policy", "nope"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: unknown scheduling policy 'nope'; choose one of: " in err and "fcfs" in err
    assert "Traceback" not in err


def test_structured_output_flags(ember_lm, tmp_path, capsys, monkeypatch):
    """`ember generate --regex/--choice/--json-schema`: constrained output; a bad one is one line."""
    import ember.llm

    real = ember.llm.LLM
    monkeypatch.setattr(ember.llm, "LLM", lambda progress=True, **cfg: real(loaded=ember_lm, **cfg))
    base = ["--kv-cache-tokens", "1024", "--threads", "1", "--temperature", "0.8", "--seed", "1"]
    assert main(["generate", "Pick one", "--choice", "red", "--choice", "blue", "--max-tokens", "8"] + base) == 0
    assert capsys.readouterr().out.strip() in ("red", "blue")
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], '
                      '"additionalProperties": false}')
    assert main(["generate", "A number as JSON", "--json-schema", str(schema), "--max-tokens", "16"] + base) == 0
    import json
    assert set(json.loads(capsys.readouterr().out)) == {"n"}
    assert main(["generate", "x", "--regex", "a(b", "--max-tokens", "4"] + base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unclosed group" in err and "Traceback" not in err
    assert main(["generate", "x", "--regex", "a", "--choice", "b"] + base) == 2
    assert "exactly one" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--linear", "int3", "error: linear 'int3' is not one of: auto, bcq-w2"),
    ("--dtype", "fp16", "error: dtype 'fp16' is not one of: auto, fp32, bf16"),
])
def test_a_bad_linear_or_dtype_names_the_value(capsys, flag, value, message):
    assert main(["info", flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_info_prints_the_auto_choices(default_gguf_path, capsys):
    assert main(["info", "--model", default_gguf_path]) == 0
    out = capsys.readouterr().out
    assert "linear auto -> int4 (GGUF Q4_1 projections kept as stored)" in out
    assert "dtype auto -> " in out
    assert main(["info", "--model", default_gguf_path, "--linear", "dense", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "auto ->" not in out and "(linear dense, dtype fp32)" in out
