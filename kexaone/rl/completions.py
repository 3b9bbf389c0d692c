"""Reading RL data: the reply text of a completion, the part of it that is scored, and the prompt's user text.

Completions come as TRL gives them to reward functions: a string, or a conversation (a list of {"role", "content"}
messages) whose last assistant message is the reply. In reasoning mode only what follows the last `</think>` is
scored. What this module does not do: render prompts or tokenize.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kexaone.tokenizer.specials import THINK_CLOSE, THINK_OPEN

__all__ = ["completion_text", "final_text", "prompt_text", "column"]


def completion_text(completion: Any) -> str:
    """The reply text of a completion: a string as is; for a conversation (list of {"role", "content"}) the content
    of its last assistant message; for one message dict its content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                return str(message.get("content") or "")
        return ""
    raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """The user's text of a prompt: a string as is; for a conversation the last user message; "" otherwise."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m.get("content") or "" for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return ""


def final_text(completion: Any) -> str:
    """The part of a reply that is scored: after the last `</think>`; "" when reasoning was opened and never closed
    (the reply ran out before answering); the whole reply in non-reasoning mode."""
    text = completion_text(completion)
    if THINK_CLOSE in text:
        return text.rpartition(THINK_CLOSE)[2].strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


def column(columns: Mapping[str, Any], names: Sequence[str], n: int) -> list | None:
    """The first of `names` present in `columns` (as a list of n values), or None when none is there."""
    for name in names:
        values = columns.get(name)
        if values is not None:
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
            return list(values)
    return None
