"""The OpenAI wire format: request bodies validated into typed objects, responses and errors shaped as OpenAI's.

Requests are checked here, before anything reaches the model: a wrong type, an unknown field, a missing
``messages`` or a ``max_tokens`` below 1 becomes an :class:`APIError` with OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``) and a 4xx status, never a traceback.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class BaseRequest(BaseModel):
    """Fields both routes share. Unknown fields are refused, as OpenAI does: a setting is never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # a vLLM extension: -1 or 0 for all tokens
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stop for stop in stops if stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(BaseRequest):
    prompt: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatCompletionRequest(BaseRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(raw: bytes, kind: type[BaseRequest]) -> Any:
    """The request body as ``kind``, or an :class:`APIError` (400) naming the offending field."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(400, f"the body is not valid JSON: {error}".splitlines()[0], code="invalid_json") from None
    if not isinstance(payload, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return kind.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None  # the top-level field; deeper parts name union members
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or part in kind.model_fields)
        message = "unrecognized request argument" if first["type"] == "extra_forbidden" else first["msg"]
        raise APIError(400, f"{where or param}: {message}", param=param, code="invalid_request") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(request_id: str, model: str, chat: bool, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A (non-streamed) completion or chat completion, or one chunk of a stream when ``extra`` says so."""
    obj = extra.pop("object", "chat.completion" if chat else "text_completion")
    return {"id": request_id, "object": obj, "created": int(time.time()), "model": model, "choices": choices, **extra}


def choice(index: int, text: str, finish_reason: str | None, chat: bool, *, delta: bool = False) -> dict[str, Any]:
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    content: dict[str, Any] = {"role": "assistant", "content": text}
    if delta:
        return {"index": index, "delta": content if text else {}, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "message": content, "logprobs": None, "finish_reason": finish_reason}
