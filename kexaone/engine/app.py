"""The FastAPI application behind `kexaone serve`: routes, request checks, streaming, and the bridge between the
asyncio event loop and the scheduler thread.

`create_app(engine, settings)` builds the app; the scheduler starts and stops with the app's lifespan. Command-line
handling is in server.py; request/response shapes in protocol.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kexaone.engine.batching.scheduler import QueueFullError, Request as GenRequest, Scheduler, SchedulerStopped
from kexaone.engine.chat_io import ReplyStreamParser, chat_prompt, openai_tool_calls, parse_reply
from kexaone.engine.protocol import (
    APIError,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    DeltaToolCall,
    ModelCard,
    ModelList,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    Usage,
    error_param,
    new_id,
    now,
)
from kexaone.engine.sampling import SamplingParams
from kexaone.engine.sequence import FINISH_TIMEOUT, GenerationResult
from kexaone.engine.server import MAX_BODY_BYTES, ServerSettings
from kexaone.tokenizer.pretokenize import fix_surrogates

log = logging.getLogger("kexaone.server")

STATIC_DIR = Path(__file__).with_name("static")
# How often a waiting non-streaming request checks whether its client is still there.
DISCONNECT_POLL_S = 1.0


class _Pending:
    """Events of one scheduler request, carried into the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.req: GenRequest | None = None

    def on_event(self, kind: str, payload: Any) -> None:  # scheduler thread
        if kind == "tokens":
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: the client and server are gone
            if self.req is not None:
                self.req.cancel()


def _timeout_error(settings: ServerSettings) -> APIError:
    return APIError(504, f"the request took longer than the server's timeout ({settings.timeout:g} s)",
                    type="timeout_error", code="timeout")


def _generation_error(e: BaseException) -> APIError:
    if isinstance(e, SchedulerStopped):
        return APIError(503, str(e), type="server_error", code="shutting_down")
    return APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")


def _sse(obj: BaseModel | dict) -> str:
    data = obj.model_dump_json(exclude_none=True) if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {data}\n\n"


def create_app(engine, settings: ServerSettings | None = None, scheduler: Scheduler | None = None) -> FastAPI:
    from contextlib import asynccontextmanager

    settings = (settings or ServerSettings()).validate()
    if engine.tokenizer is None:
        raise ValueError("the server needs an Engine with a tokenizer")
    if settings.speculative is not None:
        engine.check_speculative(settings.speculative, settings.draft_tokens)  # fail at start-up, not per request
    sched = scheduler or Scheduler(engine, max_batch_size=settings.max_batch_size,
                                   max_active_batches=settings.max_active_batches, max_queue=settings.max_queue,
                                   merge=settings.continuous_batching)
    tok = engine.tokenizer
    context = engine.config.max_position_embeddings
    prompt_limit = min(settings.max_prompt_tokens, context - 1)
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sched.start()
        try:
            yield
        finally:
            await run_in_threadpool(sched.stop)

    app = FastAPI(title="kexaone", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = sched
    app.state.settings = settings

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = error_param(err.get("loc", ()))
        e = APIError(400, f"{param or 'request'}: {err.get('msg')}", param=param)
        return JSONResponse(e.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error")
        e = APIError(exc.status_code, str(exc.detail), type=kind)
        return JSONResponse(e.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        e = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(e.body(), status_code=500)

    # ------------------------------------------------------------------ request helpers
    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    async def read_body(request: Request, model_cls):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise APIError(413, f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise APIError(400, f"request body is not valid UTF-8 (invalid byte at offset {e.start})") from None

        def no_constants(name: str):
            raise ValueError(f"{name} is not valid JSON")

        try:
            obj = json.loads(text, parse_constant=no_constants)
        except json.JSONDecodeError as e:
            raise APIError(400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        except ValueError as e:
            raise APIError(400, f"malformed JSON: {e}") from None
        if not isinstance(obj, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(obj).__name__}")
        try:
            req = model_cls.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            param = error_param(err["loc"])
            raise APIError(400, f"{param or 'request'}: {err['msg']}", param=param) from None
        if req.model is not None and req.model != settings.model_name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", type="not_found_error", code="model_not_found")
        return req

    def budget(prompt_len: int, asked: int | None, param: str, default: int) -> int:
        if asked is not None and asked > settings.max_tokens:
            raise APIError(400, f"{param} = {asked} exceeds this server's limit of {settings.max_tokens}",
                           param=param)
        room = context - prompt_len
        if asked is not None and asked > room:
            raise APIError(400, f"{param} = {asked} does not fit: the prompt has {prompt_len} tokens and the "
                           f"context is {context}", param=param, code="context_length_exceeded")
        return min(default if asked is None else asked, room)

    def check_prompt(n: int, param: str) -> None:
        if n == 0:
            raise APIError(400, f"{param} is empty", param=param)
        if n > prompt_limit:
            raise APIError(400, f"prompt too long: {n} tokens, the limit is {prompt_limit}", param=param,
                           code="context_length_exceeded")

    def sampling(req, max_new: int) -> SamplingParams:
        try:
            return SamplingParams(
                max_new_tokens=max_new, temperature=1.0 if req.temperature is None else req.temperature,
                top_p=0.95 if req.top_p is None else req.top_p, top_k=req.top_k or 0, seed=req.seed,
                stop=tuple(req.stop_list()))
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def submit(ids: list[int], params: SamplingParams) -> _Pending:
        pending = _Pending(asyncio.get_running_loop())
        greq = GenRequest(prompt_ids=ids, params=params, on_event=pending.on_event,
                          speculative=settings.speculative, draft_tokens=settings.draft_tokens,
                          deadline=time.monotonic() + settings.timeout)
        pending.req = greq
        try:
            sched.submit(greq)
        except QueueFullError as e:
            raise APIError(429, f"server busy: {e}; retry later", type="rate_limit_error",
                           code="queue_full") from None
        except SchedulerStopped as e:
            raise APIError(503, str(e), type="server_error") from None
        return pending

    async def events(pending: _Pending, request: Request, check_disconnect: bool) -> AsyncIterator[tuple]:
        """Events until the terminal one; ends the request when the client leaves or the deadline passes."""
        hard_deadline = time.monotonic() + settings.timeout + 30.0  # the scheduler itself may be stuck in a step
        while True:
            try:
                kind, payload = await asyncio.wait_for(pending.queue.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if check_disconnect and await request.is_disconnected():
                    pending.req.cancel()
                    return
                if time.monotonic() > hard_deadline:
                    pending.req.cancel()
                    raise _timeout_error(settings) from None
                continue
            yield kind, payload
            if kind in ("done", "error"):
                return

    async def final(pending: _Pending, request: Request) -> GenerationResult | None:
        async for kind, payload in events(pending, request, check_disconnect=True):
            if kind == "error":
                raise _generation_error(payload)
            if kind == "done":
                if payload.finish_reason == FINISH_TIMEOUT:
                    raise _timeout_error(settings)
                return payload
        return None  # client gone

    def usage(res: GenerationResult) -> Usage:
        return Usage(prompt_tokens=res.prompt_tokens, completion_tokens=len(res.tokens),
                     total_tokens=res.prompt_tokens + len(res.tokens))

    def finish_reason(res: GenerationResult, tool_calls: bool = False) -> str:
        if res.finish_reason == "length":
            return "length"
        return "tool_calls" if tool_calls else "stop"

    # ------------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        ok = sched.running
        return JSONResponse({"status": "ok" if ok else "unavailable", **sched.load()}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return ModelList(data=[ModelCard(id=settings.model_name, created=created, max_model_len=context)])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        req: ChatCompletionRequest = await read_body(request, ChatCompletionRequest)
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and req.tool_choice != "none" \
            else None
        try:
            prompt_text, opened = chat_prompt(req.openai_messages(), tools=tools,
                                              enable_thinking=req.enable_thinking())
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        ids = await run_in_threadpool(tok.encode, prompt_text)
        check_prompt(len(ids), "messages")
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_new = budget(len(ids), req.output_limit(), param, settings.default_max_tokens)
        pending = submit(ids, sampling(req, max_new))
        rid = new_id("chatcmpl")

        if not req.stream:
            res = await final(pending, request)
            if res is None:
                return JSONResponse({}, status_code=499)
            parsed = parse_reply(opened + (res.text or ""))
            calls = [ResponseToolCall(id=c["id"], function=ResponseFunctionCall(**c["function"]))
                     for c in openai_tool_calls(parsed.tool_calls)]
            msg = ResponseMessage(content=parsed.content, reasoning_content=parsed.reasoning, tool_calls=calls or None)
            body = ChatCompletion(id=rid, created=now(), model=settings.model_name, usage=usage(res),
                                  choices=[ChatChoice(message=msg, finish_reason=finish_reason(res, bool(calls)))])
            return JSONResponse(body.model_dump(exclude_none=True))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: Delta, finish: str | None = None) -> str:
            return _sse(ChatCompletionChunk(id=rid, created=now(), model=settings.model_name,
                                            choices=[ChunkChoice(delta=delta, finish_reason=finish)]))

        async def stream() -> AsyncIterator[str]:
            parser = ReplyStreamParser(opened)
            try:
                yield chunk(Delta(role="assistant", content=""))
                async for kind, payload in events(pending, request, check_disconnect=False):
                    if kind == "text":
                        for mode, piece in parser.feed(payload):
                            yield chunk(Delta(**{"reasoning_content" if mode == "reasoning" else "content": piece}))
                    elif kind == "error":
                        yield _sse(_generation_error(payload).body())
                    elif kind == "done":
                        res: GenerationResult = payload
                        if res.finish_reason == FINISH_TIMEOUT:
                            yield _sse(_timeout_error(settings).body())
                            break
                        for mode, piece in parser.finish():
                            yield chunk(Delta(**{"reasoning_content" if mode == "reasoning" else "content": piece}))
                        parsed = parse_reply(opened + (res.text or ""))
                        calls = openai_tool_calls(parsed.tool_calls)
                        if calls:
                            yield chunk(Delta(tool_calls=[
                                DeltaToolCall(index=i, id=c["id"], type="function",
                                              function=ResponseFunctionCall(**c["function"]))
                                for i, c in enumerate(calls)]))
                        yield chunk(Delta(), finish_reason(res, bool(calls)))
                        if include_usage:
                            yield _sse(ChatCompletionChunk(id=rid, created=now(), model=settings.model_name,
                                                           choices=[], usage=usage(res)))
                yield "data: [DONE]\n\n"
            except APIError as e:
                yield _sse(e.body())
                yield "data: [DONE]\n\n"
            finally:
                pending.req.cancel()  # no-op when finished; stops generation when the client went away

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        req: CompletionRequest = await read_body(request, CompletionRequest)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            ids = await run_in_threadpool(tok.encode, prompt)
            prompt_text = fix_surrogates(prompt)  # JSON may carry lone surrogates, which UTF-8 cannot encode
        else:
            V = min(engine.config.vocab_size, tok.vocab_size)
            bad = [i for i in prompt if not 0 <= i < V]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is outside [0, {V})", param="prompt")
            ids = list(prompt)
            prompt_text = tok.decode(ids) if req.echo else ""
        check_prompt(len(ids), "prompt")
        max_new = budget(len(ids), req.max_tokens, "max_tokens", 16)
        pending = submit(ids, sampling(req, max_new))
        rid = new_id("cmpl")
        echo = prompt_text if req.echo else ""

        if not req.stream:
            res = await final(pending, request)
            if res is None:
                return JSONResponse({}, status_code=499)
            body = Completion(id=rid, created=now(), model=settings.model_name, usage=usage(res),
                              choices=[CompletionChoice(text=echo + (res.text or ""),
                                                        finish_reason=finish_reason(res))])
            return JSONResponse(body.model_dump())

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(text: str, finish: str | None = None) -> str:
            return _sse(Completion(id=rid, created=now(), model=settings.model_name,
                                   choices=[CompletionChoice(text=text, finish_reason=finish)]).model_dump())

        async def stream() -> AsyncIterator[str]:
            try:
                if echo:
                    yield chunk(echo)
                async for kind, payload in events(pending, request, check_disconnect=False):
                    if kind == "text":
                        yield chunk(payload)
                    elif kind == "error":
                        yield _sse(_generation_error(payload).body())
                    elif kind == "done":
                        if payload.finish_reason == FINISH_TIMEOUT:
                            yield _sse(_timeout_error(settings).body())
                            break
                        yield chunk("", finish_reason(payload))
                        if include_usage:
                            yield _sse({"id": rid, "object": "text_completion", "created": now(),
                                        "model": settings.model_name, "choices": [],
                                        "usage": usage(payload).model_dump()})
                yield "data: [DONE]\n\n"
            except APIError as e:
                yield _sse(e.body())
                yield "data: [DONE]\n\n"
            finally:
                pending.req.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
