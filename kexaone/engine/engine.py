"""The inference engine: prefill and decode with the hybrid KV cache, batched, with MTP self-speculative decoding.

`Engine(model, tokenizer)` offers three levels:
- `generate(prompt, ...)` / `generate_batch(prompts, ...)`: run requests to completion, optionally streaming text;
- `chat(messages, tools=None, enable_thinking=True, ...)`: render with the K-EXAONE chat format, generate, and parse
  reasoning, answer and tool calls;
- `start(...)` + `step(batch)`: one decode step at a time, which the server's scheduler interleaves across batches;
  `join(batch, prompts, params)` adds requests to a running batch by prefilling only their prompts, and
  `compact(batch)` lets finished rows leave (continuous batching; `merge` is the older scheme that re-prefills).

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

Draft vocabulary (`Engine(..., draft_vocab=N)`): each MTP draft projects onto the whole vocabulary, which at batch 1
costs reading the [V, H] output head once per draft, about as many bytes as the rest of a small model's step
(measured on the speedrun model: 3 drafts read ~54 MB per main forward vs ~24 MB for a plain step). With N set,
drafts score only token ids [0, N), a view of the head's first rows: the special tokens, the bytes and the earliest
merges, which byte-level BPE (and SuperBPE) numbers in order of frequency in the tokenizer's training text (the
frequency-ranked draft vocabulary of FR-Spec). Drafts outside it are never proposed; the output is unchanged: the
verification is exact for any draft distribution (greedy output identical, sampled output an exact sample).

Log-probs: every result carries, per token, its log-prob under the untruncated temperature-1 distribution
(`logprobs`, what `kexaone.model.scoring.token_logprobs` computes) and under the distribution it was sampled from
(`sampling_logprobs`, after temperature / top-k / top-p), taken from the same logits the sampler used. Those come
from the cached decode forward with the model's inference fast paths, which round differently from a full
training forward (NOTES.md gives the measured gap); `Engine(..., exact_logprobs=True)` recomputes them at the end
with the training forward, making `logprobs` bit-identical to `token_logprobs` on the same tokens.

Forced tokens: `append_tokens(batch, forced)` appends tokens the engine did not sample (tool results) to live or
finished rows and continues decoding from them without re-running the history (one forward over the new tokens).

The caller's model is never left in another mode: each engine call runs it in eval mode and restores every
module's `training` flag afterwards (train mode would count routed tokens for the MoE bias update).

The engine does not tokenise chat formats itself (kexaone.tokenizer.chat) or serve HTTP (server.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

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
# Positions whose top log-probs `score` ranks at once: bounds its fp32 [chunk, V] copy of the logits.
SCORE_CHUNK = 256
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
        """Each row's result with the log-probs of the decode forwards (`Engine.results` applies exact mode)."""
        return [s.result(self.stats) for s in self.seqs]


@dataclass
class TokenScores:
    """`Engine.score`: per position t of `ids`, log p(ids[t] | ids[:t]) (None at t = 0) and the most likely
    (token id, log-prob) pairs there (empty at t = 0)."""

    ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]]


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int)):
        return [x]
    return list(x)


@dataclass
class PreparedChat:
    """One chat request made ready to decode (Engine.prepare_chat)."""

    ids: list[int]
    """the rendered prompt's token ids"""
    opened: str
    """what the template put after the prompt to open the assistant turn (parse_reply reads it with the reply)"""
    tools: Sequence[dict] | None
    """the tools shown to the model (None under tool_choice "none")"""
    processor: Any
    """the logits processor of the tool_choice (kexaone.engine.constrained), or None when decoding is free"""


class Engine:
    """Generation with a `KExaoneForCausalLM` (and optionally a `KExaoneTokenizer`)."""

    def __init__(self, model, tokenizer=None, *, cache_dtype: torch.dtype | None = None,
                 logits_processors: Sequence[LogitsProcessor] = (), exact_logprobs: bool = False,
                 draft_vocab: int | None = None):
        """`logits_processors`: callables `(generated_ids, logits_V) -> logits_V` applied, in order, to every
        distribution before sampling (main model and drafts alike), e.g. to ban or force tokens.
        `exact_logprobs`: recompute each result's log-probs with the training forward (see the module).
        `draft_vocab`: MTP drafts choose among token ids [0, draft_vocab) only (None: the whole vocabulary); see
        the module docstring."""
        self.model = model
        # The modules whose `training` flags each call saves and restores (walking model.modules() per call costs
        # ~0.3 ms, 15% of a tiny model's decode step). A model restructured later needs a new Engine.
        self._modules = list(model.modules())
        self.exact_logprobs = bool(exact_logprobs)
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
        if draft_vocab is not None and not (isinstance(draft_vocab, int) and not isinstance(draft_vocab, bool)
                                            and 1 <= draft_vocab <= self.config.vocab_size):
            raise ValueError(f"draft_vocab must be an integer in [1, {self.config.vocab_size}] or None, "
                             f"got {draft_vocab!r}")
        self.draft_vocab = None if draft_vocab == self.config.vocab_size else draft_vocab

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, tokenizer: bool = True,
                        quantize: str | None = None, **engine_options: Any) -> "Engine":
        """Load model (and tokenizer, when the directory has one) from a Hugging Face layout directory.
        `quantize`: None, or "int8" for weight-only int8 Linear layers (kexaone.engine.quantize, needs torchao).
        `engine_options`: Engine keyword arguments (draft_vocab, cache_dtype, ...)."""
        from kexaone.model.transformer import KExaoneForCausalLM

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        model = KExaoneForCausalLM.from_pretrained(path, dtype=dtype, device=device)
        # The engine owns this model and never trains it: without parameter gradients the training-conditions
        # forward of `score` and exact log-probs records no autograd graph.
        model.requires_grad_(False)
        # ...and keeps it in eval mode: a model left in training mode is switched to eval and back around every
        # step (`_eval_mode`), a walk over all modules that cost ~2.4 ms per decode step of the `small` preset.
        model.eval()
        if quantize is not None:
            from kexaone.engine.quantize import quantize_weights

            quantize_weights(model, quantize)
        tok = None
        if tokenizer and (path / "tokenizer.json").is_file():
            from kexaone.tokenizer import KExaoneTokenizer

            tok = KExaoneTokenizer.from_dir(path)
        return cls(model, tok, **engine_options)

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
        # Eval mode once for the whole generation: a model in training mode (an RL policy between updates) would
        # otherwise be switched to eval and back around every step, a walk over all its modules (~2.4 ms a step
        # for the `small` preset); inside, each step finds it in eval mode already and switches nothing.
        with self._eval_mode():
            batch = self.start(prompts, plist, speculative=speculative, draft_tokens=draft_tokens, on_text=callbacks)
            while not batch.done:
                self.step(batch)
        return self.results(batch)

    def chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None, enable_thinking: bool = True,
             on_text: Callable[[str], None] | None = None, tool_choice: str | dict | None = None,
             parallel_tool_calls: bool = True, **gen) -> "ChatResult":
        """Render `messages` (OpenAI-style dicts) in the K-EXAONE chat format, generate the assistant turn, and
        parse it into reasoning, content and tool calls.

        `tool_choice` is OpenAI's: "none" (tools hidden from the model), "auto" (default with tools: the model
        decides), "required" or `{"type": "function", "function": {"name": N}}` (decoding constrained to calls of
        the allowed functions with schema-guided JSON arguments, see kexaone.engine.constrained);
        `parallel_tool_calls=False` allows at most one call. Calls are checked against the declared schemas:
        failures are in `result.validation_errors`, never raised."""
        from kexaone.engine.chat_io import ChatResult, parse_reply

        p = self.prepare_chat(messages, tools, enable_thinking, tool_choice, parallel_tool_calls,
                              gen.get("max_new_tokens", 256))
        if p.processor is not None:
            gen["logits_processor"] = p.processor
        res = self.generate(p.ids, on_text=on_text, **gen)
        return ChatResult.from_generation(res, parse_reply(p.opened + (res.text or "")), p.opened, tools=p.tools)

    def prepare_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None, enable_thinking: bool = True,
                     tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
                     max_new_tokens: int = 256) -> PreparedChat:
        """The prompt ids, opened assistant text, shown tools and tool_choice logits processor of one chat request,
        as `chat` decodes it; for callers that decode many requests in one `generate_batch` (give row i
        `make_params(..., logits_processor=prepared[i].processor)`), e.g. kexaone.eval.backends.LocalBackend.
        Raises ValueError for malformed tools or a tool_choice they do not allow (kexaone.engine.constrained)."""
        from kexaone.engine.chat_io import chat_prompt, tool_schemas
        from kexaone.engine.constrained import resolve_tool_choice, tool_call_processor

        if self.tokenizer is None:
            raise ValueError("Engine.chat needs a tokenizer")
        tool_schemas(tools)  # a clear error for a malformed declaration
        mode, _ = resolve_tool_choice(tools, tool_choice)
        shown = tools if mode != "none" else None
        prompt_text, opened = chat_prompt(messages, tools=shown, enable_thinking=enable_thinking)
        ids = self.tokenizer.encode(prompt_text)
        proc = tool_call_processor(self.tokenizer, shown, tool_choice, parallel_tool_calls,
                                   reasoning=opened.rstrip().endswith("<think>"),
                                   max_new_tokens=min(max_new_tokens, self.config.max_position_embeddings - len(ids)))
        return PreparedChat(ids=ids, opened=opened, tools=shown, processor=proc)

    # ------------------------------------------------------------------ step-wise API
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Run the model in eval mode and give every module back the `training` flag it had."""
        modules = self._modules
        flags = [m.training for m in modules]
        if any(flags):
            self.model.eval()
        try:
            yield
        finally:
            if any(flags):
                for m, f in zip(modules, flags):
                    m.training = f

    def _inference(fn):  # noqa: N805 (a decorator used inside the class body)
        def wrapped(self, *args, **kwargs):
            with self._eval_mode(), torch.inference_mode():
                return fn(self, *args, **kwargs)

        wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
        return wrapped

    @_inference
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

    @_inference
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

    @_inference
    def join(self, batch: DecodeBatch, prompts: Sequence[str | Sequence[int]], params: Sequence[SamplingParams],
             on_text: Sequence[Callable[[str], None] | None] | None = None) -> DecodeBatch:
        """A batch holding the unfinished rows of `batch` and the new requests (continuous batching, vLLM style).

        Only the new prompts run through the model: they are prefilled on their own and their cache rows are
        stacked onto the running rows' (`KVCache.concat`: the shorter side is left-padded, positions move, nothing
        is recomputed); finished rows leave. The running rows' tokens, sampling state, drafts and streams carry
        on, so their output is the one they would have produced alone. `batch` itself is left unchanged (on an
        error the caller still has it)."""
        from kexaone.model.cache import KVCache

        new = self.start(prompts, params, speculative=batch.speculative, draft_tokens=batch.draft_tokens,
                         on_text=on_text)
        keep = [r for r, s in enumerate(batch.seqs) if not s.finished]
        if not keep:
            return new
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        cache = KVCache.concat([batch.cache.select_rows(keep), new.cache])
        st = batch.stats
        st.prompt_tokens += new.stats.prompt_tokens
        st.rows += new.stats.rows
        st.prefill_seconds += new.stats.prefill_seconds
        out = DecodeBatch(seqs=[batch.seqs[r] for r in keep] + new.seqs,
                          sampling=BatchSampling.cat([batch.sampling.select(idx), new.sampling]), cache=cache,
                          last_B=torch.cat([batch.last_B[idx], new.last_B]), speculative=batch.speculative,
                          draft_tokens=batch.draft_tokens, stats=st, positions=cache.seq_len)
        if batch.speculative == "mtp":
            if new.draft_B is None:  # every newcomer finished at its first token: give them placeholder drafts
                new.draft_B, new.draft_q_BV = torch.zeros_like(new.last_B), batch.draft_q_BV[:1].expand(
                    len(new.seqs), -1).clone()
                new.mtp_hidden_B1H = batch.mtp_hidden_B1H[:1].expand(len(new.seqs), -1, -1).clone()
            out.draft_B = torch.cat([batch.draft_B[idx], new.draft_B])
            out.draft_q_BV = torch.cat([batch.draft_q_BV[idx], new.draft_q_BV])
            out.mtp_hidden_B1H = torch.cat([batch.mtp_hidden_B1H[idx], new.mtp_hidden_B1H])
        return out

    def compact(self, batch: DecodeBatch) -> list[int]:
        """Drop the finished rows of `batch` in place (their cache rows too, so no step computes them again) and
        return the indices of the rows kept, in order. A batch with no finished row, or only finished rows, is
        left as it is."""
        keep = [r for r, s in enumerate(batch.seqs) if not s.finished]
        if len(keep) == len(batch.seqs) or not keep:
            return list(range(len(batch.seqs)))
        with torch.inference_mode():
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache = batch.cache.select_rows(keep)
            fields = dict(seqs=[batch.seqs[r] for r in keep], sampling=batch.sampling.select(idx), cache=cache,
                          last_B=batch.last_B[idx], positions=cache.seq_len)
            if batch.draft_B is not None:
                fields.update(draft_B=batch.draft_B[idx], draft_q_BV=batch.draft_q_BV[idx],
                              mtp_hidden_B1H=batch.mtp_hidden_B1H[idx])
        for k, v in fields.items():
            setattr(batch, k, v)
        return keep

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
                 sampling: BatchSampling, speculative: str | None, draft_tokens: int,
                 forced: dict[int, tuple[list[int], SamplingParams]] | None = None) -> DecodeBatch:
        """Run `prefixes` (left-padded) into a fresh cache. Rows whose `lasts` entry is None sample their first
        token from the prefill's logits; the others already hold their next token (a merged running row).
        `forced[r] = (ids, params)`: row r's prefix ends with forced tokens `ids`, scored and appended to it (a new
        turn with `params`) before it samples."""
        forced = forced or {}
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
        keep = 1 + max((len(ids) for ids, _ in forced.values()), default=0)
        out = self.model(input_BT, cache=cache, attention_mask=mask_BT if padded else None, logits_to_keep=keep)
        for r, (ids, p) in forced.items():
            # logits at positions -(n+1)..-2 predict the n forced tokens (left padding aligns every row right)
            n = len(ids)
            lp = torch.log_softmax(out.logits[r, keep - n - 1:keep - 1].float(), dim=-1)
            seqs[r].force(ids, lp.gather(-1, torch.tensor(ids, device=lp.device)[:, None]).squeeze(-1).tolist(), p)
        need = [r for r, t in enumerate(lasts) if t is None]
        last_B = torch.tensor([0 if t is None else t for t in lasts], dtype=torch.long, device=self.device)
        count_B = torch.zeros(B, dtype=torch.long)
        lp_B = torch.zeros(B, dtype=torch.float32, device=self.device)
        slp_B = torch.zeros_like(lp_B)
        if need:
            rows = torch.tensor(need, dtype=torch.long, device=self.device)
            sub = sampling.select(rows) if len(need) < B else sampling
            tok_R, lp_R, slp_R = self._sample(out.logits[rows, -1], sub, lambda: [seqs[r].tokens for r in need])
            last_B[rows], lp_B[rows], slp_B[rows] = tok_R, lp_R, slp_R
            count_B[need] = 1
        batch = DecodeBatch(seqs=seqs, sampling=sampling, cache=cache, last_B=last_B, speculative=speculative,
                            draft_tokens=draft_tokens, stats=stats, positions=longest)
        self._emit(batch, last_B[:, None], count_B, lp_B[:, None], slp_B[:, None])
        if speculative == "mtp" and not batch.done:
            # Fill the MTP layer's cache over the prefix: position t reads (h[t], token t+1); the last position
            # reads each row's next token and drafts the one after it.
            next_BT = torch.cat([input_BT[:, 1:], last_B[:, None]], dim=1)
            self._mtp_catch_up(batch, out.hidden_states, next_BT)
        stats.prefill_seconds = time.perf_counter() - t0
        return batch

    @_inference
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
            tok_B, lp_B, slp_B = self._sample(out.logits[:, -1], batch.sampling,
                                              lambda: [s.tokens for s in batch.seqs])
            batch.last_B = tok_B
            batch.stats.main_forwards += 1
            self._emit(batch, tok_B[:, None], torch.ones_like(tok_B), lp_B[:, None], slp_B[:, None])
        batch.stats.decode_seconds += time.perf_counter() - t0

    @_inference
    def append_tokens(self, batch: DecodeBatch, forced: Sequence[Sequence[int]],
                      params: SamplingParams | Sequence[SamplingParams | None] | None = None) -> DecodeBatch:
        """Append `forced[r]` (token ids the engine does not sample, e.g. a tool result and the next generation
        prompt) to row r, live or finished, and sample each such row's next token after them: the row is live
        again for a new turn with `params` (one for all rows, one per row, or None = keep the row's parameters),
        whose `max_new_tokens` counts from here. Rows given no tokens carry on unchanged.

        When every row gets the same number of tokens (any single-row batch), they run through the model in one
        forward on top of the cache: the history is not recomputed. Otherwise the rows are re-prefilled together
        (all rows of a cache share one length), as `merge` does. Returns the batch to continue with (the same
        object on the first path). The forced tokens' `logprobs` are their model log-probs; they get
        `generated_mask` 0 and NaN `sampling_logprobs`."""
        B = len(batch.seqs)
        if isinstance(forced, (str, bytes)) or len(forced) != B:
            raise ValueError(f"forced must hold one list of token ids per row ({B} rows), got {forced!r:.80}")
        try:
            lists = [[int(t) for t in f] for f in forced]
        except TypeError:
            raise ValueError(f"forced must hold one list of token ids per row ({B} rows), got {forced!r:.80}") from None
        V = self.config.vocab_size
        for r, ids in enumerate(lists):
            bad = [t for t in ids if not 0 <= t < V]
            if bad:
                raise ValueError(f"forced tokens of row {r} must be in [0, {V}), got {bad[:5]}")
        plist = [params] * B if params is None or isinstance(params, SamplingParams) else list(params)
        if len(plist) != B:
            raise ValueError(f"got {len(plist)} SamplingParams for {B} rows")
        rows = [r for r in range(B) if lists[r]]
        if not rows:
            return batch
        K = batch.draft_tokens if batch.speculative else 0
        room = self.config.max_position_embeddings - batch.positions - max(len(x) for x in lists) - 1 - K
        if room < 0:
            raise ValueError(f"forced tokens do not fit: the batch holds {batch.positions} positions and the context "
                             f"is {self.config.max_position_embeddings}")
        new_params = {}
        for r in rows:
            p = plist[r] or batch.seqs[r].params
            new_params[r] = _replace(p, max_new_tokens=min(p.max_new_tokens, room)) if p.max_new_tokens > room else p
        if len({len(x) for x in lists}) != 1 or any(not s.tokens for s in batch.seqs):
            # (a row that never sampled has no pending token in last_B to run first)
            return self._append_by_prefill(batch, lists, new_params)

        N = len(lists[0])
        forced_BN = torch.tensor(lists, dtype=torch.long, device=self.device)
        # [last, f1..fN]: logits at `last` .. f_{N-1} score the forced tokens, those at f_N give the next token
        inp_BN1 = torch.cat([batch.last_B[:, None], forced_BN], dim=1)
        t0 = time.perf_counter()
        out = self.model(inp_BN1, cache=batch.cache, logits_to_keep=N + 1)
        batch.positions += N + 1
        batch.stats.main_forwards += 1
        lp_BN = torch.log_softmax(out.logits[:, :N].float(), dim=-1).gather(-1, forced_BN[..., None]).squeeze(-1)
        for r in rows:
            batch.seqs[r].force(lists[r], lp_BN[r].tolist(), new_params[r])
        batch.sampling = self._resampling(batch.sampling, [s.params for s in batch.seqs])
        tok_B, lp_B, slp_B = self._sample(out.logits[:, -1], batch.sampling, lambda: [s.tokens for s in batch.seqs])
        batch.last_B = tok_B
        self._emit(batch, tok_B[:, None], torch.ones_like(tok_B), lp_B[:, None], slp_B[:, None])
        if batch.speculative == "mtp" and not batch.done:
            self._mtp_catch_up(batch, out.hidden_states, torch.cat([forced_BN, tok_B[:, None]], dim=1))
        batch.stats.decode_seconds += time.perf_counter() - t0
        return batch

    def _resampling(self, old: BatchSampling, params: list[SamplingParams]) -> BatchSampling:
        """Sampling tensors for `params`, keeping each row's generator (its random stream carries on)."""
        fresh = BatchSampling.from_params(params, device=self.device)
        fresh.generators = list(old.generators)
        return fresh

    def _append_by_prefill(self, batch: DecodeBatch, lists: list[list[int]],
                           new_params: dict[int, SamplingParams]) -> DecodeBatch:
        """append_tokens for rows of different lengths: one prefill over each row's whole history."""
        seqs = batch.seqs
        prefixes, lasts = [], []
        for r, s in enumerate(seqs):
            if lists[r]:
                prefixes.append(s.prompt_ids + s.tokens + lists[r])
                lasts.append(None)
            else:  # unchanged row: its newest token is still pending, as in merge
                prefixes.append(s.prompt_ids + s.tokens[:-1] if s.tokens else list(s.prompt_ids))
                lasts.append(s.tokens[-1] if s.tokens else None)
        sampling = self._resampling(batch.sampling, [new_params.get(r, s.params) for r, s in enumerate(seqs)])
        forced = {r: (lists[r], new_params[r]) for r in new_params}
        return self._prefill(seqs, prefixes, lasts, sampling, batch.speculative, batch.draft_tokens, forced=forced)

    def results(self, batch: DecodeBatch) -> list[GenerationResult]:
        """The rows' results; with `exact_logprobs`, their log-probs recomputed by the training forward."""
        res = batch.results()
        if self.exact_logprobs:
            for out, seq in zip(res, batch.seqs):
                out.logprobs, out.sampling_logprobs = self._exact_logprobs(seq)
        return res

    def _training_forward(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(target-aligned log-probs [T] fp32, logits [T, V]) of one uncached forward over `ids`, run as the
        training forward runs: autograd on, so none of the model's no-grad inference paths, and eval mode, so no
        MoE token counting. The log-probs equal `token_logprobs(model, [ids])` bit for bit."""
        from kexaone.model.scoring import logprobs_from_logits

        with self._eval_mode(), torch.inference_mode(False), torch.enable_grad():
            ids_1T = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            logits_1TV = self.model(ids_1T, compute_mtp=False).logits
            lp_T = logprobs_from_logits(logits_1TV, ids_1T)[0].detach()
        return lp_T, logits_1TV[0].detach()

    def score(self, ids: Sequence[int], top_logprobs: int = 0) -> "TokenScores":
        """Log-prob of each token of `ids` given the ones before it (None for the first), by the scoring primitive
        on the training forward (`token_logprobs` bit for bit), and the `top_logprobs` most likely token ids at
        each position (ids the tokenizer cannot decode are left out)."""
        ids = self.encode_prompt(ids)
        if not isinstance(top_logprobs, int) or top_logprobs < 0:
            raise ValueError(f"top_logprobs must be an integer >= 0, got {top_logprobs!r}")
        lp_T, logits_TV = self._training_forward(ids)
        logprobs: list[float | None] = [None] + lp_T[1:].tolist()
        top: list[list[tuple[int, float]]] = [[]]
        if top_logprobs and len(ids) > 1:
            with torch.inference_mode():
                for t0 in range(0, len(ids) - 1, SCORE_CHUNK):
                    x = torch.log_softmax(logits_TV[t0:min(len(ids) - 1, t0 + SCORE_CHUNK)].float(), dim=-1)
                    if self.vocab_limit is not None:
                        x[:, self.vocab_limit:] = float("-inf")
                    vals, idx = x.topk(min(top_logprobs, x.shape[-1]), dim=-1)
                    top += [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
            # a position's own token, when among the top, carries the primitive's number (greedy checks compare)
            for t in range(1, len(ids)):
                top[t] = [(i, logprobs[t] if i == ids[t] else v) for i, v in top[t]]
        else:
            top += [[] for _ in ids[1:]]
        return TokenScores(ids=ids, logprobs=logprobs, top=top)

    def _exact_logprobs(self, seq: SequenceState) -> tuple[list[float], list[float]]:
        """Log-probs of seq.tokens from the training forward over prompt + tokens (see `_training_forward`)."""
        P, n = len(seq.prompt_ids), len(seq.tokens)
        if n == 0:
            return [], []
        lp_T, logits_TV = self._training_forward(seq.prompt_ids + seq.tokens)
        lp, logits_nV = lp_T[P:], logits_TV[P - 1:-1]
        # the sampling distributions of the same logits, with each turn's parameters
        bounds = [t for t, _ in seq.turns] + [n]
        slp = torch.full((n,), math.nan)
        for (t0, p), t1 in zip(seq.turns, bounds[1:]):
            if t1 <= t0:
                continue
            samp = BatchSampling.from_params([p] * (t1 - t0), device=self.device)
            probs = self._probs(logits_nV[t0:t1], samp, lambda: [seq.tokens[:j] for j in range(t0, t1)])
            tok = torch.tensor(seq.tokens[t0:t1], dtype=torch.long, device=self.device)
            slp[t0:t1] = probs.gather(-1, tok[:, None]).squeeze(-1).log().cpu()
        slp[torch.tensor(seq.generated_mask) == 0] = math.nan
        return lp.tolist(), slp.tolist()

    # ------------------------------------------------------------------ internals
    def _sample(self, logits_BV: torch.Tensor, sampling: BatchSampling, histories: Callable[[], list[list[int]]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample one token per row -> (tokens [B], log-probs [B] under the untruncated temperature-1
        distribution, log-probs [B] under the distribution sampled from)."""
        probs_BV = self._probs(logits_BV, sampling, histories)
        tok_B = sample_from_probs(probs_BV, sampling)
        lp_B = torch.log_softmax(logits_BV.float(), dim=-1).gather(-1, tok_B[:, None]).squeeze(-1)
        slp_B = probs_BV.gather(-1, tok_B[:, None]).squeeze(-1).log()
        return tok_B, lp_B, slp_B

    def _probs(self, logits_BV: torch.Tensor, sampling: BatchSampling,
               histories: Callable[[], list[list[int]]]) -> torch.Tensor:
        """Sampling distributions [B, V] after the vocabulary limit and the logits processors. `histories()` gives
        each row's generated ids so far (only built when a processor needs it)."""
        if self.vocab_limit is not None or self.logits_processors or sampling.processors is not None:
            logits_BV = logits_BV.float().clone()
            if self.vocab_limit is not None:
                logits_BV[:, self.vocab_limit:] = float("-inf")
            if self.logits_processors or sampling.processors is not None:
                self._apply_processors(logits_BV, sampling, histories())
        return logits_to_probs(logits_BV, sampling)

    def _apply_processors(self, logits_BV: torch.Tensor, sampling: BatchSampling, hists: list[list[int]]) -> None:
        """The engine's processors, then each row's own (SamplingParams.logits_processor), in place."""
        own = sampling.row_processors()
        for r, hist in enumerate(hists):
            for proc in self.logits_processors:
                logits_BV[r] = proc(hist, logits_BV[r])
            if own[r] is not None:
                logits_BV[r] = own[r](hist, logits_BV[r])

    def _emit(self, batch: DecodeBatch, new_BN: torch.Tensor, count_B: torch.Tensor, lp_BN: torch.Tensor,
              slp_BN: torch.Tensor) -> None:
        rows, counts, lps, slps = new_BN.tolist(), count_B.tolist(), lp_BN.tolist(), slp_BN.tolist()
        for seq, toks, n, lp, slp in zip(batch.seqs, rows, counts, lps, slps):
            if not seq.finished:
                batch.stats.generated_tokens += seq.append(toks[:n], lp[:n], slp[:n])

    def _full_vocab(self, draft_logits_BN: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary [B, N] -> [B, V], -inf beyond it (probability 0 there)."""
        missing = self.config.vocab_size - draft_logits_BN.shape[-1]
        return F.pad(draft_logits_BN, (0, missing), value=float("-inf")) if missing else draft_logits_BN

    def _mtp_catch_up(self, batch: DecodeBatch, hidden_BTH: torch.Tensor, next_BT: torch.Tensor) -> None:
        """Run the MTP layer over positions whose main hidden states are known, and draft from the last one."""
        T = next_BT.shape[1]
        logits = mtp_h = None
        for t0 in range(0, T, MTP_PREFILL_CHUNK):
            t1 = min(T, t0 + MTP_PREFILL_CHUNK)
            # left padding is the one the main model's prefill recorded in the cache
            logits, mtp_h = self.model.mtp_forward(hidden_BTH[:, t0:t1], next_BT[:, t0:t1], cache=batch.cache,
                                                   logits_to_keep=1, vocab_rows=self.draft_vocab)
        q_BV = self._probs(self._full_vocab(logits[:, -1]), batch.sampling, lambda: [s.tokens for s in batch.seqs])
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
            logits, h_B1H = self.model.mtp_forward(h_B1H, drafts[-1][:, None], cache=cache, logits_to_keep=1,
                                                   vocab_rows=self.draft_vocab)
            h_B1H = h_B1H[:, -1:]
            q_BV = self._probs(self._full_vocab(logits[:, -1]), batch.sampling, lambda: [
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
        # Each kept token is an exact sample of p at its verify position: its log-probs are read there.
        idx_BN1 = emitted_BN[..., None]
        lp_BN = torch.log_softmax(out.logits[:, :a + 1].float(), dim=-1).gather(-1, idx_BN1).squeeze(-1)
        slp_BN = p_BK1V[:, :a + 1].gather(-1, idx_BN1).squeeze(-1).log()
        self._emit(batch, emitted_BN, torch.full((B,), a + 1, dtype=torch.long), lp_BN, slp_BN)
        # Re-run the MTP layer on the kept positions with the main model's hidden states, drafting the next d1.
        self._mtp_catch_up(batch, out.hidden_states[:, : a + 1], emitted_BN)


def _repeat_rows(s: BatchSampling, n: int) -> BatchSampling:
    """Sampling parameters for a [B*n] view of [B, n] positions (generators are not used by logits_to_probs)."""
    return BatchSampling(s.temperature_B.repeat_interleave(n), s.top_p_B.repeat_interleave(n),
                         s.top_k_B.repeat_interleave(n), [g for g in s.generators for _ in range(n)],
                         None if s.processors is None else [p for p in s.processors for _ in range(n)])


def _replace(p: SamplingParams, **changes) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(p, **changes)
