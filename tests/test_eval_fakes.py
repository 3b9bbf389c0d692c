"""Small, exact stand-ins for a tokenizer, a causal LM and an engine, used by the eval and report tests.

They follow the interfaces kexaone.eval relies on (tokenizer.encode/encode_batch/decode/pad_id/eot_id/eos_id,
model(input_ids=...).logits, engine.generate(...).tokens/.stats) so those tests check the evaluation maths
without training anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

OFFSET = 3  # ids 0..2 are pad / endoftext / endofturn


class ByteTokenizer:
    """One token per UTF-8 byte (id = byte + 3): bytes per token is exactly 1."""

    pad_id, eot_id, eos_id = 0, 1, 2
    vocab_size = 256 + OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode("utf-8")]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i - OFFSET for i in ids if i >= OFFSET).decode("utf-8", errors="replace")


class UniformLM(torch.nn.Module):
    """Every next token equally likely: loss = ln(vocab) exactly."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, **kw):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class SuccessorLM(torch.nn.Module):
    """Predicts, with near certainty, that the byte after byte b is b+1 (a position-wise, hence causal, model)."""

    def __init__(self, vocab: int, confidence: float = 20.0):
        super().__init__()
        self.vocab, self.confidence = vocab, confidence

    def forward(self, input_ids, **kw):
        nxt = (input_ids + 1).clamp(max=self.vocab - 1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float() * self.confidence)


class RandomPositionwiseLM(torch.nn.Module):
    """A random embedding -> logits table: logits at t depend on token t only, so it is causal and padding-proof."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, **kw):
        return SimpleNamespace(logits=self.table[input_ids])


@dataclass
class Item:
    prompt: str
    answer: str
    choices: list[str] | None = None


@dataclass
class FakeResult:
    tokens: list[int]
    stats: dict = field(default_factory=dict)


class FakeEngine:
    """Greedy 'decoding' of the successor rule; speculative mode reports fixed statistics (and can be made to
    diverge, to test that the speed measurement notices)."""

    def __init__(self, diverge: bool = False):
        self.diverge = diverge
        self.calls: list[dict] = []

    def generate(self, prompt_ids, max_new_tokens=16, temperature=1.0, top_p=0.95, seed=None, stop=None,
                 speculative=None, draft_tokens=2, **kw):
        self.calls.append(dict(speculative=speculative, temperature=temperature, seed=seed, stop=stop))
        out, t = [], prompt_ids[-1]
        for _ in range(max_new_tokens):
            t = t + 1 if t + 1 < 259 else OFFSET
            out.append(t)
        if speculative == "mtp":
            if self.diverge:
                out[-1] = OFFSET
            return FakeResult(out, {"acceptance_rate": 0.75, "tokens_per_forward": 2.5})
        return FakeResult(out, {"tokens_per_forward": 1.0})
