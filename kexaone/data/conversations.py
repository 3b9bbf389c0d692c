"""SFT data: conversation records read, checked, rendered by the chat template and stored as token shards whose
loss-mask channel marks the assistant tokens.

Records (one per JSONL line / Parquet row / `datasets` row, read by `kexaone.data.sources.iter_records`):
- `{"messages": [...], "tools"?: [...], "enable_thinking"?: bool}`: the OpenAI / TRL conversational format (roles
  system, user, assistant, tool; `reasoning_content` and `tool_calls` on assistant turns);
- `{"prompt": ..., "completion": ...}`: TRL's prompt-completion format, either strings (a user turn and the
  assistant's reply) or message lists (the prompt's messages followed by the completion's).

Rendering is `kexaone.tokenizer.chat.encode_chat`: the loss mask is 1 on every assistant body (the think block,
reasoning included when present, the template's empty think block in non-reasoning mode, the answer, tool calls and
the closing end-of-turn) and 0 elsewhere (system, user, tool declarations and tool results). The reasoning mode:
`on` renders every conversation with reasoning, `off` without (reasoning dropped, empty think block), `mixed` (the
default) follows each record's `enable_thinking` (true when absent).

A conversation whose tokens plus the separator the packer appends (`eot`) exceed the row length is never cut: it is
skipped and counted, with the first few record locations, in `ConversationShards.skipped_*` (the caller reports
them). Bad records raise ValueError naming the file and line (no messages, no assistant turn, bad roles...).

Not here: packing (kexaone.data.docpacking), the training loop, the default SFT set (kexaone.data.synthetic.chat_set).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THINKING_MODES = ("on", "off", "mixed")
MAX_REPORTED = 5
"""Locations of skipped (too long) conversations kept for the report."""


@dataclass(frozen=True)
class Conversation:
    """One training conversation, ready to render. `where`: the record's id (its `id` field, else file:line)."""

    messages: list[dict]
    tools: list[dict] | None
    enable_thinking: bool
    where: str


def _as_messages(value: Any, role: str) -> list[dict]:
    """A prompt/completion value as messages: a string becomes one `role` turn, a list is taken as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return list(value)
    raise ValueError(f"must be a string or a list of messages, got {type(value).__name__}")


def conversation_from_record(record: Any, where: str, thinking: str = "mixed") -> Conversation:
    """A Conversation from one record (see the module docstring), or ValueError naming `where` and the problem."""
    if thinking not in THINKING_MODES:
        raise ValueError(f"thinking must be one of {THINKING_MODES}, got {thinking!r}")
    if not isinstance(record, dict):
        raise ValueError(f"{where}: an SFT record must be an object, got {type(record).__name__}")
    if "messages" in record and record["messages"] is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects, got "
                             f"{messages!r:.80}")
    elif "prompt" in record and "completion" in record:
        try:
            prompt = _as_messages(record["prompt"], "user")
        except ValueError as e:
            raise ValueError(f"{where}: `prompt` {e}") from None
        try:
            completion = _as_messages(record["completion"], "assistant")
        except ValueError as e:
            raise ValueError(f"{where}: `completion` {e}") from None
        messages = prompt + completion
    else:
        raise ValueError(f"{where}: an SFT record needs `messages` (a list of {{role, content}} objects) or "
                         f"`prompt` and `completion`; got fields {sorted(record)[:12]}")
    bad = [i for i, m in enumerate(messages) if not isinstance(m, dict)]
    if bad:
        raise ValueError(f"{where}: message {bad[0]} is not an object: {messages[bad[0]]!r:.80}")
    roles = [m.get("role") for m in messages]
    if "assistant" not in roles:
        raise ValueError(f"{where}: the conversation has no assistant turn (roles {roles}); SFT trains on the "
                         "assistant's replies")
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise ValueError(f"{where}: `tools` must be a list of JSON-schema objects, got {tools!r:.80}")
    flag = record.get("enable_thinking")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"{where}: `enable_thinking` must be true or false, got {flag!r}")
    enable = {"on": True, "off": False}.get(thinking, True if flag is None else flag)
    rid = record.get("id")
    return Conversation(messages, tools or None, enable, str(rid) if isinstance(rid, (str, int)) else where)


def encode_conversation(tokenizer: Any, conv: Conversation) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of the rendered conversation (kexaone.tokenizer.chat.encode_chat), with the record's
    location on any rendering error."""
    from kexaone.tokenizer.chat import encode_chat

    try:
        ids, mask = encode_chat(tokenizer, conv.messages, tools=conv.tools, enable_thinking=conv.enable_thinking)
    except ValueError as e:
        raise ValueError(f"{conv.where}: {e}") from None
    if not any(mask):  # cannot happen with an assistant turn; guards the silent all-zero-mask bug of other stacks
        raise ValueError(f"{conv.where}: the rendered conversation has no assistant token to train on")
    return ids, mask


def iter_conversations(spec: str, thinking: str = "mixed") -> Iterator[Conversation]:
    """The conversations of one `path[@weight]` source (JSONL, Parquet, `datasets` directory, hf:name)."""
    from kexaone.data.sources import iter_records

    for where, record in iter_records(spec):
        yield conversation_from_record(record, where, thinking)


@dataclass
class ConversationShards:
    """One source's conversations as token shards with a loss-mask channel, and what was left out."""

    shards: Any
    """kexaone.data.shards.TokenShards (documents = conversations, loss mask = assistant tokens)."""
    weight: float
    spec: str
    conversations: int
    tokens: int
    trained_tokens: int
    """Tokens with loss mask 1 (assistant bodies)."""
    skipped: int = 0
    """Conversations longer than the row (tokens + eot > max_seq_len), left out whole."""
    skipped_ids: list[str] = field(default_factory=list)
    """The first MAX_REPORTED skipped conversations' ids."""
    longest_skipped: int = 0

    def summary(self) -> dict[str, Any]:
        return {"spec": self.spec, "weight": self.weight, "conversations": self.conversations, "tokens": self.tokens,
                "trained_tokens": self.trained_tokens, "skipped_too_long": self.skipped,
                "skipped_ids": list(self.skipped_ids), "longest_skipped_tokens": self.longest_skipped}


def encode_conversations(conversations: Iterable[Conversation], tokenizer: Any, max_seq_len: int
                         ) -> tuple[list[list[int]], list[list[int]], list[Conversation], dict[str, Any]]:
    """(ids per kept conversation, masks, kept conversations, {"skipped", "skipped_ids", "longest_skipped"}).
    A conversation is kept when len(ids) + 1 (the eot the packer appends) <= max_seq_len."""
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    ids_list, masks, kept = [], [], []
    skipped = {"skipped": 0, "skipped_ids": [], "longest_skipped": 0}
    for conv in conversations:
        ids, mask = encode_conversation(tokenizer, conv)
        if len(ids) + 1 > max_seq_len:
            skipped["skipped"] += 1
            skipped["longest_skipped"] = max(skipped["longest_skipped"], len(ids) + 1)
            if len(skipped["skipped_ids"]) < MAX_REPORTED:
                skipped["skipped_ids"].append(conv.where)
            continue
        ids_list.append(ids)
        masks.append(mask)
        kept.append(conv)
    return ids_list, masks, kept, skipped


def build_conversation_shards(spec: str, tokenizer: Any, cache_dir: str | os.PathLike, max_seq_len: int,
                              thinking: str = "mixed") -> ConversationShards:
    """Read, check, render and encode one source's conversations into token shards under `cache_dir` (cached by
    content: the same conversations with the same tokenizer reuse the directory). ValueError when no conversation
    fits in max_seq_len."""
    from kexaone.data.shards import (build_token_shards_from_ids, tokenizer_fingerprint, tokenizer_special_ids,
                                     tokenizer_vocab_size)
    from kexaone.data.sources import parse_spec

    ids_list, masks, kept, skipped = encode_conversations(iter_conversations(spec, thinking), tokenizer, max_seq_len)
    if not ids_list:
        raise ValueError(f"data source {spec!r}: none of its {skipped['skipped']} conversation(s) fits in "
                         f"--max-seq-len {max_seq_len} (the longest needs {skipped['longest_skipped']} tokens "
                         "with the separator); raise --max-seq-len")
    eot, pad = tokenizer_special_ids(tokenizer)
    # The tokenizer's fingerprint joins the cache key (ids alone could coincide across tokenizers) and lets these
    # shards mix with text shards of the same tokenizer (SFT's rehearsal).
    shards = build_token_shards_from_ids(ids_list, Path(cache_dir), tokenizer_vocab_size(tokenizer), eot, pad,
                                         tags=[_tag(c) for c in kept], loss_masks=masks,
                                         source_id="sft-conversations", tokenizer_id=tokenizer_fingerprint(tokenizer))
    return ConversationShards(shards=shards, weight=parse_spec(spec).weight, spec=spec, conversations=len(kept),
                              tokens=sum(map(len, ids_list)), trained_tokens=sum(map(sum, masks)),
                              skipped=skipped["skipped"], skipped_ids=skipped["skipped_ids"],
                              longest_skipped=skipped["longest_skipped"])


def _tag(conv: Conversation) -> str:
    """The shard tag of a conversation: its reasoning mode (held-out loss can then be read per mode)."""
    return "sft/think" if conv.enable_thinking else "sft/no-think"
