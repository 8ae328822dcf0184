"""The OpenAI-compatible HTTP app: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, ``/health``.

Chat messages are rendered as the model was trained (its chat template, or its prompt template around a single
user message), so a client that sends a training instruction gets what ``inference.py --input_file`` gives;
``/v1/completions`` takes the prompt as it is. Every refused request gets OpenAI's JSON error and a 4xx code,
and the server goes on serving. The same app runs under uvicorn and as a Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from finetuning.errors import UserError
from finetuning.inference import openai_schema as schema
from finetuning.inference.batching import BatchingEngine
from finetuning.inference.batching import Request as Job
from finetuning.inference.decoding import SamplingParams


@dataclass(frozen=True)
class ServerSettings:
    """What the app needs besides the engine: the served name, access, limits and the decoding defaults."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    route_prefix: str = ""
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_words: tuple[str, ...] = ()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, before all of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise schema.APIError(413, f"the body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise schema.APIError(413, f"the body passes the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class Handler:
    """Turns validated requests into jobs for the engine, and the engine's events into OpenAI responses."""

    def __init__(self, engine: BatchingEngine, settings: ServerSettings) -> None:
        self.engine, self.settings = engine, settings
        self.generator = engine.generator

    def check_key(self, request: Request) -> None:
        if not self.settings.api_key:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.settings.api_key.encode()):
            raise schema.APIError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")

    def prompt_ids(self, body: Any) -> list[int]:
        if isinstance(body, schema.CompletionRequest):
            ids = self.generator.text_prompt_ids(body.prompt)
        elif self.generator.rendering.chat or self.generator.rendering.chat_template:
            ids = self.generator.prompt_ids({"messages": [m.model_dump(exclude_none=True) for m in body.messages]})
        else:
            if len(body.messages) != 1 or body.messages[0].role != "user":
                template = self.generator.rendering.template.name
                raise schema.APIError(
                    400,
                    f"this model was trained on single instructions (prompt template '{template}'"
                    "): send exactly one user message",
                    param="messages",
                )
            ids = self.generator.prompt_ids({"instruction": body.messages[0].content, "input": ""})
        if not ids:
            raise schema.APIError(400, "the prompt is empty", param="prompt")
        return ids

    def params(self, body: Any, prompt_length: int) -> SamplingParams:
        settings, context = self.settings, self.engine.context_length
        if prompt_length >= context:
            raise schema.APIError(
                400, f"the prompt is {prompt_length} tokens; the model's context is {context}", code="context_length"
            )
        limit = body.token_limit() if isinstance(body, schema.ChatCompletionRequest) else body.max_tokens
        if limit is not None and prompt_length + limit > context:
            raise schema.APIError(
                400,
                f"max_tokens {limit} + the prompt's {prompt_length} tokens pass the model's context of {context}",
                param="max_tokens",
                code="context_length",
            )
        temperature = settings.temperature if body.temperature is None else body.temperature
        do_sample = settings.do_sample if body.temperature is None else body.temperature > 0
        return SamplingParams(
            max_tokens=limit or min(settings.max_new_tokens, context - prompt_length),
            do_sample=do_sample,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=settings.top_p if body.top_p is None else body.top_p,
            top_k=settings.top_k if body.top_k is None else max(body.top_k, 0),
            seed=body.seed,
            stop=body.stop_strings() or settings.stop_words,
        )

    async def complete(self, request: Request, kind: type[schema.BaseRequest]) -> Any:
        self.check_key(request)
        body = schema.parse_request(await read_body(request, self.settings.max_body_bytes), kind)
        if body.model != self.settings.model_name:
            raise schema.APIError(
                404, f"the model '{body.model}' does not exist here", param="model", code="model_not_found"
            )
        try:
            prompt = self.prompt_ids(body)
        except UserError as error:
            raise schema.APIError(400, error.message, param=error.field) from None
        job = Job(prompt, self.params(body, len(prompt)), body.n, asyncio.get_running_loop())
        self.engine.submit(job)
        chat = kind is schema.ChatCompletionRequest
        request_id = schema.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            events = self._sse(job, request_id, chat, body.include_usage())
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            return await self._collect(job, request_id, chat)
        finally:
            job.cancelled = True  # a client gone before its answer was ready frees its row

    async def _collect(self, job: Job, request_id: str, chat: bool) -> dict[str, Any]:
        texts, reasons, tokens = [""] * job.n, [None] * job.n, [0] * job.n
        async for event in job.stream():
            if event.error is not None:
                raise schema.APIError(500, event.error)
            texts[event.index] += event.text
            reasons[event.index] = event.finish_reason or reasons[event.index]
            tokens[event.index] = event.completion_tokens
        choices = [schema.choice(i, texts[i], reasons[i], chat) for i in range(job.n)]
        usage = schema.usage(len(job.prompt_ids), sum(tokens))
        return schema.response(request_id, self.settings.model_name, chat, choices, usage=usage)

    async def _sse(self, job: Job, request_id: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        name, tokens = self.settings.model_name, [0] * job.n
        kind = "chat.completion.chunk" if chat else "text_completion"
        try:
            async for event in job.stream():
                if event.error is not None:
                    yield f"data: {json.dumps(schema.APIError(500, event.error).body())}\n\n"
                    continue
                tokens[event.index] = event.completion_tokens
                chunk = schema.choice(event.index, event.text, event.finish_reason, chat, delta=True)
                yield f"data: {json.dumps(schema.response(request_id, name, chat, [chunk], object=kind))}\n\n"
            if include_usage:
                usage = schema.usage(len(job.prompt_ids), sum(tokens))
                yield f"data: {json.dumps(schema.response(request_id, name, chat, [], object=kind, usage=usage))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # ends the row at the next step when the client disconnected mid-stream


def build_app(engine: BatchingEngine, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving ``engine``; routes live under ``settings.route_prefix``."""
    app = FastAPI(title="finetuning inference server", docs_url=None, redoc_url=None, openapi_url=None)
    handler = Handler(engine, settings)
    prefix = settings.route_prefix.rstrip("/")

    @app.exception_handler(schema.APIError)
    async def api_error(request: Request, error: schema.APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(schema.APIError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.get(f"{prefix}/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "running": engine.running, "queued": engine.queued}

    @app.get(f"{prefix}/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        handler.check_key(request)
        model = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "finetuning"}
        return {"object": "list", "data": [model]}

    @app.post(f"{prefix}/v1/completions")
    async def completions(request: Request) -> Any:
        return await handler.complete(request, schema.CompletionRequest)

    @app.post(f"{prefix}/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handler.complete(request, schema.ChatCompletionRequest)

    return app
