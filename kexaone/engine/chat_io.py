"""Chat turns in and out of the engine: the generation prompt, and the assistant's reply split into reasoning,
answer and tool calls, both at once (`parse_reply`) and while it streams (`ReplyStreamParser`).

The chat format itself (rendering and the authoritative parser) belongs to kexaone.tokenizer.chat; this module
only adapts it to generation: the generation prompt may already open the think block (reasoning mode) or hold an
empty one (non-reasoning mode), so the generated text alone is not a whole assistant turn.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from kexaone.engine.sequence import GenerationResult, GenerationStats
from kexaone.tokenizer.specials import ASSISTANT, THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN


def chat_prompt(messages: Sequence[dict], tools: Sequence[dict] | None = None,
                enable_thinking: bool = True) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, the part of the assistant turn that prompt already holds)."""
    from kexaone.tokenizer.chat import render

    if not messages:
        raise ValueError("messages must not be empty")
    text = render(list(messages), tools=list(tools) if tools else None, enable_thinking=enable_thinking,
                  add_generation_prompt=True)
    at = text.rfind(ASSISTANT)
    opened = text[at + len(ASSISTANT):].lstrip("\n") if at >= 0 else ""
    return text, opened


@dataclass
class ParsedChat:
    reasoning: str | None
    content: str
    tool_calls: list[dict]
    errors: list[str] = field(default_factory=list)


def parse_reply(turn_text: str) -> ParsedChat:
    """Parse a whole assistant turn (what the generation prompt opened + what was generated)."""
    from kexaone.tokenizer.chat import parse_assistant

    p = parse_assistant(turn_text)
    return ParsedChat(reasoning=p.reasoning, content=p.content, tool_calls=list(p.tool_calls), errors=list(p.errors))


def openai_tool_calls(tool_calls: Sequence[dict]) -> list[dict]:
    """Tool calls as OpenAI message `tool_calls` entries (arguments as a JSON string, a fresh call id)."""
    out = []
    for call in tool_calls:
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        out.append({
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": str(fn.get("name", "")),
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
    return out


@dataclass
class ChatResult:
    """A generated assistant turn: the raw generation plus its parsed parts and an OpenAI-style message."""

    generation: GenerationResult
    reasoning: str | None
    content: str
    tool_calls: list[dict]
    errors: list[str]

    @property
    def text(self) -> str | None:
        return self.generation.text

    @property
    def tokens(self) -> list[int]:
        return self.generation.tokens

    @property
    def stats(self) -> GenerationStats:
        return self.generation.stats

    @property
    def finish_reason(self) -> str:
        if self.tool_calls and self.generation.finish_reason == "stop":
            return "tool_calls"
        return self.generation.finish_reason

    def message(self) -> dict:
        """The assistant message to append to the conversation (and to return over the API)."""
        msg: dict = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = openai_tool_calls(self.tool_calls)
        return msg

    @classmethod
    def from_generation(cls, res: GenerationResult, parsed: ParsedChat, opened: str = "") -> "ChatResult":
        return cls(generation=res, reasoning=parsed.reasoning, content=parsed.content,
                   tool_calls=parsed.tool_calls, errors=parsed.errors)


REASONING = "reasoning"
CONTENT = "content"


class ReplyStreamParser:
    """Splits streamed assistant text into ("reasoning", delta) and ("content", delta) events.

    Tool-call blocks are withheld from the content stream (they are reported once, parsed, at the end); tags are
    never shown; text that could be the start of a tag is held until it is decided. Whitespace at the edges of
    the reasoning and of the answer is dropped, as the whole-turn parser does.
    """

    def __init__(self, opened: str = ""):
        self._mode = CONTENT
        self._buf = ""
        self._started = {REASONING: False, CONTENT: False}
        self._ws = {REASONING: "", CONTENT: ""}
        self._in_tool = False
        if opened:
            for _ in self.feed(opened):
                pass

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self._buf += delta
        events: list[tuple[str, str]] = []
        while self._buf:
            if self._in_tool:
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return events  # the block is reported at the end, from the whole-turn parse
                self._buf = self._buf[end + len(TOOL_CALL_CLOSE):]
                self._in_tool = False
                continue
            tags = (THINK_CLOSE,) if self._mode == REASONING else (THINK_OPEN, TOOL_CALL_OPEN)
            hits = [(self._buf.find(t), t) for t in tags if t in self._buf]
            if hits:
                at, tag = min(hits)
                self._text(events, self._buf[:at])
                self._buf = self._buf[at + len(tag):]
                if tag == THINK_OPEN:
                    self._mode = REASONING
                elif tag == THINK_CLOSE:
                    self._mode = CONTENT
                else:
                    self._in_tool = True
                continue
            keep = _partial_tag_len(self._buf, tags)
            self._text(events, self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return events
        return events

    def finish(self) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        if not self._in_tool:
            self._text(events, self._buf)
        self._buf = ""
        return events

    def _text(self, events: list, text: str) -> None:
        """Emit text in the current mode, dropping leading whitespace and holding trailing whitespace."""
        if not text:
            return
        mode = self._mode
        if not self._started[mode]:
            text = text.lstrip()
            if not text:
                return
            self._started[mode] = True
        text = self._ws[mode] + text
        body = text.rstrip()
        self._ws[mode] = text[len(body):]
        if body:
            events.append((mode, body))


def _partial_tag_len(buf: str, tags: Sequence[str]) -> int:
    for n in range(min(len(buf), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(buf[-n:]) for t in tags):
            return n
    return 0
