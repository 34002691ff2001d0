"""Structured outputs on the API: response_format and vLLM's extras -> StructuredOutputsParams,
compiled on a worker thread before the request reaches the engine (a bad one is a 400 naming
the field; the engine's own compile is then a cache hit, so the step loop never compiles)."""

from __future__ import annotations

import asyncio

from ember.serve.errors import bad_request
from ember.structured import StructuredOutputsParams
from ember.structured.backend import GrammarError

# the fields of vLLM's `structured_outputs` extra; the options besides the kinds are accepted and
# have no effect here (JSON is always generated on one line, with ", " and ": ")
SO_KINDS = ("json", "regex", "choice", "grammar", "json_object")
SO_IGNORED = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
BACKENDS = (None, "auto", "guidance", "llguidance")


def _make(param: str, **kind) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**kind)
    except ValueError as exc:
        raise bad_request(f"{param}: {exc}", param=param) from None


def _response_format(rf) -> StructuredOutputsParams | None:
    if rf.type == "text":
        return None
    if rf.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if rf.type != "json_schema":
        raise bad_request(f"response_format.type {rf.type!r} is not one of: text, json_object, json_schema",
                          param="response_format")
    js = rf.json_schema
    if not isinstance(js, dict):
        raise bad_request("response_format of type json_schema needs a json_schema object", param="response_format")
    unknown = set(js) - {"name", "description", "schema", "strict"}
    if unknown:
        raise bad_request(f"response_format.json_schema: unknown field {sorted(unknown)[0]!r}",
                          param="response_format")
    for name, kind in (("name", str), ("description", str), ("strict", bool)):
        if js.get(name) is not None and not isinstance(js[name], kind):
            raise bad_request(f"response_format.json_schema.{name} must be a {kind.__name__}", param="response_format")
    schema = js.get("schema", {})  # OpenAI: no schema means any JSON object... of any shape
    if not isinstance(schema, dict):
        raise bad_request("response_format.json_schema.schema must be a JSON schema object", param="response_format")
    return _make("response_format", json=schema or {"type": "object"})


def structured_outputs(body) -> tuple[StructuredOutputsParams | None, str | None]:
    """What the request constrains its output to, and the field that said so."""
    found = []
    if body.response_format is not None:
        so = _response_format(body.response_format)
        if so is not None:
            found.append((so, "response_format"))
    if body.structured_outputs is not None:
        d = dict(body.structured_outputs)
        unknown = set(d) - set(SO_KINDS) - set(SO_IGNORED)
        if unknown:
            name = sorted(unknown)[0]
            raise bad_request(f"structured_outputs.{name} is not supported (supported: {', '.join(SO_KINDS)})",
                              param="structured_outputs", code="unsupported_parameter")
        kinds = {k: d[k] for k in SO_KINDS if d.get(k) not in (None, False)}
        found.append((_make("structured_outputs", **kinds), "structured_outputs"))
    for name, kind in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                       ("guided_grammar", "grammar")):
        value = getattr(body, name)
        if value is not None:
            found.append((_make(name, **{kind: value}), name))
    if body.guided_decoding_backend not in BACKENDS:
        raise bad_request(f"guided_decoding_backend {body.guided_decoding_backend!r} is not supported: this server "
                          "constrains with llguidance", param="guided_decoding_backend", code="unsupported_parameter")
    if len(found) > 1:
        raise bad_request(f"{found[0][1]} and {found[1][1]} both constrain the output; send one",
                          param=found[1][1])
    return found[0] if found else (None, None)


async def compile_grammar(served, so: StructuredOutputsParams, param: str) -> None:
    """Compile on the grammar thread pool (cached by text); a grammar that fails is a 400."""
    backend = served.engine.engine.structured
    if backend.cached(so):
        return
    try:
        await asyncio.get_running_loop().run_in_executor(served.grammar_pool, backend.compile, so)
    except GrammarError as exc:
        raise bad_request(f"{param}: the {so.kind} does not compile: {exc}", param=param) from None
