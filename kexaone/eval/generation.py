"""Sample chat answers from a model in reasoning and non-reasoning mode, and split them into reasoning and answer.

The prompt is rendered with the K-EXAONE chat template (kexaone.tokenizer.chat.render, generation prompt added,
thinking on or off), sampled with the engine at the recommended settings (temperature 1.0, top-p 0.95, seeded),
and the text is parsed back with kexaone.tokenizer.chat.parse_assistant. This shows what the model does; it does not
grade it (kexaone.eval.tasks does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    mode: str
    """"reasoning" or "non-reasoning"."""
    prompt: str
    """The user message."""
    text: str
    """Everything the model generated (special tokens kept)."""
    reasoning: str | None
    content: str
    tokens: int
    seconds: float
    parse_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_answers(engine, tokenizer, questions: Sequence[str], max_new_tokens: int, seed: int = 0,
                   temperature: float = 1.0, top_p: float = 0.95,
                   modes: Sequence[str] = ("reasoning", "non-reasoning")) -> list[Sample]:
    """One sampled answer per question and mode (seed + question index, so runs repeat exactly)."""
    from kexaone.tokenizer.chat import parse_assistant, render

    bad = [m for m in modes if m not in ("reasoning", "non-reasoning")]
    if bad:
        raise ValueError(f"modes must be 'reasoning' or 'non-reasoning', got {bad}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    samples = []
    for mode in modes:
        thinking = mode == "reasoning"
        for i, q in enumerate(questions):
            rendered = render([{"role": "user", "content": q}], enable_thinking=thinking, add_generation_prompt=True)
            ids = tokenizer.encode(rendered)
            t0 = time.perf_counter()
            res = engine.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed + i, stop=[tokenizer.eos_id])
            dt = time.perf_counter() - t0
            tokens = list(res.tokens)
            text = tokenizer.decode(tokens, skip_special_tokens=False)
            # The generation prompt already opened the think block in reasoning mode (and closed an empty one
            # otherwise); parse what the assistant turn as a whole says.
            opened = rendered[rendered.rfind("<|assistant|>") + len("<|assistant|>"):].lstrip("\n")
            parsed = parse_assistant(opened + text)
            samples.append(Sample(mode=mode, prompt=q, text=text, reasoning=parsed.reasoning,
                                  content=parsed.content, tokens=len(tokens), seconds=dt,
                                  parse_errors=list(parsed.errors)))
    return samples
