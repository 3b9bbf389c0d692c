"""Where evaluation prompts go: the local inference engine or any OpenAI-compatible HTTP server, behind one interface.

Both backends offer the same four calls, so every task family (and the agent loop) runs unchanged on either:
- `chat(messages, ...) -> ChatReply` and `chat_batch(list_of_messages, ...) -> list[ChatReply]`: an assistant turn
  split into answer, reasoning and tool calls;
- `complete(prompts, ...) -> list[str]`: raw text completion (no chat template);
- `loglik(pairs) -> list[float]`: summed log-probability of each continuation after its context.

`LocalBackend(engine)` renders the K-EXAONE chat format and decodes a whole batch in one engine call; its log-probs
come from kexaone.model.scoring.token_logprobs. `OpenAIBackend(base_url)` sends one request per prompt with
bounded concurrency, retries 429 / 5xx / timeouts / dropped connections with exponential backoff, and stops at
once with an `EndpointAuthError` on 401 / 403. Its `loglik` needs a server that returns prompt log-probs for
`/v1/completions` with `echo` (vLLM, SGLang, `kexaone serve`); without them it raises `LoglikUnsupported`.

This module does not score anything (the task families do) and does not start servers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ChatReply:
    """One assistant turn. `tool_calls` entries are {"id", "name", "arguments": dict}."""

    content: str
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """What could not be parsed in the generated turn (an unclosed think block, a tool call that is not JSON...);
    the endpoint backend leaves it empty (its server parsed the turn)."""


class EndpointError(RuntimeError):
    """The server answered with an error that retrying will not fix (or retries ran out)."""


class EndpointAuthError(EndpointError):
    """401 / 403: the key is missing, wrong, or lacks access."""


class LoglikUnsupported(EndpointError):
    """The server returned no prompt log-probs, so continuations cannot be scored through it."""


def _check_sampling(temperature: float, top_p: float, max_tokens: int) -> None:
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# ---------------------------------------------------------------------------------------------- local engine
def model_name(path: str | os.PathLike) -> str:
    """A model directory's name for results: its base name, or with a generic base name (a stage's `run/model`)
    the last three path parts, so `runs/speedrun/sft/run/model` reads `sft/run/model`, not `model`."""
    p = Path(path).resolve()
    return p.name if p.name not in ("model", "run", "merged") else "/".join(p.parts[-3:])


class LocalBackend:
    """The in-process engine (kexaone.engine.Engine with its tokenizer); batched generation and scoring.

    `batch_size` bounds the rows of one engine call (memory); `seed` makes sampled replies repeatable (row i of a
    call gets seed + i)."""

    name = "local"

    def __init__(self, engine, batch_size: int = 32, seed: int = 0):
        if engine.tokenizer is None:
            raise ValueError("LocalBackend needs an Engine built with a tokenizer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.model_path: str | None = None

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, **kw) -> "LocalBackend":
        from kexaone.engine.engine import Engine

        engine = Engine.from_pretrained(path, dtype=dtype, device=device)
        if engine.tokenizer is None:
            raise FileNotFoundError(f"model directory {path} has no tokenizer.json; evaluation needs the tokenizer")
        backend = cls(engine, **kw)
        backend.model_path = str(Path(path).resolve())
        return backend

    def identity(self) -> dict:
        """The model's directory and a revision: a hash of its config.json and weight files' names and sizes."""
        from kexaone.eval.results import config_hash

        rev = None
        if self.model_path:
            d = Path(self.model_path)
            parts = [(p.name, p.stat().st_size) for p in sorted(d.glob("*.safetensors"))]
            cfg = (d / "config.json").read_text(encoding="utf-8") if (d / "config.json").is_file() else ""
            rev = config_hash([cfg, parts])
        else:  # an in-memory model: its parameters identify it
            params = list(self.engine.model.parameters())[:64]
            rev = config_hash([round(float(p.detach().double().sum()), 6) for p in params])
        return {"backend": "local", "path": self.model_path,
                "model": model_name(self.model_path) if self.model_path else "in-memory", "revision": rev}

    @property
    def max_context(self) -> int:
        return int(self.engine.config.max_position_embeddings)

    exact_token_counts = True

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _generate(self, prompts: list[list[int]], temperature: float, top_p: float, max_tokens: int,
                  stop: list[str], seed: int | None, processors: Sequence[Any] | None = None):
        """`processors[i]`: row i's logits processor (a tool_choice's constrained decoding) or None."""
        out = []
        base = self.seed if seed is None else seed
        for b in range(0, len(prompts), self.batch_size):
            chunk = prompts[b:b + self.batch_size]
            params = []
            for i in range(len(chunk)):
                extra = {}
                if processors is not None and processors[b + i] is not None:
                    extra["logits_processor"] = processors[b + i]
                params.append(self.engine.make_params(max_new_tokens=max_tokens, temperature=float(temperature),
                                                      top_p=float(top_p), seed=base + b + i, stop=stop or None,
                                                      **extra))
            out.extend(self.engine.generate_batch(chunk, params=params))
        return out

    def chat(self, messages: Sequence[dict], **kw) -> ChatReply:
        return self.chat_batch([messages], **kw)[0]

    def chat_batch(self, batch: Sequence[Sequence[dict]], *, tools: Sequence[dict] | None = None,
                   tool_choice: Any = None, temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 256,
                   enable_thinking: bool | None = None, stop: str | Sequence[str] | None = None,
                   seed: int | None = None) -> list[ChatReply]:
        """`tools` and `tool_choice` mean what they mean to Engine.chat and to an OpenAI server: "none" hides the
        tools, "auto" (the default with tools) lets the model decide, "required" or `{"type": "function",
        "function": {"name": N}}` constrain decoding to calls (of N) with schema-valid arguments. The batch is
        decoded together; each row is prepared as Engine.chat would (Engine.prepare_chat)."""
        from kexaone.engine.chat_io import parse_reply

        _check_sampling(temperature, top_p, max_tokens)
        thinking = True if enable_thinking is None else bool(enable_thinking)
        prepared = [self.engine.prepare_chat(list(m), tools=tools, enable_thinking=thinking, tool_choice=tool_choice,
                                             max_new_tokens=max_tokens) for m in batch]
        results = self._generate([p.ids for p in prepared], temperature, top_p, max_tokens, _stop_list(stop), seed,
                                 processors=[p.processor for p in prepared])
        replies = []
        for p, res in zip(prepared, results):
            parsed = parse_reply(p.opened + (res.text or ""))
            calls = [{"id": f"call_{i}", "name": c["name"], "arguments": dict(c["arguments"])}
                     for i, c in enumerate(parsed.tool_calls)]
            finish = "tool_calls" if calls and res.finish_reason == "stop" else res.finish_reason
            n_gen = len(res.tokens)
            replies.append(ChatReply(content=parsed.content, reasoning=parsed.reasoning, tool_calls=calls,
                                     finish_reason=finish, errors=list(parsed.errors),
                                     usage={"prompt_tokens": res.prompt_tokens, "completion_tokens": n_gen,
                                            "total_tokens": res.prompt_tokens + n_gen}))
        return replies

    def complete(self, prompts: Sequence[str], *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: str | Sequence[str] | None = None, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        _check_sampling(temperature, top_p, max_tokens)
        ids = [self.engine.encode_prompt(p) for p in prompts]
        return [r.text or "" for r in self._generate(ids, temperature, top_p, max_tokens, _stop_list(stop), seed)]

    def loglik(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Summed natural-log probability of each continuation's tokens after its context."""
        return [s for s, _ in self.loglik_counts(pairs)]

    def loglik_counts(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, int]]:
        """(summed log-prob, number of continuation tokens) of each pair. The pair is tokenised as
        running text when the context's tokens are a prefix of the whole's (SuperBPE may merge across the join),
        otherwise context and continuation are encoded apart (kexaone.eval.tasks._continuation_ids)."""
        import torch

        from kexaone.eval.tasks import _continuation_ids
        from kexaone.model.scoring import token_logprobs

        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"pair {i}: the continuation is empty")
            p, c = _continuation_ids(self.tokenizer, ctx, cont)
            if not p:
                # Nothing predicts the first token: start from the end-of-text separator as pre-training does.
                p = [self.tokenizer.eot_id]
            rows.append((p, c))
        out = [(0.0, 0)] * len(rows)
        pad = self.tokenizer.pad_id or 0
        order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][0]) + len(rows[r][1])))
        model = self.engine.model
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                width = max(len(rows[r][0]) + len(rows[r][1]) for r in idx)
                # Right padding: causal attention never lets a real position see the pad after it.
                ids_BT = torch.full((len(idx), width), pad, dtype=torch.long)
                mask_BT = torch.zeros(len(idx), width, dtype=torch.bool)
                for row, r in enumerate(idx):
                    p, c = rows[r]
                    ids_BT[row, :len(p) + len(c)] = torch.tensor(p + c)
                    mask_BT[row, len(p):len(p) + len(c)] = True
                lp_BT = token_logprobs(model, ids_BT.to(self.engine.device), mask_BT.to(self.engine.device))
                for row, r in enumerate(idx):
                    out[r] = (float(lp_BT[row].sum()), len(rows[r][1]))
        return out


# ---------------------------------------------------------------------------------------------- HTTP endpoint
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, SGLang, `kexaone serve`, hosted APIs).

    `base_url` is the server root or its `/v1`; `model` defaults to the first id of `/v1/models`; the API key is read
    from the environment variable `api_key_env` (never passed on the command line). Requests run `concurrency` at a
    time; a 429, 5xx, timeout or dropped connection is retried up to `max_retries` times after `backoff * 2**k`
    seconds (or the server's Retry-After when it gives one)."""

    name = "endpoint"

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = None,
                 timeout: float = 120.0, max_retries: int = 5, concurrency: int = 8, backoff: float = 1.0,
                 max_backoff: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 tokenizer: str | Path | None = None):
        """`tokenizer`: a directory (or file) with the served model's tokenizer.json, so prompt lengths (NIAH,
        RULER) are measured in the model's tokens; without it they are estimated at 4 characters per token."""
        import httpx

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {base_url!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self.api_key_env = api_key_env
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set "
                                 "or empty")
            headers["Authorization"] = f"Bearer {key}"
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep = sleep
        self._client = httpx.Client(timeout=self.timeout, headers=headers,
                                    limits=httpx.Limits(max_connections=self.concurrency))
        self._model = model
        self._max_context: int | None = None
        self._probed = False
        self._count = None  # text -> token count, once known how (tokenizer file, server /tokenize, or estimate)
        self.exact_token_counts = False
        if tokenizer is not None:
            from tokenizers import Tokenizer

            path = Path(tokenizer)
            path = path / "tokenizer.json" if path.is_dir() else path
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer {path} does not exist (give a directory with tokenizer.json)")
            tok = Tokenizer.from_file(str(path))
            self._count = lambda text: len(tok.encode(text, add_special_tokens=False).ids)
            self.exact_token_counts = True

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the served model's tokenizer: from `tokenizer` when given, else the server's vLLM-style
        `POST /tokenize` (kexaone serve, vLLM, SGLang), else an estimate of 4 characters per token
        (`exact_token_counts` says which)."""
        if self._count is None:
            self._count = self._remote_counter() or (lambda t: max(1, (len(t) + 3) // 4))
        return self._count(text)

    def _remote_counter(self):
        root = self.base_url[:-len("/v1")]

        def count(text: str) -> int:
            r = self._client.post(root + "/tokenize", json={"model": self.model, "prompt": text})
            r.raise_for_status()
            return int(r.json()["count"])
        try:
            count("probe")
        except Exception:  # noqa: BLE001 - any failure means the server has no usable /tokenize
            return None
        self.exact_token_counts = True
        return count

    def identity(self) -> dict:
        return {"backend": "endpoint", "url": self.base_url, "model": self.model, "revision": None}

    # ---------------------------------------------------------------- transport
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAIBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                r = self._client.request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
                wait = None
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except json.JSONDecodeError:
                        raise EndpointError(f"{method} {url}: the server's reply is not JSON: {r.text[:200]!r}")
                detail = _error_text(r)
                if r.status_code in (401, 403):
                    hint = (f"check the key in ${self.api_key_env}" if self.api_key_env
                            else "pass --api-key-env VAR with the name of the variable that holds the key")
                    raise EndpointAuthError(f"{method} {url}: authentication failed (HTTP {r.status_code}: "
                                            f"{detail}); {hint}")
                if r.status_code not in RETRY_STATUS:
                    raise EndpointError(f"{method} {url}: HTTP {r.status_code}: {detail}")
                last = f"HTTP {r.status_code}: {detail}"
                wait = _retry_after(r)
            if attempt == self.max_retries:
                break
            self._sleep(min(self.max_backoff, wait if wait is not None else self.backoff * 2 ** attempt))
        raise EndpointError(f"{method} {url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models").get("data") or []
            if not data:
                raise EndpointError(f"{self.base_url}/models lists no model; pass --api-model NAME")
            self._model = str(data[0]["id"])
            if data[0].get("max_model_len"):
                self._max_context = int(data[0]["max_model_len"])
        return self._model

    @property
    def max_context(self) -> int | None:
        """The served context length when /v1/models reports it (vLLM, SGLang and kexaone serve do), else None."""
        if self._max_context is None and not self._probed:
            self._probed = True
            try:
                data = self._request("GET", "/models").get("data") or []
            except EndpointError:
                data = []  # servers without /v1/models: the families fall back to their default lengths
            for card in data:
                if card.get("max_model_len") and (self._model is None or card.get("id") == self._model):
                    self._max_context = int(card["max_model_len"])
                    break
        return self._max_context

    # ---------------------------------------------------------------- API
    def chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None, tool_choice: Any = None,
             temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 256,
             enable_thinking: bool | None = None, stop: str | Sequence[str] | None = None,
             seed: int | None = None) -> ChatReply:
        _check_sampling(temperature, top_p, max_tokens)
        if not messages:
            raise ValueError("messages must not be empty")
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": float(temperature),
                                "top_p": float(top_p), "max_tokens": int(max_tokens)}
        if tools:
            body["tools"] = list(tools)
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        if stop:
            body["stop"] = _stop_list(stop)
        if seed is not None:
            body["seed"] = int(seed)
        if enable_thinking is not None:
            # vLLM / SGLang / kexaone serve pass these to the chat template.
            body["chat_template_kwargs"] = {"enable_thinking": bool(enable_thinking)}
        data = self._request("POST", "/chat/completions", body)
        try:
            choice = data["choices"][0]
            msg = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"chat reply has no choices: {str(data)[:200]}")
        calls = []
        for i, c in enumerate(msg.get("tool_calls") or []):
            fn = c.get("function") or {}
            args = fn.get("arguments") or {}
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    args = {"_unparsed": args}  # kept so a caller can report the model's malformed call
            calls.append({"id": c.get("id") or f"call_{i}", "name": fn.get("name", ""), "arguments": args})
        reasoning = msg.get("reasoning_content", msg.get("reasoning"))
        return ChatReply(content=msg.get("content") or "", reasoning=reasoning, tool_calls=calls,
                         finish_reason=choice.get("finish_reason") or "stop", usage=dict(data.get("usage") or {}))

    def chat_batch(self, batch: Sequence[Sequence[dict]], **kw) -> list[ChatReply]:
        _ = self.model  # resolve once, before the threads start
        return self._map(lambda m: self.chat(m, **kw), list(batch))

    def complete(self, prompts: Sequence[str], *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: str | Sequence[str] | None = None, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        _check_sampling(temperature, top_p, max_tokens)
        _ = self.model  # resolve once, before the threads start

        def one(prompt: str) -> str:
            body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": int(max_tokens),
                                    "temperature": float(temperature), "top_p": float(top_p)}
            if stop:
                body["stop"] = _stop_list(stop)
            if seed is not None:
                body["seed"] = int(seed)
            data = self._request("POST", "/completions", body)
            try:
                return data["choices"][0].get("text") or ""
            except (KeyError, IndexError, TypeError):
                raise EndpointError(f"completion reply has no choices: {str(data)[:200]}")

        return self._map(one, list(prompts))

    def loglik(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Summed log-prob of each continuation after its context."""
        return [s for s, _ in self.loglik_counts(pairs)]

    def loglik_counts(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, int]]:
        """(summed log-prob, continuation tokens) of each pair: one `/v1/completions` call with the whole text as
        prompt, `echo` and `logprobs`, 1 new token (which is ignored); the continuation's tokens are those that end
        after the context's last character (a token that straddles the join counts as continuation)."""
        _ = self.model  # resolve once, before the threads start

        def one(pair: tuple[str, str]) -> tuple[float, int]:
            ctx, cont = pair
            if not cont:
                raise ValueError("loglik: the continuation is empty")
            whole = ctx + cont
            body = {"model": self.model, "prompt": whole, "max_tokens": 1, "temperature": 0.0, "echo": True,
                    "logprobs": 1}
            data = self._request("POST", "/completions", body)
            try:
                lp = data["choices"][0].get("logprobs")
            except (KeyError, IndexError, TypeError):
                lp = None
            if not lp or not lp.get("token_logprobs"):
                raise LoglikUnsupported(f"{self.base_url}/completions returned no prompt log-probs for echo=True; "
                                        "log-likelihood scoring (--mcq-mode loglik, bits per byte) needs a server "
                                        "that supports echo with logprobs (vLLM, SGLang, kexaone serve)")
            tokens, values = lp.get("tokens") or [], lp["token_logprobs"]
            # The echoed prompt's tokens come first, then the generated one(s) (lm-eval drops the last token the
            # same way); their offsets cannot be trusted to lie past the prompt (a partial UTF-8 byte has no text).
            generated = (data.get("usage") or {}).get("completion_tokens")
            n_prompt = len(values) - (1 if generated is None else int(generated))
            offsets = lp.get("text_offset")
            if not offsets:  # rebuild offsets from the token strings
                offsets, at = [], 0
                for t in tokens:
                    offsets.append(at)
                    at += len(t)
            total, count = 0.0, 0
            for i in range(max(0, n_prompt)):
                end = offsets[i + 1] if i + 1 < n_prompt else len(whole)
                if end > len(ctx):  # the token holds continuation text (one straddling the join counts)
                    if values[i] is None:
                        raise LoglikUnsupported("the server gave no log-prob for the first continuation token "
                                                "(an empty context cannot be scored through it)")
                    total += float(values[i])
                    count += 1
            if not count:
                raise EndpointError(f"could not locate the continuation {cont[:40]!r} in the echoed tokens")
            return total, count

        return self._map(one, list(pairs))


def _error_text(r) -> str:
    try:
        d = r.json()
        if isinstance(d, dict):
            e = d.get("error", d)
            if isinstance(e, dict):
                return str(e.get("message") or e)[:300]
            return str(e)[:300]
    except (json.JSONDecodeError, ValueError):
        pass
    return (r.text or r.reason_phrase or "")[:300]


def _retry_after(r) -> float | None:
    v = r.headers.get("retry-after")
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None
