"""`kexaone serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with a web chat page at `/`.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent
events in the OpenAI chunk format ending with `data: [DONE]`). Reasoning is returned in `reasoning_content`
(message and delta); tools are declared with `tools` and calls come back as `tool_calls`; thinking is switched by
`chat_template_kwargs.enable_thinking`. Completions take a batch of prompts (strings or token-id lists) and return
`logprobs` (k top tokens, prompt tokens too with `echo`, `max_tokens: 0` to only score), and vLLM's tokenizer routes
`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize` are served: lm-evaluation-harness's
`local-completions` and `local-chat-completions` backends run against this server.

Every request is parsed here (body size, UTF-8, JSON) and validated by the pydantic models of protocol.py;
errors are JSON `{"error": {"message", "type", "param", "code"}}` with a 4xx status naming the field. Requests are
bounded (prompt tokens, output tokens, a deadline, a queue limit answered with 429) and run on the scheduler
thread (batching/scheduler.py), so a failure in one request is reported to that request only. The server binds to
127.0.0.1 unless told otherwise; `--api-key` requires `Authorization: Bearer KEY` on /v1 routes.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from kexaone.engine.cli_generate import DRAFT_VOCAB_HELP, QUANTIZE_HELP
from kexaone.engine.quantize import QUANTIZE_MODES

HELP = "serve a model over the OpenAI HTTP API, with a web chat page at /"

MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class ServerSettings:
    model_name: str = "kexaone"
    api_key: str | None = None
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = 1024
    """Output budget of a chat request that gives none."""
    timeout: float = 600.0
    """Seconds a request may take (queueing included) before it is ended with an error."""
    max_batch_size: int = 32
    """Rows decoded together. A decode step is overhead-bound at small batch: on a 2-core CPU one step of `small`
    at batch 32 costs ~2x a step at batch 8 for 4x the tokens (issue 20's server benchmark)."""
    max_active_batches: int = 4
    max_queue: int = 64
    speculative: str | None = None
    draft_tokens: int = 2
    continuous_batching: bool = True
    """Let waiting requests join a running batch (re-prefilling it) instead of only starting new batches."""

    def validate(self) -> "ServerSettings":
        for name in ("max_prompt_tokens", "max_tokens", "default_max_tokens", "max_batch_size",
                     "max_active_batches", "max_queue"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.speculative not in (None, "mtp"):
            raise ValueError(f"speculative must be None or 'mtp', got {self.speculative!r}")
        return self


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, with tokenizer.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("KEXAONE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $KEXAONE_API_KEY, which "
                        "keeps the key out of the process list)")
    p.add_argument("--served-model-name", default=None, help="model id reported by /v1/models (default: dir name)")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longest prompt accepted (tokens)")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request before it is cut off")
    p.add_argument("--max-batch-size", type=int, default=ServerSettings.max_batch_size,
                   help="requests prefilled and decoded together (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before new ones get HTTP 429")
    p.add_argument("--speculative", choices=["mtp"], default=None, help="MTP self-speculative decoding")
    p.add_argument("--draft-tokens", type=int, default=2)
    p.add_argument("--draft-vocab", type=int, default=None, metavar="N", help=DRAFT_VOCAB_HELP)
    p.add_argument("--no-continuous-batching", action="store_true",
                   help="new requests never join a running batch (they start their own)")
    p.add_argument("--join", choices=["slots", "reprefill"], default="slots",
                   help="how a request joins a running batch: slots = prefill only its prompt (default); "
                        "reprefill = recompute the running rows with it (the earlier scheme, for comparison)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default=None, help=QUANTIZE_HELP)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from kexaone.engine.app import create_app
    from kexaone.engine.cli_generate import load_engine

    if not (1 <= args.port <= 65535):
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    settings = ServerSettings(
        model_name=args.served_model_name or Path(args.model).resolve().name, api_key=args.api_key,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
        default_max_tokens=min(1024, args.max_tokens), timeout=args.timeout, max_batch_size=args.max_batch_size,
        max_queue=args.max_queue, speculative=args.speculative, draft_tokens=args.draft_tokens,
        continuous_batching=not args.no_continuous_batching).validate()
    engine = load_engine(args)
    if engine.tokenizer is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer.json: the server needs a tokenizer")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use the model",
              file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper())
    from kexaone.engine.batching import Scheduler

    sched = Scheduler(engine, max_batch_size=settings.max_batch_size, max_active_batches=settings.max_active_batches,
                      max_queue=settings.max_queue, merge=settings.continuous_batching, join=args.join)
    app = create_app(engine, settings, scheduler=sched)
    print(f"kexaone serve: http://{args.host}:{args.port}/ (chat page), OpenAI API at /v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
