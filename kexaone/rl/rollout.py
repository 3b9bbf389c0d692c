"""Rollouts for RL and preference learning: G sampled responses per prompt with their per-token log-probs, from
kexaone's engine in process or from an OpenAI-compatible server.

`EngineRollouts(model, tokenizer)` samples with `kexaone.engine.Engine` (batched, `exact_logprobs=True`, so the
log-probs come from the training forward and the first update's importance ratio is exactly 1 when nothing else
differs). The rollout log-prob of a token is `GenerationResult.sampling_logprobs`: its log-prob under the
distribution it was actually drawn from (after temperature and top-p). With top_p < 1 or temperature != 1 that
distribution is not the policy's pi (temperature 1, untruncated), so the importance ratio pi / pi_rollout is not 1
even on-policy; AGAPO's truncated IS then corrects for the truncation (SPEC section 5), and the logged IS stats show
its size. The same holds for a checkpoint whose embedding is padded past the tokenizer: the engine never samples
the padding ids, so the ratio is the policy's mass on real tokens (below 1) until training moves it there.

`EndpointRollouts(url, tokenizer)` posts the rendered chat prompt as token ids to `<url>/completions` with
`logprobs: 0` and one `seed` per response (a request per response: a server seeds a whole request at once).
Token ids come from `logprobs.tokens` (vLLM's `token_id:N` with `return_tokens_as_token_ids`, else the token's
text mapped back through the tokenizer). Servers report log-probs of the raw model (kexaone serve: temperature 1,
untruncated; vLLM by default), so with top_p < 1 or temperature != 1 the endpoint's rollout log-probs are not those
of the sampled distribution: a warning says so, and in-process rollouts should be preferred there.

Seeds: response g of prompt p in a round gets seed `base + p * G + g` in both modes, so the two give the same
tokens up to floating-point rounding of the batched decode.
What this module does not do: score responses, update weights or reload a server (kexaone.rl.rounds).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["Rollout", "render_prompt", "EngineRollouts", "EndpointRollouts", "token_ids_from_names"]


@dataclass
class Rollout:
    """One sampled response. `text` is the whole assistant turn (what the generation prompt opened + the generated
    text), the completion the rewards read; `logprobs` are per token of `tokens` (the stop token included)."""

    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


def render_prompt(tokenizer: Any, row: dict, enable_thinking: bool) -> tuple[list[int], str]:
    """(prompt token ids ending with the generation prompt, the part of the assistant turn it already holds)."""
    from kexaone.engine.chat_io import chat_prompt

    text, opened = chat_prompt(row["prompt"], tools=row.get("tools"), enable_thinking=enable_thinking)
    return tokenizer.encode(text), opened


def _check_sampling(temperature: float, top_p: float, max_new_tokens: int) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"--temperature must be > 0 for RL rollouts (greedy rows have no sampling distribution), "
                         f"got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p!r}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")


class EngineRollouts:
    """In-process rollouts with kexaone's engine over the live policy `model` (no copy: each round samples from the
    weights the trainer has just updated)."""

    def __init__(self, model: Any, tokenizer: Any, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 128, enable_thinking: bool = False, batch_size: int = 64) -> None:
        from kexaone.engine import Engine

        _check_sampling(temperature, top_p, max_new_tokens)
        self.engine = Engine(model, tokenizer, exact_logprobs=True)
        self.tokenizer = tokenizer
        self.temperature, self.top_p, self.max_new_tokens = float(temperature), float(top_p), max_new_tokens
        self.enable_thinking, self.batch_size = enable_thinking, max(1, int(batch_size))

    def sample(self, rows: Sequence[dict], group_size: int, seed: int) -> list[list[Rollout]]:
        """[P][G] rollouts of `rows`."""
        rendered = [render_prompt(self.tokenizer, r, self.enable_thinking) for r in rows]
        jobs = [(p, g) for p in range(len(rows)) for g in range(group_size)]
        out: list[list[Rollout | None]] = [[None] * group_size for _ in rows]
        for i in range(0, len(jobs), self.batch_size):
            chunk = jobs[i:i + self.batch_size]
            params = [self.engine.make_params(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                              top_p=self.top_p, seed=seed + p * group_size + g) for p, g in chunk]
            results = self.engine.generate_batch([rendered[p][0] for p, _ in chunk], params=params)
            for (p, g), res in zip(chunk, results):
                out[p][g] = Rollout(list(rendered[p][0]), list(res.tokens), [float(x) for x in res.sampling_logprobs],
                                    rendered[p][1] + (res.text or ""), res.finish_reason)
        return out  # type: ignore[return-value]


def token_ids_from_names(tokenizer: Any, names: Sequence[str], table: dict[bytes, int] | None = None) -> list[int]:
    """Token ids of an OpenAI `logprobs.tokens` list: `token_id:N` (vLLM), or the token's text (`bytes:\\xNN...` for
    bytes that are not UTF-8 alone) looked up by its bytes. Raises ValueError for a name no token has."""
    if table is None:
        table = _bytes_table(tokenizer)
    ids = []
    for name in names:
        if name.startswith("token_id:"):
            ids.append(int(name.split(":", 1)[1]))
            continue
        if name.startswith("bytes:"):
            raw = bytes(int(h, 16) for h in name[len("bytes:"):].split("\\x") if h)
        else:
            raw = name.encode("utf-8")
        if raw not in table:
            raise ValueError(f"the endpoint returned token {name!r}, which this tokenizer does not have; is the "
                             "server running the same tokenizer?")
        ids.append(table[raw])
    return ids


def _bytes_table(tokenizer: Any) -> dict[bytes, int]:
    table: dict[bytes, int] = {}
    for i in range(tokenizer.vocab_size):
        table.setdefault(tokenizer.token_bytes(i), i)  # the lowest id wins where two ids share bytes
    return table


class EndpointRollouts:
    """Rollouts from an OpenAI-compatible `/v1/completions` endpoint (kexaone serve, vLLM). `url` is the API base
    (".../v1")."""

    def __init__(self, url: str, tokenizer: Any, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 128, enable_thinking: bool = False, model: str | None = None,
                 api_key: str | None = None, workers: int = 8, timeout_s: float = 600.0, transport: Any = None) -> None:
        _check_sampling(temperature, top_p, max_new_tokens)
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ValueError(f"--rollout-endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.temperature, self.top_p, self.max_new_tokens = float(temperature), float(top_p), max_new_tokens
        self.enable_thinking, self.model, self.api_key = enable_thinking, model, api_key
        self.workers, self.timeout_s, self.transport = max(1, workers), timeout_s, transport
        self._table: dict[bytes, int] | None = None
        if self.temperature != 1.0 or self.top_p < 1.0:
            warnings.warn(f"--rollout-endpoint with temperature {self.temperature} / top-p {self.top_p}: servers "
                          "report log-probs of the untruncated temperature-1 model, not of the distribution they "
                          "sampled from, so the importance ratios are biased; sample in process (no "
                          "--rollout-endpoint) or use temperature 1 and top-p 1", stacklevel=2)

    def _post(self, client: Any, ids: list[int], seed: int) -> dict:
        body = {"prompt": ids, "max_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": seed, "logprobs": 0, "return_tokens_as_token_ids": True}
        if self.model:
            body["model"] = self.model
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        r = client.post(self.url + "/completions", json=body, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"rollout endpoint {self.url}/completions answered {r.status_code}: {r.text[:300]}")
        choice = r.json()["choices"][0]
        lp = choice.get("logprobs")
        if not lp or lp.get("token_logprobs") is None:
            raise RuntimeError(f"rollout endpoint {self.url} returned no logprobs; it must support "
                               "/v1/completions with `logprobs`")
        return choice

    def sample(self, rows: Sequence[dict], group_size: int, seed: int) -> list[list[Rollout]]:
        import httpx

        if self._table is None:
            self._table = _bytes_table(self.tokenizer)
        rendered = [render_prompt(self.tokenizer, r, self.enable_thinking) for r in rows]
        jobs = [(p, g) for p in range(len(rows)) for g in range(group_size)]
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client, \
                ThreadPoolExecutor(self.workers) as pool:
            choices = list(pool.map(lambda j: self._post(client, rendered[j[0]][0], seed + j[0] * group_size + j[1]),
                                    jobs))
        out: list[list[Rollout]] = [[] for _ in rows]
        for (p, _), ch in zip(jobs, choices):
            lp = ch["logprobs"]
            tokens = token_ids_from_names(self.tokenizer, lp["tokens"], self._table)
            logprobs = [float(x) for x in lp["token_logprobs"]]
            out[p].append(Rollout(list(rendered[p][0]), tokens, logprobs, rendered[p][1] + (ch.get("text") or ""),
                                  str(ch.get("finish_reason"))))
        return out


def endpoint_ready(url: str, timeout_s: float = 120.0) -> None:
    """Wait until `<url>/models` answers 200 (a server that was just (re)started); RuntimeError after timeout_s."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url.rstrip("/") + "/models", timeout=5.0)
            if r.status_code == 200:
                return
            last = f"status {r.status_code}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(0.5)
    raise RuntimeError(f"rollout endpoint {url} did not come up within {timeout_s:.0f} s ({last})")


def dumps_rollout(r: Rollout) -> str:
    return json.dumps({"prompt_ids": r.prompt_ids, "tokens": r.tokens, "logprobs": r.logprobs, "text": r.text,
                       "finish_reason": r.finish_reason}, ensure_ascii=False)


def loads_rollout(line: str) -> Rollout:
    d = json.loads(line)
    return Rollout(d["prompt_ids"], d["tokens"], d["logprobs"], d["text"], d["finish_reason"])
