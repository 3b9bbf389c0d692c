"""Shared by the tool-call tests of the engine and the server: a tiny byte-level engine steered towards parallel
calls, and the one-argument tool it calls. Not a test module itself."""

from __future__ import annotations

from kexaone.engine import Engine
from test_engine_models import byte_tokenizer, tiny_model

PICK = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"]}}}


class LogitBias:
    """Adds `amount` to one token's logit."""

    def __init__(self, token: int, amount: float = 30.0):
        self.token, self.amount = token, amount

    def __call__(self, generated, logits_V):
        out = logits_V.clone()
        out[self.token] += self.amount
        return out


def parallel_calling_engine() -> Engine:
    """A tiny random model on the byte tokenizer, pushed towards '\\n', which after a call starts another one: with
    tool_choice="required" it makes several calls unless parallel_tool_calls is off. Build it under one_thread()."""
    tok = byte_tokenizer()
    return Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[LogitBias(tok.encode("\n")[0])])
