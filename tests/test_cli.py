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
