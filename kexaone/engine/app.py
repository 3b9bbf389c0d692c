"""The FastAPI application behind `kexaone serve`: routes, request checks, streaming, and the bridge between the
asyncio event loop and the scheduler thread.

Besides the OpenAI routes it answers the tokenizer routes vLLM offers and lm-evaluation-harness's
`local-completions` backend probes (`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`), and
`/v1/completions` returns `logprobs` (with `echo`, of the prompt's tokens too) computed by the scoring primitive,
so that harness can score multiple-choice tasks against this server.

`create_app(engine, settings)` builds the app; the scheduler starts and stops with the app's lifespan. Command-line
handling is in server.py; request/response shapes in protocol.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kexaone.engine.batching.scheduler import QueueFullError, Request as GenRequest, Scheduler, SchedulerStopped
from kexaone.engine.chat_io import (
    TOOL,
    ReplyStreamParser,
    chat_prompt,
    openai_tool_calls,
    parse_reply,
    reply_errors,
    tool_schemas,
    validate_tool_calls,
)
from kexaone.engine.constrained import resolve_tool_choice, tool_call_processor
from kexaone.engine.protocol import (
    APIError,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    DeltaFunctionCall,
    DeltaToolCall,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    TokenizeRequest,
    ToolCallError,
    Usage,
    error_param,
    new_id,
    now,
    openai_messages,
)
from kexaone.engine.engine import TokenScores
from kexaone.engine.sampling import SamplingParams
from kexaone.engine.sequence import FINISH_LENGTH, FINISH_TIMEOUT, GenerationResult
from kexaone.engine.server import MAX_BODY_BYTES, ServerSettings
from kexaone.tokenizer.chat import render as render_chat
from kexaone.tokenizer.pretokenize import fix_surrogates
from kexaone.tokenizer.specials import THINK_OPEN

log = logging.getLogger("kexaone.server")

STATIC_DIR = Path(__file__).with_name("static")
# How often a waiting non-streaming request checks whether its client is still there.
DISCONNECT_POLL_S = 1.0


class _LoopInbox:
    """Events from the scheduler thread on their way into one event loop, delivered in one batch per scheduler
    round (`flush`, a scheduler flush hook). Waking the loop for every event (`call_soon_threadsafe` writes to the
    loop's self-pipe, and the loop's thread then takes the GIL from the scheduler mid-step) took ~6-8% of a busy
    server's time. Order is kept: one list, drained whole, drains run in the order they were scheduled."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._drain_pending = False

    def put(self, queue: asyncio.Queue, item: Any) -> None:  # scheduler thread; RuntimeError once the loop closed
        if self.loop.is_closed():
            raise RuntimeError("the event loop is closed")
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:  # scheduler thread
        with self._lock:
            if not self._items or self._drain_pending:
                return
            self._drain_pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed meanwhile: nobody is left to read these events
            with self._lock:
                self._items, self._drain_pending = [], False

    def _drain(self) -> None:  # the loop's thread
        with self._lock:
            items, self._items = self._items, []
            self._drain_pending = False
        for queue, item in items:
            queue.put_nowait(item)


class _Pending:
    """Events of one scheduler request, carried into the event loop."""

    def __init__(self, inbox: _LoopInbox):
        self.inbox = inbox
        self.queue: asyncio.Queue = asyncio.Queue()
        self.req: GenRequest | None = None

    def on_event(self, kind: str, payload: Any) -> None:  # scheduler thread
        if kind == "tokens":
            return
        try:
            self.inbox.put(self.queue, (kind, payload))
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


async def _nothing(ids: list[int]) -> GenerationResult:
    """The generation of a `max_tokens: 0` request (it only scores its prompt)."""
    return GenerationResult(tokens=[], text="", finish_reason=FINISH_LENGTH, prompt_tokens=len(ids))


def token_text(tok, token_id: int) -> str:
    """A token as text for `logprobs.tokens`; bytes that are not valid UTF-8 alone (part of a character) are
    written `bytes:\\xNN...`, as OpenAI does."""
    b = tok.token_bytes(token_id)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{c:02x}" for c in b)


def completion_logprobs(tok, scores: TokenScores) -> CompletionLogprobs:
    """The OpenAI `logprobs` object of the returned tokens `scores.ids` (prompt tokens first with echo).
    text_offset[i] counts the characters of the returned text begun by the tokens before token i: the index of its
    text for a token of whole characters; a token holding the rest of a character starts after that character's
    index, so a client taking `text_offset[i + 1]` as the end of token i finds every piece of a character that
    reaches past a given index."""
    ids = scores.ids
    names = {i: token_text(tok, i) for i in set(ids) | {j for t in scores.top for j, _ in t}}
    offsets, begun = [], 0
    for i in ids:
        offsets.append(begun)
        begun += sum(1 for c in tok.token_bytes(i) if c & 0xC0 != 0x80)  # bytes that start a UTF-8 character
    top = [None if lp is None else {names[j]: v for j, v in t} for lp, t in zip(scores.logprobs, scores.top)]
    return CompletionLogprobs(tokens=[names[i] for i in ids], token_logprobs=scores.logprobs, top_logprobs=top,
                              text_offset=offsets)


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

    inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopInbox] = weakref.WeakKeyDictionary()
    sched.add_flush_hook(lambda: [inbox.flush() for inbox in list(inboxes.values())])

    def submit(ids: list[int], params: SamplingParams) -> _Pending:
        loop = asyncio.get_running_loop()
        inbox = inboxes.get(loop)
        if inbox is None:
            inbox = inboxes[loop] = _LoopInbox(loop)
        pending = _Pending(inbox)
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
                # most events are already queued (they arrive in batches): no timer for those
                kind, payload = pending.queue.get_nowait() if not pending.queue.empty() else \
                    await asyncio.wait_for(pending.queue.get(), timeout=DISCONNECT_POLL_S)
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
        if (problem := req.tool_problem()) is not None:
            raise APIError(400, problem[1], param=problem[0])
        declared = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        try:
            tool_schemas(declared)
        except ValueError as e:
            raise APIError(400, str(e), param="tools") from None
        choice = req.tool_choice_value()
        mode, _ = resolve_tool_choice(declared, choice)
        tools = declared if mode != "none" else None
        try:
            prompt_text, opened = chat_prompt(req.openai_messages(), tools=tools,
                                              enable_thinking=req.enable_thinking())
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        ids = await run_in_threadpool(tok.encode, prompt_text)
        check_prompt(len(ids), "messages")
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_new = budget(len(ids), req.output_limit(), param, settings.default_max_tokens)
        params = sampling(req, max_new)
        # required / named: constrained decoding (its vocabulary index is built once per tokenizer, off the loop)
        proc = await run_in_threadpool(
            tool_call_processor, tok, tools, choice, req.parallel_tool_calls is not False,
            opened.rstrip().endswith(THINK_OPEN), max_new)
        if proc is not None:
            params = dataclasses.replace(params, logits_processor=proc)
        pending = submit(ids, params)
        rid = new_id("chatcmpl")

        if not req.stream:
            res = await final(pending, request)
            if res is None:
                return JSONResponse({}, status_code=499)
            parsed = parse_reply(opened + (res.text or ""))
            raw_calls = openai_tool_calls(parsed.tool_calls, parsed.arguments_text)
            errors = reply_errors(parsed.errors, validate_tool_calls(raw_calls, tools) if tools else [])
            calls = [ResponseToolCall(id=c["id"], function=ResponseFunctionCall(**c["function"])) for c in raw_calls]
            msg = ResponseMessage(content=parsed.content, reasoning_content=parsed.reasoning, tool_calls=calls or None,
                                  tool_call_errors=[ToolCallError(**e) for e in errors] or None)
            body = ChatCompletion(id=rid, created=now(), model=settings.model_name, usage=usage(res),
                                  choices=[ChatChoice(message=msg, finish_reason=finish_reason(res, bool(calls)))])
            return JSONResponse(body.model_dump(exclude_none=True))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: Delta, finish: str | None = None) -> str:
            return _sse(ChatCompletionChunk(id=rid, created=now(), model=settings.model_name,
                                            choices=[ChunkChoice(delta=delta, finish_reason=finish)]))

        def pieces(events: list[tuple[str, object]]) -> list[str]:
            out = []
            for kind, piece in events:
                if kind == TOOL:
                    fn = piece.get("function")
                    out.append(chunk(Delta(tool_calls=[DeltaToolCall(
                        index=piece["index"], id=piece.get("id"), type=piece.get("type"),
                        function=DeltaFunctionCall(**fn) if fn else None)])))
                else:
                    out.append(chunk(Delta(**{"reasoning_content" if kind == "reasoning" else "content": piece})))
            return out

        parser = ReplyStreamParser(opened)

        def on_done(res: GenerationResult) -> list[str]:
            out = pieces(parser.finish())
            parsed = parse_reply(opened + (res.text or ""))
            errors = reply_errors(parsed.errors, validate_tool_calls(parser.openai_calls(), tools) if tools else [])
            errors += [{"index": i, "id": parser.calls[i]["id"], "name": parser.calls[i]["name"],
                        "message": "this streamed call did not complete as valid JSON: drop it"} for i in parser.failed]
            if errors:
                out.append(chunk(Delta(tool_call_errors=[ToolCallError(**e) for e in errors])))
            out.append(chunk(Delta(), finish_reason(res, bool(parser.calls))))
            if include_usage:
                out.append(_sse(ChatCompletionChunk(id=rid, created=now(), model=settings.model_name, choices=[],
                                                    usage=usage(res))))
            return out

        return stream_response(pending, request, head=[chunk(Delta(role="assistant", content=""))],
                               on_text=lambda delta: pieces(parser.feed(delta)), on_done=on_done)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        req: CompletionRequest = await read_body(request, CompletionRequest)
        if (conflict := req.conflict()) is not None:
            raise APIError(400, f"{conflict[0]}: {conflict[1]}", param=conflict[0])
        prompts = []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                ids = await run_in_threadpool(tok.encode, prompt)
                text = fix_surrogates(prompt)  # JSON may carry lone surrogates, which UTF-8 cannot encode
            else:
                V = min(engine.config.vocab_size, tok.vocab_size)
                bad = [i for i in prompt if not 0 <= i < V]
                if bad:
                    raise APIError(400, f"prompt token id {bad[0]} is outside [0, {V})", param="prompt")
                ids, text = list(prompt), None
            check_prompt(len(ids), "prompt")
            prompts.append((ids, text, budget(len(ids), req.max_tokens, "max_tokens", 16)))
        rid = new_id("cmpl")

        if req.stream:
            ids, text, max_new = prompts[0]
            pending = submit(ids, sampling(req, max_new))
            echo = (text if text is not None else tok.decode(ids)) if req.echo else ""
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(piece: str, finish: str | None = None) -> str:
                return _sse(Completion(id=rid, created=now(), model=settings.model_name,
                                       choices=[CompletionChoice(text=piece, finish_reason=finish)]).model_dump())

            def on_done(res: GenerationResult) -> list[str]:
                out = [chunk("", finish_reason(res))]
                if include_usage:
                    out.append(_sse(Completion(id=rid, created=now(), model=settings.model_name, choices=[],
                                               usage=usage(res)).model_dump()))
                return out

            return stream_response(pending, request, head=[chunk(echo)] if echo else [],
                                   on_text=lambda delta: [chunk(delta)], on_done=on_done)

        pendings = [submit(ids, sampling(req, n)) if n > 0 else None for ids, _, n in prompts]
        try:
            results = await asyncio.gather(*(final(p, request) if p is not None else _nothing(ids)
                                             for p, (ids, _, _) in zip(pendings, prompts)))
        finally:
            for p in pendings:
                if p is not None:
                    p.req.cancel()  # no-op when finished; stops the others when one failed
        if any(r is None for r in results):
            return JSONResponse({}, status_code=499)
        choices = []
        for i, ((ids, text, _), res) in enumerate(zip(prompts, results)):
            echo = (text if text is not None else tok.decode(ids)) if req.echo else ""
            lp = None
            if req.logprobs is not None:
                scores = await score_completion(ids, res.tokens, req.logprobs, req.echo)
                lp = completion_logprobs(tok, scores)
            choices.append(CompletionChoice(index=i, text=echo + (res.text or ""), finish_reason=finish_reason(res),
                                            logprobs=lp))
        total = Usage(prompt_tokens=sum(r.prompt_tokens for r in results),
                      completion_tokens=sum(len(r.tokens) for r in results),
                      total_tokens=sum(r.prompt_tokens + len(r.tokens) for r in results))
        body = Completion(id=rid, created=now(), model=settings.model_name, usage=total, choices=choices)
        return JSONResponse(body.model_dump())

    async def score_completion(ids: list[int], generated: list[int], top: int, echo: bool) -> TokenScores:
        """Log-probs of the prompt (with echo) and of the generated tokens. The prompt is scored on its own, so
        its numbers are `token_logprobs(model, [prompt])` whatever was generated after it (a forward over more
        positions may round the same positions differently in the last bit)."""
        P = len(ids)
        parts = []
        if echo:
            parts.append(await scheduled(lambda: engine.score(ids, top)))
        if generated:
            full = await scheduled(lambda: engine.score(ids + generated, top))
            parts.append(TokenScores(ids=full.ids[P:], logprobs=full.logprobs[P:], top=full.top[P:]))
        return TokenScores(ids=[i for p in parts for i in p.ids], logprobs=[x for p in parts for x in p.logprobs],
                           top=[t for p in parts for t in p.top])

    async def scheduled(fn):
        """fn() on the scheduler thread (the model's only user), awaited here."""
        try:
            fut = sched.call(fn)
        except QueueFullError as e:
            raise APIError(429, f"server busy: {e}; retry later", type="rate_limit_error", code="queue_full") from None
        except SchedulerStopped as e:
            raise APIError(503, str(e), type="server_error") from None
        try:
            return await asyncio.wrap_future(fut)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        except SchedulerStopped as e:
            raise _generation_error(e) from None

    # ------------------------------------------------------------------ tokenizer routes (vLLM's, at the root)
    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        check_auth(request)
        cfg = getattr(tok, "config", {}) or {}
        eos = cfg.get("eos_token") if isinstance(cfg.get("eos_token"), str) else None
        if eos is None and tok.eos_id is not None:
            eos = tok.id_to_token(tok.eos_id)
        pad = tok.id_to_token(tok.pad_id) if tok.pad_id is not None else None
        bos = cfg.get("bos_token") if isinstance(cfg.get("bos_token"), str) else None
        return {"tokenizer_class": type(tok).__name__, "eos_token": eos, "bos_token": bos, "pad_token": pad,
                "chat_template": tok.chat_template, "model_max_length": context, "vocab_size": tok.vocab_size}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        check_auth(request)
        req: TokenizeRequest = await read_body(request, TokenizeRequest)
        if req.messages is not None:
            try:
                text, _ = chat_prompt(openai_messages(req.messages), enable_thinking=True) \
                    if req.add_generation_prompt else (render_chat(openai_messages(req.messages)), "")
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
        else:
            text = req.prompt
        ids = await run_in_threadpool(tok.encode, text)
        return {"count": len(ids), "max_model_len": context, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        check_auth(request)
        req: DetokenizeRequest = await read_body(request, DetokenizeRequest)
        bad = [i for i in req.tokens if not 0 <= i < tok.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside [0, {tok.vocab_size})", param="tokens")
        return {"prompt": tok.decode(req.tokens)}

    # ------------------------------------------------------------------ the one SSE streamer
    def stream_response(pending: _Pending, request: Request, head: list[str],
                        on_text: Callable[[str], list[str]],
                        on_done: Callable[[GenerationResult], list[str]]) -> StreamingResponse:
        """Server-sent events of one generation: `head` chunks, `on_text(delta)` chunks as text arrives,
        `on_done(result)` chunks at the end, errors as error bodies, then `data: [DONE]`."""

        async def body() -> AsyncIterator[str]:
            try:
                for c in head:
                    yield c
                async for kind, payload in events(pending, request, check_disconnect=False):
                    if kind == "text":
                        for c in on_text(payload):
                            yield c
                    elif kind == "error":
                        yield _sse(_generation_error(payload).body())
                    elif kind == "done":
                        if payload.finish_reason == FINISH_TIMEOUT:
                            yield _sse(_timeout_error(settings).body())
                            break
                        for c in on_done(payload):
                            yield c
                yield "data: [DONE]\n\n"
            except APIError as e:
                yield _sse(e.body())
                yield "data: [DONE]\n\n"
            finally:
                pending.req.cancel()  # no-op when finished; stops generation when the client went away

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
