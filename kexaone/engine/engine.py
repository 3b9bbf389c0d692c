"""The inference engine: prefill and decode with the hybrid KV cache, batched, with MTP self-speculative decoding.

`Engine(model, tokenizer)` offers three levels:
- `generate(prompt, ...)` / `generate_batch(prompts, ...)`: run requests to completion, optionally streaming text;
- `chat(messages, tools=None, enable_thinking=True, ...)`: render with the K-EXAONE chat format, generate, and parse
  reasoning, answer and tool calls;
- `start(...)` + `step(batch)`: one decode step at a time, which the server's scheduler interleaves across batches.

Rows of a batch have different prompt lengths: they are left-padded and the model masks the padding; all rows share
one cache length, so a speculative step commits, for every row, the number of drafts accepted by every unfinished
row (each kept token is still an exact sample of the main model, see speculative.py). A batch therefore advances at
the pace of its least predictable row; `stats.acceptance_rate` measures the drafter per row, `tokens_per_forward`
what the batch actually gained.

MTP drafting (speculative="mtp"): the MTP head reads the main model's final-normed hidden state h[t] and token
t+1 and predicts token t+2. Draft 1 comes from the MTP run over the last accepted position; drafts 2..K reuse the
one MTP layer on its own previous hidden state and the previous draft (as vLLM and SGLang do). The main model then
verifies [last, d1..dK] in one forward; both the main layers and the MTP layer roll back what was not kept, and the
MTP layer is re-run on the kept positions with the main model's real hidden states.

The engine does not tokenise chat formats itself (kexaone.tokenizer.chat) or serve HTTP (server.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kexaone.engine.sampling import BatchSampling, SamplingParams, logits_to_probs, sample_from_probs
from kexaone.engine.sequence import GenerationResult, GenerationStats, SequenceState
from kexaone.engine.speculative import verify

if TYPE_CHECKING:  # chat_io imports this module
    from kexaone.engine.chat_io import ChatResult

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]

SPECULATIVE_METHODS = (None, "mtp")
MAX_DRAFT_TOKENS = 8  # the cache keeps `extra_slots` (default 8) positions so a rollback is always possible
# Prompt positions run through the MTP head per call when catching up after a prefill: bounds the [B, T, V]
# logits it returns (only the last position's are used).
MTP_PREFILL_CHUNK = 256
# Most new tokens per row for which cache memory is reserved up front at prefill.
RESERVE_NEW_TOKENS = 2048


@dataclass
class DecodeBatch:
    """Requests decoded together, sharing one KV cache. Created by `Engine.start`, advanced by `Engine.step`."""

    seqs: list[SequenceState]
    sampling: BatchSampling
    cache: Any
    last_B: torch.Tensor
    """int64 [B]: each row's newest token, not yet run through the main model."""
    speculative: str | None
    draft_tokens: int
    stats: GenerationStats
    draft_B: torch.Tensor | None = None
    """MTP draft for the token after last_B (speculative mode)."""
    draft_q_BV: torch.Tensor | None = None
    """The distribution draft_B was drawn from."""
    mtp_hidden_B1H: torch.Tensor | None = None
    """The MTP layer's hidden state at the position that produced draft_B."""
    positions: int = 0
    """Positions stored in the cache (prompt padding included)."""

    @property
    def done(self) -> bool:
        return all(s.finished for s in self.seqs)

    def results(self) -> list[GenerationResult]:
        return [s.result(self.stats) for s in self.seqs]


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int)):
        return [x]
    return list(x)


class Engine:
    """Generation with a `KExaoneForCausalLM` (and optionally a `KExaoneTokenizer`)."""

    def __init__(self, model, tokenizer=None, *, cache_dtype: torch.dtype | None = None,
                 logits_processors: Sequence[LogitsProcessor] = ()):
        """`logits_processors`: callables `(generated_ids, logits_V) -> logits_V` applied, in order, to every
        distribution before sampling (main model and drafts alike), e.g. to ban or force tokens."""
        self.model = model.eval()
        self.logits_processors = list(logits_processors)
        self.tokenizer = tokenizer
        self.config = model.config
        p = next(model.parameters())
        self.device = p.device
        self.cache_dtype = cache_dtype or p.dtype
        if tokenizer is not None and tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{self.config.vocab_size} embedding rows")
        # Checkpoints often pad the embedding beyond the tokenizer: never sample an id the tokenizer cannot decode.
        self.vocab_limit = tokenizer.vocab_size if tokenizer is not None \
            and tokenizer.vocab_size < self.config.vocab_size else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, tokenizer: bool = True) -> "Engine":
        """Load model (and tokenizer, when the directory has one) from a Hugging Face layout directory."""
        from kexaone.model.transformer import KExaoneForCausalLM

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        model = KExaoneForCausalLM.from_pretrained(path, dtype=dtype, device=device)
        tok = None
        if tokenizer and (path / "tokenizer.json").is_file():
            from kexaone.tokenizer import KExaoneTokenizer

            tok = KExaoneTokenizer.from_dir(path)
        return cls(model, tok)

    # ------------------------------------------------------------------ helpers
    @property
    def has_mtp(self) -> bool:
        return getattr(self.model, "mtp", None) is not None

    def default_stop_token_ids(self) -> list[int]:
        """The end-of-turn token of the tokenizer, plus the config's eos id(s)."""
        ids: list[int] = []
        if self.tokenizer is not None and getattr(self.tokenizer, "eos_id", None) is not None:
            ids.append(int(self.tokenizer.eos_id))
        ids += [int(i) for i in _as_list(self.config.eos_token_id)]
        return sorted(set(ids))

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids or build Engine(model, tokenizer)")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        V = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {V}), got {bad[:5]}")
        return ids

    def make_params(self, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 0.95, top_k: int = 0,
                    seed: int | None = None, stop: str | int | Sequence[str | int] | None = None,
                    stop_token_ids: Sequence[int] | None = None, **extra) -> SamplingParams:
        """SamplingParams from keyword arguments; `stop` may mix strings and token ids."""
        strings = tuple(s for s in _as_list(stop) if isinstance(s, str))
        ids = [int(s) for s in _as_list(stop) if not isinstance(s, str)]
        if stop_token_ids is not None or ids:
            base = list(stop_token_ids) if stop_token_ids is not None else self.default_stop_token_ids()
            stop_token_ids = tuple(sorted(set(base + ids)))
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              seed=seed, stop=strings, stop_token_ids=stop_token_ids, **extra)

    def check_speculative(self, speculative: str | None, draft_tokens: int) -> None:
        """Raise ValueError unless this engine can decode with `speculative` and `draft_tokens`."""
        if speculative not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative must be one of {SPECULATIVE_METHODS}, got {speculative!r}")
        if speculative == "mtp":
            if not self.has_mtp:
                raise ValueError("speculative='mtp' needs a model with an MTP head (num_nextn_predict_layers = 1)")
            if not isinstance(draft_tokens, int) or not 1 <= draft_tokens <= MAX_DRAFT_TOKENS:
                raise ValueError(f"draft_tokens must be an integer in [1, {MAX_DRAFT_TOKENS}], got {draft_tokens!r}")

    # ------------------------------------------------------------------ public generation API
    def generate(self, prompt_ids: str | Sequence[int], max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 0.95, top_k: int = 0, seed: int | None = None,
                 stop: str | int | Sequence[str | int] | None = None, stop_token_ids: Sequence[int] | None = None,
                 speculative: str | None = None, draft_tokens: int = 2,
                 on_text: Callable[[str], None] | None = None, **extra) -> GenerationResult:
        """Generate one continuation. `on_text(delta)` receives the text as it is produced (whole characters)."""
        params = self.make_params(max_new_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids, **extra)
        cb = None if on_text is None else (lambda row, delta: on_text(delta))
        return self.generate_batch([prompt_ids], params=params, speculative=speculative,
                                   draft_tokens=draft_tokens, on_text=cb)[0]

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams
                       | Sequence[SamplingParams] | None = None, speculative: str | None = None,
                       draft_tokens: int = 2, on_text: Callable[[int, str], None] | None = None,
                       **kwargs) -> list[GenerationResult]:
        """Generate for several prompts at once (different lengths allowed). `params` is one SamplingParams for
        all, one per prompt, or built from `kwargs` (max_new_tokens, temperature, top_p, top_k, seed, stop)."""
        if not prompts:
            return []
        if params is None:
            params = self.make_params(**kwargs)
        elif kwargs:
            raise ValueError(f"give either params or sampling keywords, not both (got {sorted(kwargs)})")
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        callbacks = [None if on_text is None else (lambda d, r=r: on_text(r, d)) for r in range(len(prompts))]
        batch = self.start(prompts, plist, speculative=speculative, draft_tokens=draft_tokens, on_text=callbacks)
        while not batch.done:
            self.step(batch)
        return batch.results()

    def chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None, enable_thinking: bool = True,
             on_text: Callable[[str], None] | None = None, **gen) -> "ChatResult":
        """Render `messages` (OpenAI-style dicts) in the K-EXAONE chat format, generate the assistant turn, and
        parse it into reasoning, content and tool calls."""
        from kexaone.engine.chat_io import ChatResult, chat_prompt, parse_reply

        if self.tokenizer is None:
            raise ValueError("Engine.chat needs a tokenizer")
        prompt_text, opened = chat_prompt(messages, tools=tools, enable_thinking=enable_thinking)
        res = self.generate(self.tokenizer.encode(prompt_text), on_text=on_text, **gen)
        return ChatResult.from_generation(res, parse_reply(opened + (res.text or "")), opened)

    # ------------------------------------------------------------------ step-wise API
    @torch.inference_mode()
    def start(self, prompts: Sequence[str | Sequence[int]], params: Sequence[SamplingParams],
              speculative: str | None = None, draft_tokens: int = 2,
              on_text: Sequence[Callable[[str], None] | None] | None = None) -> DecodeBatch:
        """Prefill `prompts` and sample each row's first token."""
        self.check_speculative(speculative, draft_tokens)
        ids_list = [self.encode_prompt(p) for p in prompts]
        longest = max(len(x) for x in ids_list)
        seqs = self._new_seqs(ids_list, params, on_text, longest, speculative, draft_tokens)
        sampling = BatchSampling.from_params([s.params for s in seqs], device=self.device)
        return self._prefill(seqs, ids_list, [None] * len(seqs), sampling, speculative, draft_tokens)

    @torch.inference_mode()
    def merge(self, batch: DecodeBatch, prompts: Sequence[str | Sequence[int]], params: Sequence[SamplingParams],
              on_text: Sequence[Callable[[str], None] | None] | None = None) -> DecodeBatch:
        """A new batch holding the unfinished rows of `batch` and the new requests (continuous batching).

        The kept rows' keys and values are recomputed by one prefill over prompt + generated tokens (their
        sampling state and text streams carry on unchanged), which lets a running batch admit requests and shed
        finished rows although all rows of a cache share one length. Raises ValueError when the merged rows would
        not fit the model's context."""
        keep = [r for r, s in enumerate(batch.seqs) if not s.finished]
        ids_list = [self.encode_prompt(p) for p in prompts]
        prefixes = [batch.seqs[r].prompt_ids + batch.seqs[r].tokens[:-1] for r in keep] + ids_list
        longest = max(len(x) for x in prefixes)
        K = batch.draft_tokens if batch.speculative else 0
        left = max((batch.seqs[r].params.max_new_tokens - len(batch.seqs[r].tokens) for r in keep), default=0)
        if longest + left + K + 1 > self.config.max_position_embeddings:
            raise ValueError(f"merged batch would need {longest + left + K + 1} positions; the context is "
                             f"{self.config.max_position_embeddings}")
        seqs = [batch.seqs[r] for r in keep] + self._new_seqs(ids_list, params, on_text, longest, batch.speculative,
                                                              batch.draft_tokens)
        fresh = BatchSampling.from_params([s.params for s in seqs[len(keep):]], device=self.device)
        sampling = BatchSampling.cat([batch.sampling.select(torch.tensor(keep, dtype=torch.long)), fresh]) \
            if keep else fresh
        lasts = [batch.seqs[r].tokens[-1] for r in keep] + [None] * len(ids_list)
        return self._prefill(seqs, prefixes, lasts, sampling, batch.speculative, batch.draft_tokens)

    def _new_seqs(self, ids_list, params, on_text, longest: int, speculative, draft_tokens: int):
        limit = self.config.max_position_embeddings
        if longest >= limit:
            raise ValueError(f"prompt has {longest} tokens; the model's context is {limit} "
                             f"(max_position_embeddings), leaving no room to generate")
        seqs = []
        room = limit - longest - (draft_tokens + 1 if speculative else 0)
        for r, (ids, p) in enumerate(zip(ids_list, params)):
            stop_ids = p.stop_token_ids if p.stop_token_ids is not None else self.default_stop_token_ids()
            if p.max_new_tokens > room:
                p = _replace(p, max_new_tokens=max(0, room))
            seqs.append(SequenceState(ids, p, stop_ids, self.tokenizer,
                                      on_text=None if on_text is None else on_text[r]))
        return seqs

    def _prefill(self, seqs: list[SequenceState], prefixes: list[list[int]], lasts: list[int | None],
                 sampling: BatchSampling, speculative: str | None, draft_tokens: int) -> DecodeBatch:
        """Run `prefixes` (left-padded) into a fresh cache. Rows whose `lasts` entry is None sample their first
        token from the prefill's logits; the others already hold their next token (a merged running row)."""
        from kexaone.model.cache import KVCache

        B = len(seqs)
        longest = max(len(x) for x in prefixes)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        input_BT = torch.full((B, longest), pad, dtype=torch.long)
        mask_BT = torch.zeros((B, longest), dtype=torch.long)
        for r, ids in enumerate(prefixes):
            input_BT[r, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask_BT[r, longest - len(ids):] = 1
        input_BT, mask_BT = input_BT.to(self.device), mask_BT.to(self.device)
        stats = GenerationStats(prompt_tokens=sum(len(s.prompt_ids) for s in seqs), rows=B)

        t0 = time.perf_counter()
        # Reserve the global layers' buffers once for the expected length (bounded: requests that stop early
        # should not pin a worst-case allocation; past the reservation the cache grows as usual).
        budget = max(s.params.max_new_tokens - len(s.tokens) for s in seqs)
        reserve = longest + min(budget, RESERVE_NEW_TOKENS) + (draft_tokens + 1 if speculative else 1)
        cache = KVCache(self.config, B, dtype=self.cache_dtype, device=self.device, max_seq_len=reserve)
        padded = bool((mask_BT == 0).any())
        out = self.model(input_BT, cache=cache, attention_mask=mask_BT if padded else None, logits_to_keep=1)
        need = [r for r, t in enumerate(lasts) if t is None]
        last_B = torch.tensor([0 if t is None else t for t in lasts], dtype=torch.long, device=self.device)
        count_B = torch.zeros(B, dtype=torch.long)
        if need:
            rows = torch.tensor(need, dtype=torch.long, device=self.device)
            sub = sampling.select(rows) if len(need) < B else sampling
            probs = self._probs(out.logits[rows, -1], sub, lambda: [[] for _ in need])
            last_B[rows] = sample_from_probs(probs, sub)
            count_B[need] = 1
        batch = DecodeBatch(seqs=seqs, sampling=sampling, cache=cache, last_B=last_B, speculative=speculative,
                            draft_tokens=draft_tokens, stats=stats, positions=longest)
        self._emit(batch, last_B[:, None], count_B)
        if speculative == "mtp" and not batch.done:
            # Fill the MTP layer's cache over the prefix: position t reads (h[t], token t+1); the last position
            # reads each row's next token and drafts the one after it.
            next_BT = torch.cat([input_BT[:, 1:], last_B[:, None]], dim=1)
            self._mtp_catch_up(batch, out.hidden_states, next_BT)
        stats.prefill_seconds = time.perf_counter() - t0
        return batch

    @torch.inference_mode()
    def step(self, batch: DecodeBatch) -> None:
        """One main-model forward: a plain decode step, or draft + verify in speculative mode."""
        if batch.done:
            return
        t0 = time.perf_counter()
        if batch.speculative == "mtp":
            self._speculative_step(batch)
        else:
            out = self.model(batch.last_B[:, None], cache=batch.cache, logits_to_keep=1)
            batch.positions += 1
            probs_BV = self._probs(out.logits[:, -1], batch.sampling, lambda: [s.tokens for s in batch.seqs])
            tok_B = sample_from_probs(probs_BV, batch.sampling)
            batch.last_B = tok_B
            batch.stats.main_forwards += 1
            self._emit(batch, tok_B[:, None], torch.ones_like(tok_B))
        batch.stats.decode_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ internals
    def _probs(self, logits_BV: torch.Tensor, sampling: BatchSampling,
               histories: Callable[[], list[list[int]]]) -> torch.Tensor:
        """Sampling distributions [B, V] after the vocabulary limit and the logits processors. `histories()` gives
        each row's generated ids so far (only built when a processor needs it)."""
        if self.vocab_limit is not None or self.logits_processors:
            logits_BV = logits_BV.float().clone()
            if self.vocab_limit is not None:
                logits_BV[:, self.vocab_limit:] = float("-inf")
            if self.logits_processors:
                for r, hist in enumerate(histories()):
                    for proc in self.logits_processors:
                        logits_BV[r] = proc(hist, logits_BV[r])
        return logits_to_probs(logits_BV, sampling)

    def _emit(self, batch: DecodeBatch, new_BN: torch.Tensor, count_B: torch.Tensor) -> None:
        rows = new_BN.tolist()
        counts = count_B.tolist()
        for seq, toks, n in zip(batch.seqs, rows, counts):
            if not seq.finished:
                batch.stats.generated_tokens += seq.append(toks[:n])

    def _mtp_catch_up(self, batch: DecodeBatch, hidden_BTH: torch.Tensor, next_BT: torch.Tensor) -> None:
        """Run the MTP layer over positions whose main hidden states are known, and draft from the last one."""
        T = next_BT.shape[1]
        logits = mtp_h = None
        for t0 in range(0, T, MTP_PREFILL_CHUNK):
            t1 = min(T, t0 + MTP_PREFILL_CHUNK)
            # left padding is the one the main model's prefill recorded in the cache
            logits, mtp_h = self.model.mtp_forward(hidden_BTH[:, t0:t1], next_BT[:, t0:t1], cache=batch.cache,
                                                   logits_to_keep=1)
        q_BV = self._probs(logits[:, -1], batch.sampling, lambda: [s.tokens for s in batch.seqs])
        batch.draft_B = sample_from_probs(q_BV, batch.sampling)
        batch.draft_q_BV = q_BV
        batch.mtp_hidden_B1H = mtp_h[:, -1:]

    def _speculative_step(self, batch: DecodeBatch) -> None:
        K = batch.draft_tokens
        cache = batch.cache
        B = len(batch.seqs)
        drafts = [batch.draft_B]
        qs = [batch.draft_q_BV]
        h_B1H = batch.mtp_hidden_B1H
        # Drafts 2..K: the MTP layer on its own previous hidden state and the previous draft.
        for _ in range(K - 1):
            logits, h_B1H = self.model.mtp_forward(h_B1H, drafts[-1][:, None], cache=cache, logits_to_keep=1)
            h_B1H = h_B1H[:, -1:]
            q_BV = self._probs(logits[:, -1], batch.sampling, lambda: [
                s.tokens + [int(d[r]) for d in drafts] for r, s in enumerate(batch.seqs)])
            drafts.append(sample_from_probs(q_BV, batch.sampling))
            qs.append(q_BV)
        draft_BK = torch.stack(drafts, dim=1)
        q_BKV = torch.stack(qs, dim=1)

        # Verify [last, d1..dK] in one main-model forward: K+1 distributions.
        inp_BK1 = torch.cat([batch.last_B[:, None], draft_BK], dim=1)
        out = self.model(inp_BK1, cache=cache, logits_to_keep=K + 1)
        V = out.logits.shape[-1]
        drafted = draft_BK.tolist()
        p_BK1V = self._probs(out.logits.reshape(B * (K + 1), V), _repeat_rows(batch.sampling, K + 1), lambda: [
            s.tokens + drafted[r][:j] for r, s in enumerate(batch.seqs) for j in range(K + 1)])
        p_BK1V = p_BK1V.view(B, K + 1, V)
        verdict = verify(draft_BK, q_BKV, p_BK1V, batch.sampling)
        batch.stats.main_forwards += 1

        # All rows share one cache length: the batch keeps the drafts every unfinished row accepted (a).
        live = [not s.finished for s in batch.seqs]
        acc = verdict.accepted_B.tolist()
        nxt = verdict.next_B.tolist()
        a = min((acc[r] for r in range(B) if live[r]), default=0)
        # Token a+1 of each row: the verdict's token where the row stopped accepting at a, else its accepted draft.
        committed = [drafted[r][:a] + [nxt[r] if acc[r] == a else drafted[r][a]] for r in range(B)]
        for r in range(B):
            if live[r]:  # the acceptance rate measures the drafter: per row, whatever the batch could keep
                batch.stats.draft_tokens += K
                batch.stats.accepted_tokens += acc[r]
        emitted_BN = torch.tensor(committed, dtype=torch.long, device=batch.last_B.device)  # [B, a+1]

        # Main layers keep [last, d1..da]; the MTP layer drops its K-1 draft positions (its entries from here on
        # are recomputed below from the main model's real hidden states).
        L = batch.positions
        cache.rollback(K - a)
        cache.rollback_mtp(cache.mtp_seq_len - L)
        batch.positions += a + 1
        batch.last_B = emitted_BN[:, -1]
        self._emit(batch, emitted_BN, torch.full((B,), a + 1, dtype=torch.long))
        # Re-run the MTP layer on the kept positions with the main model's hidden states, drafting the next d1.
        self._mtp_catch_up(batch, out.hidden_states[:, : a + 1], emitted_BN)


def _repeat_rows(s: BatchSampling, n: int) -> BatchSampling:
    """Sampling parameters for a [B*n] view of [B, n] positions (generators are not used by logits_to_probs)."""
    return BatchSampling(s.temperature_B.repeat_interleave(n), s.top_p_B.repeat_interleave(n),
                         s.top_k_B.repeat_interleave(n), [g for g in s.generators for _ in range(n)])


def _replace(p: SamplingParams, **changes) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(p, **changes)
