"""The special tokens of the K-EXAONE tokenizer and their fixed ids.

Specials occupy the first ids of every kexaone vocabulary, in the order below, so `<|pad|>` is always id 0 and a
model's embedding rows for them do not move when the learned part of the vocabulary is retrained. This module only
names them; the chat format that uses them lives in `chat.py`.
"""

from __future__ import annotations

PAD = "<|pad|>"
ENDOFTEXT = "<|endoftext|>"  # document separator in pre-training
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
TOOL_DECLARE = "<|tool_declare|>"
ENDOFTURN = "<|endofturn|>"  # ends a chat turn, and generation
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESULT_OPEN = "<tool_result>"
TOOL_RESULT_CLOSE = "</tool_result>"
TOOL_OPEN = "<tool>"
TOOL_CLOSE = "</tool>"

# Order defines the ids: index in this tuple == token id.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    ENDOFTEXT,
    SYSTEM,
    USER,
    ASSISTANT,
    TOOL,
    TOOL_DECLARE,
    ENDOFTURN,
    THINK_OPEN,
    THINK_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_RESULT_OPEN,
    TOOL_RESULT_CLOSE,
    TOOL_OPEN,
    TOOL_CLOSE,
)


def special_tokens_with(extra: list[str] | tuple[str, ...] | None) -> list[str]:
    """The standard specials followed by user-supplied extras (duplicates and empties rejected)."""
    out = list(SPECIAL_TOKENS)
    for tok in extra or ():
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"special token {tok!r} must be a non-empty string")
        if tok in out:
            raise ValueError(f"special token {tok!r} is given twice (the standard ones are {list(SPECIAL_TOKENS)})")
        out.append(tok)
    return out
