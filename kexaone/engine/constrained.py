"""Constrained decoding of tool calls: `tool_choice` "required" / a named function as a per-request logits processor.

`tool_call_processor(tokenizer, tools, tool_choice, ...)` returns a callable `(generated_ids, logits_V) -> logits_V`
for `SamplingParams(logits_processor=...)` (or `Engine(..., logits_processors=[...])`). It tracks the reply's
state in the automaton of tool_grammar.py from the ids generated so far (a function of the history, so it works
the same for batched rows, speculative drafts and re-scoring) and masks every token that the grammar refuses or
after which the reply could no longer be finished within the remaining token budget. So a reply that is not cut
by the budget is always one or more `<tool_call>` blocks of allowed functions whose arguments parse as JSON and
follow the declared schema as far as the grammar goes (the server still validates them with jsonschema).

Masks are computed over the whole vocabulary once per grammar state and cached with the compiled grammar, which
is shared by requests with the same tools and choice: inside strings and reasoning text only the tokens holding a
quote, backslash, control character or `<` are simulated (the others leave the state unchanged), elsewhere only
tokens whose first symbol the state accepts.

`tool_choice` "auto" with `parallel_tool_calls=False` uses `SingleCallProcessor`: after the first `</tool_call>`
the turn must end. "auto" otherwise and "none" are not constrained. The processor sees all tokens the row
generated, so it is meant for one assistant turn (not for rows continued with `Engine.append_tokens`).
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Sequence

import torch

from kexaone.engine.tool_grammar import ToolGrammar
from kexaone.tokenizer.specials import ENDOFTURN, THINK_CLOSE, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

MAX_PARALLEL_CALLS = 8
"""Most calls one reply may hold under tool_choice "required" with parallel calls allowed."""
GRAMMAR_CACHE_SIZE = 32
MAX_CACHED_STATES = 4096
"""States whose token sets one compiled grammar keeps (each holds the tokens that change the state: a few
thousand ids for a large vocabulary; tokens that leave it unchanged share one mask per vocabulary)."""


def resolve_tool_choice(tools: Sequence[dict] | None, tool_choice) -> tuple[str, list[str]]:
    """(mode, allowed function names) of an OpenAI `tool_choice`: mode is "none", "auto", "required" or "named".
    Raises ValueError naming the problem for a choice that names an undeclared function, a forcing choice
    without tools, or an unknown value."""
    names = [_fn(t).get("name") for t in tools or []]
    if tool_choice is None:
        return ("auto" if names else "none"), names
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or {{'type': 'function', 'function': "
                             f"{{'name': ...}}}}, got {tool_choice!r}")
        if tool_choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs at least one tool in tools")
        return tool_choice, names
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type", "function") != "function" or not isinstance(name, str):
            raise ValueError(f"a named tool_choice is {{'type': 'function', 'function': {{'name': ...}}}}, "
                             f"got {tool_choice!r}")
        if name not in names:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the declared tools "
                             f"{names}")
        return "named", [name]
    raise ValueError(f"tool_choice must be a string or an object, got {type(tool_choice).__name__}")


def _fn(tool: dict) -> dict:
    return tool.get("function", tool) if isinstance(tool, dict) else {}


class VocabIndex:
    """A tokenizer's vocabulary as grammar symbols: bytes 0-255, and 256 + id for special tokens (never spelled
    out: a special token is a symbol of its own, so `<tool_call>` written in bytes is not a call)."""

    def __init__(self, tokenizer):
        self.size = tokenizer.vocab_size
        specials = tokenizer.special_ids
        special_id_set = set(specials.values())
        self.special_sym = {name: 256 + i for name, i in specials.items()}
        self.syms: list[tuple[int, ...]] = []
        for i in range(self.size):
            if i in special_id_set:
                self.syms.append((256 + i,))
            else:
                self.syms.append(tuple(tokenizer.token_bytes(i)))
        self.by_first: dict[int, list[int]] = collections.defaultdict(list)
        for i, s in enumerate(self.syms):
            if s:
                self.by_first[s[0]].append(i)
        self._stable: dict[frozenset, tuple[torch.Tensor, list[tuple[int, int]]]] = {}

    def stable_split(self, unstable: frozenset) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(bool [size]: tokens made only of bytes outside `unstable`, [(token, index of its first unstable
        symbol)] for the others). Specials count as unstable."""
        got = self._stable.get(unstable)
        if got is None:
            mask = torch.zeros(self.size, dtype=torch.bool)
            rest = []
            for i, s in enumerate(self.syms):
                if not s:
                    continue
                at = next((n for n, c in enumerate(s) if c > 255 or c in unstable), None)
                if at is None:
                    mask[i] = True
                else:
                    rest.append((i, at))
            got = self._stable[unstable] = (mask, rest)
        return got


_INDEXES: "dict[int, tuple[object, VocabIndex]]" = {}
_GRAMMARS: "collections.OrderedDict[tuple, CompiledGrammar]" = collections.OrderedDict()
_LOCK = threading.Lock()


def vocab_index(tokenizer) -> VocabIndex:
    with _LOCK:
        got = _INDEXES.get(id(tokenizer))
        if got is not None and got[0] is tokenizer:
            return got[1]
    index = VocabIndex(tokenizer)
    with _LOCK:
        _INDEXES[id(tokenizer)] = (tokenizer, index)
    return index


class CompiledGrammar:
    """A ToolGrammar over one vocabulary, with the per-state token sets it has computed so far."""

    def __init__(self, grammar: ToolGrammar, index: VocabIndex):
        self.grammar, self.index = grammar, index
        self._moves: dict[tuple, tuple[torch.Tensor | None, dict[tuple, torch.Tensor]]] = {}
        self.lock = threading.Lock()

    def token_state(self, state: tuple, token: int) -> tuple | None:
        return self.grammar.feed_all(state, self.index.syms[token]) if 0 <= token < self.index.size else None

    def moves(self, state: tuple) -> tuple[torch.Tensor | None, dict[tuple, torch.Tensor]]:
        """(bool [V] of tokens that leave `state` unchanged or None, {state after the token: [tokens]}) over the
        tokens the grammar accepts from `state`."""
        got = self._moves.get(state)
        if got is not None:
            return got
        g, ix = self.grammar, self.index
        ends: dict[tuple, list[int]] = collections.defaultdict(list)
        cls = g.stable_class(state)
        same = None
        if cls is not None:
            same, rest = ix.stable_split(g.UNSTABLE[cls])
            for tok, at in rest:
                end = g.feed_all(state, ix.syms[tok][at:])
                if end is not None:
                    ends[end].append(tok)
        else:
            for first, toks in ix.by_first.items():
                after = g.feed(state, first)
                if after is None:
                    continue
                for tok in toks:
                    end = g.feed_all(after, ix.syms[tok][1:])
                    if end is not None:
                        ends[end].append(tok)
        got = (same, {end: torch.tensor(toks, dtype=torch.long) for end, toks in ends.items()})
        with self.lock:
            if len(self._moves) >= MAX_CACHED_STATES:  # a bound on memory: states are cheap to recompute
                self._moves.clear()
            self._moves[state] = got
        return got


def compiled_grammar(tokenizer, functions: dict[str, dict | None], max_calls: int, reasoning: bool
                     ) -> CompiledGrammar:
    """The grammar for these functions, cached (LRU) so that requests with the same tools share their masks."""
    index = vocab_index(tokenizer)
    key = (id(index), json.dumps(functions, sort_keys=True, default=str), max_calls, reasoning)
    with _LOCK:
        got = _GRAMMARS.get(key)
        if got is not None:
            _GRAMMARS.move_to_end(key)
            return got
    specials = {}
    for name in (THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, ENDOFTURN):
        if name not in index.special_sym:
            raise ValueError(f"constrained tool calls need the special token {name} in the tokenizer")
        specials[name] = index.special_sym[name]
    cg = CompiledGrammar(ToolGrammar(functions, specials, max_calls=max_calls, reasoning=reasoning), index)
    with _LOCK:
        _GRAMMARS[key] = cg
        while len(_GRAMMARS) > GRAMMAR_CACHE_SIZE:
            _GRAMMARS.popitem(last=False)
    return cg


class ToolCallProcessor:
    """Logits processor forcing a tool-call reply (see the module docstring). `max_new_tokens`: the request's
    token budget, counted as the engine counts it (the final `<|endofturn|>` included)."""

    def __init__(self, grammar: CompiledGrammar, max_new_tokens: int):
        self.cg = grammar
        self.budget = int(max_new_tokens)
        self._hist: list[int] = []
        self._states: list[tuple | None] = [grammar.grammar.initial()]

    def state(self, history: Sequence[int]) -> tuple | None:
        """The grammar state after `history` (None once it left the grammar, e.g. forced tokens)."""
        h = list(history)
        m = min(len(h), len(self._hist))
        if h[:m] != self._hist[:m]:
            m = next(i for i in range(m) if h[i] != self._hist[i])
        del self._hist[m:], self._states[m + 1:]
        st = self._states[-1]
        for t in h[m:]:
            st = None if st is None else self.cg.token_state(st, t)
            self._hist.append(t)
            self._states.append(st)
        return st

    def allowed(self, history: Sequence[int], vocab: int) -> torch.Tensor | None:
        """bool [vocab] of the tokens allowed after `history`, or None when the history left the grammar."""
        st = self.state(history)
        if st is None:
            return None
        g = self.cg.grammar
        left = self.budget - len(history) - 1  # tokens after the one being chosen
        same, ends = self.cg.moves(st)
        mask = torch.zeros(vocab, dtype=torch.bool)
        best, best_toks = None, []
        if same is not None:
            n = g.needed(st)
            if n <= left:
                mask[:same.shape[0]] |= same
            best, best_toks = n, None
        for end, toks in ends.items():
            n = g.needed(end)
            if n <= left:
                mask[toks] = True
            if best is None or n < best:
                best, best_toks = n, toks
        if not bool(mask.any()):  # the budget is too small to finish: get as close as possible
            if best_toks is None and same is not None:
                mask[:same.shape[0]] |= same
            elif best_toks is not None:
                mask[best_toks] = True
        return mask

    def __call__(self, generated: list[int], logits_V: torch.Tensor) -> torch.Tensor:
        mask = self.allowed(generated, logits_V.shape[-1])
        if mask is None or not bool(mask.any()):
            return logits_V
        return logits_V.masked_fill(~mask.to(logits_V.device), float("-inf"))


class SingleCallProcessor:
    """At most one tool call (`parallel_tool_calls: false` under tool_choice "auto"): after the first
    `</tool_call>` token only `<|endofturn|>` may follow."""

    def __init__(self, call_close_id: int, eot_id: int):
        self.close, self.eot = int(call_close_id), int(eot_id)

    def __call__(self, generated: list[int], logits_V: torch.Tensor) -> torch.Tensor:
        if self.close not in generated:
            return logits_V
        out = torch.full_like(logits_V, float("-inf"))
        out[self.eot] = 0.0
        return out


def tool_call_processor(tokenizer, tools: Sequence[dict] | None, tool_choice=None, parallel_tool_calls: bool = True,
                        reasoning: bool = False, max_new_tokens: int = 256):
    """The logits processor a chat request needs for its `tool_choice`, or None when decoding is free.
    `reasoning`: the generation prompt opened the think block (the reply may reason before its calls)."""
    mode, names = resolve_tool_choice(tools, tool_choice)
    specials = tokenizer.special_ids
    if mode in ("none",) or not names:
        return None
    if mode == "auto":
        if parallel_tool_calls:
            return None
        return SingleCallProcessor(specials[TOOL_CALL_CLOSE], specials[ENDOFTURN])
    schemas = {}
    for t in tools or []:
        fn = _fn(t)
        if fn.get("name") in names:
            schemas[fn["name"]] = fn.get("parameters")
    max_calls = MAX_PARALLEL_CALLS if mode == "required" and parallel_tool_calls else 1
    return ToolCallProcessor(compiled_grammar(tokenizer, schemas, max_calls, reasoning), max_new_tokens)
