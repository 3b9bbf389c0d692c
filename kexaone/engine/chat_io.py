"""Chat turns in and out of the engine: the generation prompt, and the assistant's reply split into reasoning,
answer and tool calls, both at once (`parse_reply`) and while it streams (`ReplyStreamParser`, which announces
each tool call as soon as its name is known and then streams its arguments in pieces); tool calls checked against
the declared JSON schemas (`validate_tool_calls`, jsonschema).

A call's `arguments` string is the JSON text the model wrote (`ParsedReply.arguments_text`), in both the streamed
and the whole reply, so the concatenated stream pieces equal the non-streamed string.

The chat format itself (rendering and the authoritative parser) belongs to kexaone.tokenizer.chat; this module
only adapts it to generation: the generation prompt may already open the think block (reasoning mode) or hold an
empty one (non-reasoning mode), so the generated text alone is not a whole assistant turn.
"""

from __future__ import annotations

import json
import re
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
    arguments_text: list[str] = field(default_factory=list)


def parse_reply(turn_text: str) -> ParsedChat:
    """Parse a whole assistant turn (what the generation prompt opened + what was generated)."""
    from kexaone.tokenizer.chat import parse_assistant

    p = parse_assistant(turn_text)
    return ParsedChat(reasoning=p.reasoning, content=p.content, tool_calls=list(p.tool_calls), errors=list(p.errors),
                      arguments_text=list(p.arguments_text))


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_tool_calls(tool_calls: Sequence[dict], arguments_text: Sequence[str] | None = None) -> list[dict]:
    """Tool calls as OpenAI message `tool_calls` entries (arguments as a JSON string: `arguments_text[i]` when
    given, the model's own text; a fresh call id unless the call has one)."""
    out = []
    for i, call in enumerate(tool_calls):
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if arguments_text is not None and i < len(arguments_text):
            args = arguments_text[i]
        out.append({
            "id": call.get("id") or new_call_id(),
            "type": "function",
            "function": {"name": str(fn.get("name", "")),
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
    return out


def tool_schemas(tools: Sequence[dict] | None) -> dict[str, dict | None]:
    """name -> parameters schema of OpenAI tool declarations. Raises ValueError naming a tool whose parameters are
    not a valid JSON schema, or a name declared twice."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    out: dict[str, dict | None] = {}
    for i, t in enumerate(tools or []):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] needs a function with a non-empty string name, got {t!r:.120}")
        name, schema = fn["name"], fn.get("parameters")
        if name in out:
            raise ValueError(f"tools[{i}]: function {name!r} is declared twice")
        if schema is not None:
            if not isinstance(schema, dict):
                raise ValueError(f"tools[{i}] ({name}): parameters must be a JSON schema object")
            try:
                validators.validator_for(schema).check_schema(schema)
            except SchemaError as e:
                raise ValueError(f"tools[{i}] ({name}): parameters is not a valid JSON schema: {e.message}") from None
        out[name] = schema
    return out


def validate_tool_calls(calls: Sequence[dict], tools: Sequence[dict] | None) -> list[dict]:
    """Check OpenAI-form calls (`{"id", "function": {"name", "arguments": str}}`) against the declared tools:
    an undeclared function, arguments that are not a JSON object, or arguments the function's schema refuses
    (jsonschema, the schema's own draft). One `{"index", "id", "name", "message"}` per failing call."""
    from jsonschema import validators

    schemas = tool_schemas(tools)
    errors = []
    for i, c in enumerate(calls):
        fn = c["function"]
        name = fn["name"]
        report = {"index": c.get("index", i), "id": c.get("id"), "name": name}
        if name not in schemas:
            errors.append({**report, "message": f"function {name!r} is not among the declared tools "
                                                f"{sorted(schemas)}"})
            continue
        try:
            args = json.loads(fn["arguments"])
        except json.JSONDecodeError as e:
            errors.append({**report, "message": f"arguments are not valid JSON ({e.msg} at char {e.pos})"})
            continue
        if not isinstance(args, dict):
            errors.append({**report, "message": f"arguments must be a JSON object, got {type(args).__name__}"})
            continue
        schema = schemas[name]
        if not schema:
            continue
        found = sorted(validators.validator_for(schema)(schema).iter_errors(args), key=lambda e: list(e.path))
        if found:
            where = ["/".join(str(p) for p in e.path) or "(arguments)" for e in found]
            msg = "; ".join(f"{w}: {e.message}" for w, e in zip(where, found[:5]))
            errors.append({**report, "message": f"arguments do not match the schema of {name}: {msg}"})
    return errors


def reply_errors(parse_errors: Sequence[str], validation: Sequence[dict]) -> list[dict]:
    """The `tool_call_errors` of a reply: calls that could not be parsed (no index: they are not in
    `tool_calls`), then the validation failures of returned calls."""
    return [{"index": None, "id": None, "name": None, "message": m} for m in parse_errors if "tool call" in m] \
        + list(validation)


@dataclass
class ChatResult:
    """A generated assistant turn: the raw generation plus its parsed parts and an OpenAI-style message."""

    generation: GenerationResult
    reasoning: str | None
    content: str
    tool_calls: list[dict]
    errors: list[str]
    arguments_text: list[str] = field(default_factory=list)
    validation_errors: list[dict] = field(default_factory=list)
    """Per failing call (see `validate_tool_calls`): an undeclared function or arguments the schema refuses."""
    call_ids: list[str] = field(default_factory=list)

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
            msg["tool_calls"] = self.openai_calls()
        return msg

    def openai_calls(self) -> list[dict]:
        """The calls as OpenAI `tool_calls` entries, with this result's call ids (stable across calls)."""
        if len(self.call_ids) != len(self.tool_calls):
            self.call_ids = [c.get("id") or new_call_id() for c in self.tool_calls]
        calls = [{**c, "id": i} for c, i in zip(self.tool_calls, self.call_ids)]
        return openai_tool_calls(calls, self.arguments_text or None)

    @classmethod
    def from_generation(cls, res: GenerationResult, parsed: ParsedChat, opened: str = "",
                        tools: Sequence[dict] | None = None) -> "ChatResult":
        out = cls(generation=res, reasoning=parsed.reasoning, content=parsed.content,
                  tool_calls=parsed.tool_calls, errors=parsed.errors, arguments_text=parsed.arguments_text)
        if tools and out.tool_calls:
            out.validation_errors = validate_tool_calls(out.openai_calls(), tools)
        return out


REASONING = "reasoning"
CONTENT = "content"
TOOL = "tool"

# `{"name": "<name>", "arguments": ` at the start of a call block: the call can be announced
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
# what may still turn out to close the call rather than belong to its arguments: whitespace, one `}`, whitespace
_CALL_TAIL = re.compile(r"\s*\}?\s*$")


class ReplyStreamParser:
    """Splits streamed assistant text into ("reasoning", delta), ("content", delta) and ("tool", delta) events.

    A tool-call delta is OpenAI's: `{"index", "id", "type", "function": {"name", "arguments": ""}}` once the
    call's name is known, then `{"index", "function": {"arguments": piece}}` as its arguments arrive (held back:
    what could still be the block's closing brace). A call whose head is not `{"name": ..., "arguments": {` is
    reported whole when its block closes; a block that does not parse is not reported (unless it was already
    announced: its index is then in `failed`). Tags are never shown; text that could start a tag is held until
    decided. Whitespace at the edges of the reasoning and of the answer is dropped, as the whole-turn parser does.
    `calls` lists the announced calls (`{"id", "name", "arguments", "ok"}`), for validation at the end.
    """

    def __init__(self, opened: str = ""):
        self._mode = CONTENT
        self._buf = ""
        self._started = {REASONING: False, CONTENT: False}
        self._ws = {REASONING: "", CONTENT: ""}
        self._in_tool = False
        self._block = ""
        self._call: dict | None = None  # the call of the open block, once announced
        self.calls: list[dict] = []
        self.failed: list[int] = []
        if opened:
            for _ in self.feed(opened):
                pass

    def feed(self, delta: str) -> list[tuple[str, object]]:
        self._buf += delta
        events: list[tuple[str, object]] = []
        while self._buf:
            if self._in_tool:
                self._block += self._buf
                self._buf = ""
                end = self._block.find(TOOL_CALL_CLOSE)
                if end < 0:
                    self._tool_progress(events)
                    return events
                self._block, self._buf = self._block[:end], self._block[end + len(TOOL_CALL_CLOSE):]
                self._tool_done(events)
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
                    self._in_tool, self._block, self._call = True, "", None
                continue
            keep = _partial_tag_len(self._buf, tags)
            self._text(events, self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return events
        return events

    def finish(self) -> list[tuple[str, object]]:
        events: list[tuple[str, object]] = []
        if not self._in_tool:
            self._text(events, self._buf)
        elif self._call is not None:  # announced, never closed
            self._call["ok"] = False
            self.failed.append(self._call["index"])
        self._buf = ""
        return events

    # ------------------------------------------------------------------ tool calls
    def _tool_progress(self, events: list) -> None:
        if self._call is None:
            m = _CALL_HEAD.match(self._block)
            if m is None or not self._block[m.end():].startswith("{"):
                return
            try:
                name = json.loads(m.group(1))
            except json.JSONDecodeError:
                return
            self._call = {"index": len(self.calls), "id": new_call_id(), "name": name, "sent": "", "start": m.end(),
                          "arguments": None, "ok": None}
            self.calls.append(self._call)
            events.append((TOOL, {"index": self._call["index"], "id": self._call["id"], "type": "function",
                                  "function": {"name": name, "arguments": ""}}))
        c = self._call
        args = self._block[c["start"]:]
        args = args[:len(args) - _partial_tag_len(args, (TOOL_CALL_CLOSE,))]
        upto = len(args) - len(_CALL_TAIL.search(args).group(0))
        if upto > len(c["sent"]):
            piece = args[len(c["sent"]):upto]
            c["sent"] = args[:upto]
            events.append((TOOL, {"index": c["index"], "function": {"arguments": piece}}))

    def _tool_done(self, events: list) -> None:
        from kexaone.tokenizer.chat import parse_assistant

        p = parse_assistant(TOOL_CALL_OPEN + self._block + TOOL_CALL_CLOSE)
        c = self._call
        if not p.tool_calls:
            if c is not None:
                c["ok"] = False
                self.failed.append(c["index"])
            return
        name, text = p.tool_calls[0]["name"], p.arguments_text[0]
        if c is None:
            c = {"index": len(self.calls), "id": new_call_id(), "name": name, "sent": "", "ok": None}
            self.calls.append(c)
            events.append((TOOL, {"index": c["index"], "id": c["id"], "type": "function",
                                  "function": {"name": name, "arguments": ""}}))
        if not text.startswith(c["sent"]) or name != c["name"]:  # cannot happen for a well-formed head
            c["ok"] = False
            self.failed.append(c["index"])
            return
        if len(text) > len(c["sent"]):
            events.append((TOOL, {"index": c["index"], "function": {"arguments": text[len(c["sent"]):]}}))
        c["sent"], c["arguments"], c["ok"] = text, text, True

    def openai_calls(self) -> list[dict]:
        """The announced calls that parsed, as OpenAI `tool_calls` entries (for validation)."""
        return [{"index": c["index"], "id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}} for c in self.calls if c["ok"]]

    # ------------------------------------------------------------------ text
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
