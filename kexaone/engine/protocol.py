"""The OpenAI-compatible HTTP protocol: request models (validated strictly), response models, error bodies.

Types are strict (a string where a number belongs is an error, not a conversion); unknown fields are ignored so
newer clients keep working. Limits that depend on the server's settings (prompt and output token budgets) are
checked by the server, which reports them in the same error shape: `{"error": {"message", "type", "param",
"code"}}`. This module holds no server or model code.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 16


class _Req(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ErrorInfo(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class APIError(Exception):
    """An error reported to the client as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type, param=param, code=code)

    def body(self) -> dict:
        return ErrorResponse(error=self.info).model_dump()


# ---------------------------------------------------------------------------------------------- requests
class TextPart(_Req):
    type: Literal["text"]
    text: str


class FunctionCall(_Req):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Req):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionDef(_Req):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Req):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Req):
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    enable_thinking: bool = True


class _Sampling(_Req):
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0)
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported on chat completions; use /v1/completions with logprobs")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.messages[-1].role == "assistant" and self.messages[-1].tool_calls:
            raise ValueError("the last message is an assistant tool call: append the tool results first")
        return self

    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def enable_thinking(self) -> bool:
        return True if self.chat_template_kwargs is None else self.chat_template_kwargs.enable_thinking

    def openai_messages(self) -> list[dict]:
        return openai_messages(self.messages)


def openai_messages(messages: list[ChatMessage]) -> list[dict]:
    """Messages as plain dicts for the chat renderer (`developer` is a system message)."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64


class CompletionRequest(_Sampling):
    """A legacy completion. `prompt` is a string, a list of token ids, or a batch of either (one choice each).
    `logprobs: k` returns the log-prob of every returned token and the k most likely tokens at each position;
    with `echo` the prompt's tokens come first (the first one has no log-prob: nothing predicts it) and
    `max_tokens: 0` scores the prompt without generating."""

    prompt: str | list[int] | list[str] | list[list[int]] = Field()
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be empty")
            if isinstance(v[0], (str, list)) and len(v) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(v)}")
            if any(isinstance(x, list) and not x for x in v):
                raise ValueError("prompt must not be empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        return v

    def conflict(self) -> tuple[str, str] | None:
        """(param, message) of a combination of fields this server does not serve, or None."""
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens", "max_tokens = 0 returns nothing unless echo is true (to score the prompt)"
        if self.stream and self.logprobs is not None:
            return "logprobs", "logprobs with stream is not supported: ask without streaming"
        if self.stream and len(self.prompts()) > 1:
            return "prompt", "stream takes one prompt, got a batch of several"
        return None

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, each a string or a list of token ids."""
        v = self.prompt
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            return list(v)
        return [v]


# ---------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ResponseFunctionCall | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Per returned token (prompt tokens first with echo): its text, its log-prob (None for the first prompt token),
    the most likely tokens at that position (None where the log-prob is None) and its character offset."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kexaone"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_param(loc: tuple | list) -> str | None:
    """A pydantic error location as the dotted field name OpenAI reports in `param` (body prefix dropped)."""
    parts = [str(p) for p in loc if p != "body"]
    # drop union-branch names pydantic inserts (e.g. 'str', 'list[TextPart]')
    parts = [p for p in parts if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool",
                                                                                  "function-after", "none")]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


# ---------------------------------------------------------------------------------------------- tokenizer routes
class TokenizeRequest(_Req):
    """`POST /tokenize` (as vLLM): a `prompt`, or chat `messages` rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _check(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (a string) or messages (a chat)")
        return self


class DetokenizeRequest(_Req):
    model: str | None = None
    tokens: list[int]
