"""Structured outputs in the engine: JSON schema, regex, choice and grammar constrain sampling,
EOS comes only when the grammar accepts, bad grammars are ValueErrors, and constrained and
free sequences share batches (and preemption) without harm."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ember import SamplingParams
from ember.structured import StructuredOutputsParams
from ember.structured.backend import GrammarBackend, GrammarError, apply_masks
from tests.engine.conftest import assert_no_leak

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def check_person(text: str) -> dict:
    value = json.loads(text)
    assert set(value) == {"name", "age", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 16
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3 and set(value["tags"]) <= {"a", "b", "c"}
    return value


@pytest.fixture(scope="module")
def llm(make_llm):
    return make_llm()


def params(max_tokens=48, temperature=0.8, seed=0, **so) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                          structured_outputs=StructuredOutputsParams(**so))


def test_json_schema_regex_choice_grammar(llm):
    outs = llm.chat(MESSAGES, params(json=PERSON))
    check_person(outs[0].outputs[0].text)
    assert outs[0].outputs[0].finish_reason == "stop"
    regex = r"[0-9]{3}-[a-z]{2,4}"
    text = llm.generate("Code:", params(regex=regex, max_tokens=16))[0].outputs[0].text
    assert re.fullmatch(regex, text), text
    text = llm.generate("Is the sky blue?", params(choice=["yes", "no", "maybe"]))[0].outputs[0].text
    assert text in ("yes", "no", "maybe")
    gbnf = 'root ::= "(" [0-9]+ ("+" [0-9]+)* ")"'
    text = llm.generate("Sum:", params(grammar=gbnf, max_tokens=24, temperature=0))[0].outputs[0].text
    out = llm.generate("Sum:", params(grammar=gbnf, max_tokens=24, temperature=0))[0].outputs[0]
    assert out.text == text
    assert re.fullmatch(r"\([0-9]+(\+[0-9]+)*\)", text) or out.finish_reason == "length"
    out = llm.chat(MESSAGES, params(json_object=True, max_tokens=64, temperature=0))[0].outputs[0]
    assert out.finish_reason == "length" or isinstance(json.loads(out.text), dict)
    assert_no_leak(llm)


def test_dict_and_n(llm):
    """A dict works for the params; each of n sequences has its own matcher."""
    p = SamplingParams(n=3, max_tokens=48, temperature=1.0, seed=3, structured_outputs={"json": json.dumps(PERSON)})
    outs = llm.chat(MESSAGES, p)[0].outputs
    assert len(outs) == 3
    for o in outs:
        check_person(o.text)
    assert_no_leak(llm)


def test_batched_with_free_requests(llm):
    """Constrained and unconstrained sequences in one batch: each free one is what it is alone."""
    free = SamplingParams(max_tokens=12, temperature=0)
    prompts = ["The capital of France is", "One, two, three,", "def main():", "Once upon a time"]
    alone = [o.outputs[0].text for o in llm.generate(prompts, free)]
    mixed = llm.generate(prompts * 2, [free] * 4 + [params(json=PERSON, seed=i) for i in range(4)])
    assert [o.outputs[0].text for o in mixed[:4]] == alone
    for o in mixed[4:]:
        check_person(o.outputs[0].text)
    assert_no_leak(llm)


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_preemption_keeps_matcher_in_step(make_llm, preemption):
    """Preempted sequences keep their output tokens (recomputed or swapped back), and the
    matcher that follows those tokens stays valid."""
    small = make_llm(kv_cache_tokens=256, block_size=16, max_num_seqs=8, preemption=preemption, swap_space="64MiB")
    outs = small.chat([MESSAGES] * 6, params(json=PERSON, max_tokens=48, temperature=1.0))
    assert small.engine.scheduler.num_preemptions > 0
    for o in outs:
        check_person(o.outputs[0].text)
    assert_no_leak(small)


@pytest.mark.parametrize("so, words", [
    ({"json": '{"type": "nonsense"}'}, "nonsense"),
    ({"regex": "a(b"}, "unclosed group"),
    ({"grammar": "start: undefined_rule"}, "undefined_rule"),
    ({"json": "{not json"}, "JSON"),
])
def test_bad_grammar_is_value_error(llm, so, words):
    with pytest.raises(ValueError, match=words):
        llm.generate("x", SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(**so)))
    assert not llm.engine.requests
    assert_no_leak(llm)


def test_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["b"])
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()


def test_pydantic_union_schema_compiles(ember_lm):
    """pydantic writes a discriminated union as oneOf; it compiles (read as anyOf) and holds."""
    from typing import Literal, Union

    import pydantic

    class Cat(pydantic.BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(pydantic.BaseModel):
        kind: Literal["dog"]
        good: bool

    class Pet(pydantic.BaseModel):
        pet: Union[Cat, Dog] = pydantic.Field(discriminator="kind")

    schema = Pet.model_json_schema()
    assert "oneOf" in json.dumps(schema)
    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    m = backend.compile(StructuredOutputsParams(json=schema)).matcher()
    for t in ember_lm.tokenizer.encode('{"pet": {"kind": "dog", "good": true}}'):
        assert m.advance(t)
    assert m.is_terminated


def test_compile_cache(ember_lm):
    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    a = backend.compile(StructuredOutputsParams(json=PERSON))
    b = backend.compile(StructuredOutputsParams(json=json.dumps(PERSON)))
    assert a is b and (backend.misses, backend.hits) == (1, 1)
    with pytest.raises(GrammarError):
        backend.compile(StructuredOutputsParams(regex="("))


def test_apply_masks_matches_bits(ember_lm):
    """The bool expansion of llguidance's bitmask keeps exactly the allowed tokens (bit 31 too)."""
    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    vocab = ember_lm.config.vocab_size
    m = backend.compile(StructuredOutputsParams(json_object=True)).matcher()
    assert m.advance(ember_lm.tokenizer.encode("{")[0])
    bitmask = torch.empty((1, (vocab + 31) // 32), dtype=torch.int32)
    m.fill_mask(bitmask, 0)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab].astype(bool)
    logits = torch.zeros(2, vocab)
    apply_masks(logits, [1], [m])
    assert torch.equal(torch.isfinite(logits[1]), torch.from_numpy(bits))
    assert torch.isfinite(logits[0]).all()
    assert 0 < bits.sum() < vocab
    eos = sorted(ember_lm.tokenizer.stop_token_ids)
    assert not bits[eos].any()  # inside the object: no EOS
    for t in ember_lm.tokenizer.encode('"a": 1}'):
        assert m.advance(t)
    m.fill_mask(bitmask, 0)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")[:vocab].astype(bool)
    assert m.is_terminated and bits[eos].all() and bits.sum() == len(eos)  # complete: EOS only


def test_parallel_masks_equal_serial(ember_lm):
    """The executor's batch of masks is each matcher's own mask."""
    from ember.structured.backend import fill_masks

    backend = GrammarBackend(ember_lm.tokenizer, ember_lm.config.vocab_size)
    words = (ember_lm.config.vocab_size + 31) // 32
    texts = ['{"name": "A', '{"name": "Al", "age": 4', '{"name": "Bo", "age": 41, "tags": ["a"', "{"]
    matchers = []
    for text in texts:
        m = backend.compile(StructuredOutputsParams(json=PERSON)).matcher()
        for t in ember_lm.tokenizer.encode(text):
            assert m.advance(t)
        matchers.append(m)
    together = torch.zeros((len(matchers), words), dtype=torch.int32)
    fill_masks(together, matchers)
    for i, m in enumerate(matchers):
        alone = torch.zeros((1, words), dtype=torch.int32)
        m.fill_mask(alone, 0)
        assert torch.equal(together[i], alone[0])
    assert len({tuple(r.tolist()) for r in together}) == len(texts)
