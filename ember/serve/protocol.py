"""The OpenAI request bodies Ember accepts (pydantic), and the fields it refuses.

Bodies are strict: a field the OpenAI API defines but Ember does not implement (tools,
logit_bias, a JSON response_format, ...) is refused with a 400 that says so, rather than
silently ignored; a field nobody defines is refused as unknown. The extra sampling fields
vLLM users know (top_k, min_p, ignore_eos, ...) are accepted.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field

# Fields the OpenAI API defines that Ember refuses unless they carry their "off" value.
UNSUPPORTED_COMPLETION = {"suffix": (None, ""), "logit_bias": (None, {}), "best_of": (None, 1)}
UNSUPPORTED_CHAT = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "logit_bias": (None, {}), "audio": (None,), "prediction": (None,), "modalities": (None, ["text"]),
    "web_search_options": (None,), "parallel_tool_calls": (None, True, False),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints."""
    model_config = ConfigDict(extra="forbid")

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
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    refusal: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
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


