"""The OpenAI request bodies Ember accepts (pydantic), and the fields it refuses.

Bodies are strict: a field the OpenAI API defines but Ember does not implement (logit_bias,
audio, ...) is refused with a 400 that says so, rather than silently ignored; a field nobody
defines is refused as unknown. The extra fields vLLM users know (top_k, min_p, ignore_eos,
..., and the structured-output extras `structured_outputs`, `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar`) are accepted.
"""

from __future__ import annotations

import re
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Models are strict, as OpenAI is: "16" is not an integer and "true" not a boolean (400 naming the field).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_lone_surrogates(value):
    """JSON may carry a lone UTF-16 surrogate ("\\udcff"), which no tokenizer can encode: it
    becomes U+FFFD, as OpenAI does, in every string of the body."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value) if _LONE_SURROGATE.search(value) else value
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    return value


# Fields the OpenAI API defines that Ember refuses unless they carry their "off" value.
UNSUPPORTED_COMPLETION = {"suffix": (None, ""), "logit_bias": (None, {}), "best_of": (None, 1)}
UNSUPPORTED_CHAT = {
    "logit_bias": (None, {}), "audio": (None,), "prediction": (None,), "modalities": (None, ["text"]),
    "web_search_options": (None,),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ResponseFormat(BaseModel):
    """{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict", ...}}
    (the json_schema object is checked in serve/structured.py, which names the field at fault)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    type: str
    json_schema: dict[str, Any] | None = None


class _Sampling(BaseModel):
    """Fields shared by both endpoints."""
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _surrogates(cls, data):
        return _replace_lone_surrogates(data)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = Field(None, max_length=256)
    # extras (vLLM's names)
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    priority: int = Field(0, strict=True)  # lower runs sooner under `--policy priority`; strict: "1" is refused
    # structured outputs (serve/structured.py): OpenAI's response_format, and vLLM's extras
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: Any = None  # a schema, or its JSON text (checked in serve/structured.py)
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    # latency targets for `--policy slo` (Ember's extras)
    slo_ttft_ms: float | None = Field(None, gt=0.0)
    slo_tpot_ms: float | None = Field(None, gt=0.0)
    # agent programs for `--policy continuum` (Ember's extras): the program (conversation) this
    # turn belongs to, and the tool it calls before its next turn
    program_id: str | None = Field(None, min_length=1, max_length=256)
    tool_call: str | None = Field(None, min_length=1, max_length=256)
    # defined by OpenAI, refused unless off (see UNSUPPORTED_*)
    logit_bias: dict[str, float] | None = None


    def scheduling_hints(self) -> dict:
        """LLMEngine.add_request's scheduling keywords from this body."""
        return {"priority": self.priority, "slo_ttft_ms": self.slo_ttft_ms or 0.0, "slo_tpot_ms": self.slo_tpot_ms or 0.0,
                "program_id": self.program_id, "tool_call": self.tool_call}


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    documents: list[str] | None = Field(None, max_length=256)  # chunks before the prompt (serve/chunks.py)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: str
    text: str | None = None
    cache_control: dict[str, Any] | None = None  # {"type": "chunk"}: reuse its KV anywhere (serve/chunks.py)
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    arguments: str  # JSON text, as OpenAI sends it back


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    type: str = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # the deprecated form of one tool call
    refusal: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: str
    function: FunctionDefinition


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[FunctionDefinition] | None = None  # deprecated: tools, one call a turn
    function_call: str | dict[str, Any] | None = None  # deprecated: tool_choice
    parallel_tool_calls: bool | None = None
    audio: Any = None
    prediction: Any = None
    modalities: list[str] | None = None
    web_search_options: Any = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


